"""SAM-Veteran: Train policy, queue a delegated GRPO training run on the current view (the App form over `trainer.train`).

Training takes hours on a GPU, so the operator only offers delegated execution: the run waits in the queue for a
worker (`fiftyone delegated launch`). The view is stored in the run's config (dataset name + serialized stages),
so `output_dir/config.yaml` says exactly what the policy was trained on.
"""

from __future__ import annotations

import fiftyone.operators as foo
import fiftyone.operators.types as types
from fiftyone.operators.executor import ExecutionOptions

from ..defaults import SEGMENTER_HELP
from .common import add_target_view, call_operator, target_view


def training_config(view, params: dict):
    """The `TrainConfig` of a run on `view`: the YAML file given (else the defaults, or the tiny smoke-run config
    with `tiny`), then the form's fields."""
    from ...trainer.cli import TINY_CONFIG
    from ...trainer.config import TrainConfig, apply_overrides, load_config

    if params.get("config"):
        config = load_config(params["config"])
    else:
        config = load_config(TINY_CONFIG) if params.get("tiny") else TrainConfig()
    form = {key: params.get(key) or None for key in ("policy", "segmenter", "output_dir", "max_steps", "tiny")}
    form["max_steps"] = form["max_steps"] and int(form["max_steps"])
    config = apply_overrides(config, {
        **form, "overwrite_output_dir": params.get("overwrite") or None,
        "data.prompt_field": params.get("prompt_field") or params.get("query_field"),  # query_field: the 0.1 name
        "data.gt_field": params.get("gt_field") or None, "data.dataset": view._dataset.name})
    config.data.view = view._serialize() or None
    return config


class TrainSamVeteran(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(name="train", label="SAM-Veteran: Train policy",
                                  description="queue a multi-task GRPO training run of the policy on these samples",
                                  icon="model_training", dynamic=True)

    def resolve_input(self, ctx):
        inputs = types.Object()
        add_target_view(ctx, inputs, "Train on")
        inputs.str("config", label="Config file (YAML)",
                   description="a training config such as trainer/configs/one_gpu_lora.yaml; empty = the defaults")
        inputs.str("policy", label="Policy", description="hub id or folder to start from (overrides the config)")
        inputs.str("segmenter", label="Segmenter", description=SEGMENTER_HELP)
        inputs.str("output_dir", required=True, label="Output folder",
                   description="checkpoints, final/ (loadable by SamVeteranModel), metrics.jsonl, TensorBoard runs/")
        inputs.int("max_steps", label="Max steps", description="empty = the config's epochs")
        fields = [name for name, field in ctx.dataset.get_field_schema().items()
                  if field.__class__.__name__ == "StringField" and name != "filepath"]
        inputs.enum("prompt_field", fields or ["query"], default="query" if "query" in fields else None,
                    label="Query field", view=types.DropdownView())
        inputs.str("gt_field", default="ground_truth", label="Ground-truth mask field (fo.Segmentation)")
        inputs.bool("tiny", default=False, label="Tiny local models (a smoke test, no download)")
        inputs.bool("overwrite", default=False, label="Overwrite another run in the output folder")
        return types.Property(inputs, view=types.View(label="SAM-Veteran: Train policy"))

    def resolve_execution_options(self, ctx):
        return ExecutionOptions(allow_immediate_execution=False, allow_delegated_execution=True,
                                default_choice_to_delegated=True)

    def execute(self, ctx):
        from transformers import TrainerCallback

        from ...trainer.train import train

        view = target_view(ctx)
        config = training_config(view, ctx.params)

        class Progress(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                if ctx.delegated and state.max_steps:
                    ctx.set_progress(progress=state.global_step / state.max_steps,
                                     label=f"step {state.global_step} of {state.max_steps}")

        result = train(config, view=view, callbacks=[Progress()])
        return {"final_model": str(result.final_model), "metrics_log": str(result.metrics_log),
                "global_step": result.global_step, "records": result.num_records}

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.str("final_model", label="Trained policy (SamVeteranModel(policy=...))")
        outputs.str("metrics_log", label="Metrics log")
        outputs.int("global_step", label="Steps")
        outputs.int("records", label="Task items")
        return types.Property(outputs)

    def __call__(self, sample_collection, output_dir: str, config: str | None = None, policy: str | None = None,
                 segmenter: str | None = None, max_steps: int | None = None, prompt_field: str = "query",
                 gt_field: str = "ground_truth", tiny: bool = False, overwrite: bool = False, delegate: bool = True):
        return call_operator(self.uri, sample_collection,
                             {"config": config, "policy": policy, "segmenter": segmenter, "output_dir": output_dir,
                              "max_steps": max_steps, "prompt_field": prompt_field, "gt_field": gt_field,
                              "tiny": tiny, "overwrite": overwrite}, delegate)
