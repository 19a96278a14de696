"""SAM-Veteran: Run agent, the App form over `sam_veteran.run_agent` (resumable, per-batch writes, failures recorded).

With "workers" above 1 the operation queues that many shard operations of one run (`sharding.py`), one for each
`fiftyone delegated launch` worker; each shows its own and the run's progress in the delegated-operations list.
"""

from __future__ import annotations

import fiftyone as fo
import fiftyone.operators as foo
import fiftyone.operators.types as types

from ..agent.prompts import family_names
from ..defaults import (DECODINGS, DEFAULT_BATCH_SIZE, DEFAULT_DECODING, DEFAULT_GT_FIELD, DEFAULT_LABEL_FIELD,
                        DEFAULT_POLICY, DEFAULT_PROMPT_FIELD, DEFAULT_SEGMENTER, MAX_NEW_TOKENS, SEGMENTER_HELP)
from ..inference import RunProgress, ShardProgress, iter_run_agent
from ..sharding import queue_shard_operations
from ..labels import has_results, label_fields
from .common import add_target_view, call_operator, execution_options, report_progress, target_view

AUTO_FAMILY = "auto"  # the policy's known family (hub id), else its model type


def text_fields(dataset) -> list[str]:
    """The string fields of the dataset, the usual query field first."""
    fields = [name for name, field in dataset.get_field_schema().items()
              if isinstance(field, fo.StringField) and name != "filepath"]
    return sorted(fields, key=lambda name: name != DEFAULT_PROMPT_FIELD)


def progress_label(progress: RunProgress) -> str:
    label = (f"{progress.done}/{progress.to_run} samples written ({progress.failed} failed, "
             f"{progress.skipped} already had results)")
    if isinstance(progress, ShardProgress):
        return (f"worker {progress.shard}: {label}; the run: {progress.run_done} of {progress.run_samples} samples in "
                "finished chunks")
    return label


class RunSamVeteran(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(name="run_sam_veteran", label="SAM-Veteran: Run agent",
                                  description="Segment each sample's query with the SAM-Veteran agent, step by step",
                                  icon="auto_fix_high", dynamic=True, execute_as_generator=True)

    def resolve_input(self, ctx):
        inputs = types.Object()
        add_target_view(ctx, inputs, "Run the agent on")
        queries = text_fields(ctx.dataset)
        if not queries:
            inputs.view("none", types.Warning(label="This dataset has no text field to read queries from"))
            return types.Property(inputs)
        inputs.enum("prompt_field", queries, default=queries[0], required=True, label="Query field",
                    description="the sample field holding each free-form query", view=types.DropdownView())
        inputs.str("label_field", default=DEFAULT_LABEL_FIELD, required=True, label="Label field",
                   description="writes <field>_mask, <field>_steps and <field>_clicks")
        inputs.str("policy", default=DEFAULT_POLICY, required=True, label="Policy",
                   description="a Hugging Face hub id or a local checkpoint folder (Qwen2/2.5/3-VL), mini (shipped) "
                               "or oracle (the simulated user: reads the ground truth)")
        inputs.str("segmenter", default=DEFAULT_SEGMENTER, required=True, label="Segmenter",
                   description=SEGMENTER_HELP)
        inputs.enum("family", [AUTO_FAMILY, *family_names()], default=AUTO_FAMILY, label="Policy family",
                    description="prompts and answer format: auto = the known family of the hub id (Seg-Zero, "
                                "VisionReasoner), else the checkpoint's model type", view=types.DropdownView())
        inputs.int("max_steps", min=0, label="Max refinement steps",
                   description="clicks the agent may make after its box (empty = the family's: 3, 0 for peers)")
        inputs.int("batch_size", default=DEFAULT_BATCH_SIZE, min=1, label="Batch size")
        inputs.str("gt_field", default=DEFAULT_GT_FIELD, label="Ground-truth field",
                   description="read only by the simulated user (policy 'oracle')")
        inputs.int("max_new_tokens", default=MAX_NEW_TOKENS, min=1, label="Longest answer (tokens)",
                   description="the policy's generation cap per step")
        inputs.enum("decoding", list(DECODINGS), default=DEFAULT_DECODING, label="Decoding",
                    description="eager, or static: a static KV cache with the decoding step compiled (faster once "
                                "compiled; the first batch of each shape compiles)", view=types.DropdownView())
        inputs.bool("overwrite", default=False, label="Overwrite",
                    description="run again on samples that already have results (otherwise they are skipped)")
        inputs.int("workers", default=1, min=1, label="Workers",
                   description="above 1: queue that many delegated shard operations of one run, one for each "
                               "`fiftyone delegated launch` worker (one per GPU)")
        label_field = ctx.params.get("label_field") or DEFAULT_LABEL_FIELD
        view = target_view(ctx)
        if not ctx.params.get("overwrite") and view.has_field(label_fields(label_field)["mask"]):
            done = view.match(has_results(label_field)).count()
            inputs.view("resume", types.Notice(label=f"{done} of {view.count()} samples already have results in "
                                                     f"'{label_field}' and will be skipped"))
        return types.Property(inputs, view=types.View(label="SAM-Veteran: Run agent"))

    def resolve_execution_options(self, ctx):
        return execution_options(ctx)

    def execute(self, ctx):
        workers = ctx.params.get("workers") or 1
        if workers > 1 and ctx.params.get("shard") is None:
            queued = queue_shard_operations(self.uri, ctx.request_params, workers, self.config.label)
            return {"queued": queued} if ctx.delegated else self._say_queued(ctx, queued)
        if ctx.delegated:
            return self._run(ctx)
        return self._stream(ctx)

    def _say_queued(self, ctx, queued: list[str]):
        yield from report_progress(ctx, 1.0, f"queued {len(queued)} shard operations for delegated workers")

    def _runs(self, ctx):
        p = ctx.params
        family = p.get("family") or AUTO_FAMILY
        policy_kwargs = {} if family == AUTO_FAMILY else {"family": family}
        return iter_run_agent(target_view(ctx), policy=p.get("policy", DEFAULT_POLICY),
                              segmenter=p.get("segmenter", DEFAULT_SEGMENTER), max_steps=p.get("max_steps"),
                              label_field=p.get("label_field", DEFAULT_LABEL_FIELD),
                              prompt_field=p.get("prompt_field", DEFAULT_PROMPT_FIELD),
                              batch_size=p.get("batch_size", DEFAULT_BATCH_SIZE), overwrite=p.get("overwrite", False),
                              max_new_tokens=p.get("max_new_tokens", MAX_NEW_TOKENS),
                              gt_field=p.get("gt_field", DEFAULT_GT_FIELD),
                              decoding=p.get("decoding") or DEFAULT_DECODING,
                              shard=tuple(p["shard"]) if p.get("shard") else None, run_id=p.get("run_id"),
                              **policy_kwargs)

    def _run(self, ctx) -> dict:
        """Delegated: progress is stored on the operation; the summary is its result."""
        progress = None
        for progress in self._runs(ctx):
            ctx.set_progress(progress=progress.fraction, label=progress_label(progress))
        return progress.as_dict()

    def _stream(self, ctx):
        """Immediate: progress streams to the App, which reloads the dataset at the end."""
        for progress in self._runs(ctx):
            yield from report_progress(ctx, progress.fraction, progress_label(progress))
        yield ctx.ops.reload_dataset()

    def __call__(self, sample_collection, policy: str = DEFAULT_POLICY, segmenter: str = DEFAULT_SEGMENTER,
                 label_field: str = DEFAULT_LABEL_FIELD, prompt_field: str = DEFAULT_PROMPT_FIELD,
                 max_steps: int | None = None, batch_size: int = DEFAULT_BATCH_SIZE, overwrite: bool = False,
                 max_new_tokens: int = MAX_NEW_TOKENS, family: str = AUTO_FAMILY, workers: int = 1,
                 delegate: bool = False, decoding: str = DEFAULT_DECODING):
        params = {"policy": policy, "segmenter": segmenter, "label_field": label_field, "family": family,
                  "prompt_field": prompt_field, "max_steps": max_steps, "batch_size": batch_size,
                  "overwrite": overwrite, "max_new_tokens": max_new_tokens, "workers": workers, "decoding": decoding}
        return call_operator(self.uri, sample_collection, params, delegate)
