"""Evaluate: the App form over `sam_veteran.evaluate` (gIoU/cIoU, step curve, stop rates as an evaluation run)."""

from __future__ import annotations

import math

import fiftyone as fo
import fiftyone.operators as foo
import fiftyone.operators.types as types

from ..evaluation import evaluate
from ..labels import AgentFields, agent_runs
from ..metrics import CONVENTIONS, DEFAULT_CONVENTION
from .common import add_target_view, call_operator, execution_options, target_view


def segmentation_fields(dataset) -> list[str]:
    """Segmentation fields of the dataset, agent results first by their label-field name (``veteran``)."""
    fields = [name for name, field in dataset.get_field_schema().items()
              if issubclass(getattr(field, "document_type", object), fo.Segmentation)]
    agents = agent_runs(dataset)
    return agents + [name for name in fields if name not in {AgentFields(a).mask for a in agents}]


class Evaluate(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(name="evaluate", label="SAM-Veteran: Evaluate",
                                  description="gIoU / cIoU of a mask field, per step for agent results",
                                  icon="query_stats", dynamic=True)

    def resolve_input(self, ctx):
        inputs = types.Object()
        add_target_view(ctx, inputs, "Evaluate")
        fields = segmentation_fields(ctx.dataset)
        if not fields:
            inputs.view("none", types.Warning(label="This dataset has no Segmentation field to evaluate"))
            return types.Property(inputs)
        predictions = [f for f in fields if f != "ground_truth"] or fields
        inputs.enum("pred_field", predictions, default=predictions[0], required=True, label="Predictions",
                    description="an agent result (its final mask and every step) or any Segmentation field",
                    view=types.DropdownView())
        gt_default = "ground_truth" if "ground_truth" in fields else fields[0]
        inputs.enum("gt_field", fields, default=gt_default, required=True, label="Ground truth",
                    description="0 background, 1 target, 255 ignore", view=types.DropdownView())
        inputs.str("eval_key", default="eval", required=True, label="Evaluation key",
                   description="writes <key>_iou (and <key>_step_ious) on every sample")
        protocol = types.RadioGroup()
        for convention in CONVENTIONS.values():
            protocol.add_choice(convention.name, label=convention.name, description=convention.description)
        inputs.enum("protocol", protocol.values(), default=DEFAULT_CONVENTION, label="Protocol", view=protocol)
        return types.Property(inputs, view=types.View(label="Evaluate reasoning segmentation"))

    def resolve_execution_options(self, ctx):
        return execution_options(ctx, small_run=500)

    def execute(self, ctx):
        p = ctx.params
        progress = (lambda f: ctx.set_progress(progress=f, label="scoring")) if ctx.delegated else None
        results = evaluate(target_view(ctx), p["pred_field"], gt_field=p.get("gt_field", "ground_truth"),
                           eval_key=p.get("eval_key", "eval"), protocol=p.get("protocol", DEFAULT_CONVENTION),
                           progress=progress)
        if not ctx.delegated:
            ctx.ops.reload_dataset()
        metrics = {k: v for k, v in results.metrics().items() if not math.isnan(v)}  # seg_zero has no cIoU
        return {"eval_key": p.get("eval_key", "eval"), **metrics}

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.str("eval_key", label="Evaluation key")
        outputs.float("gIoU", label="gIoU")
        outputs.float("cIoU", label="cIoU")
        outputs.int("count", label="Items")
        return types.Property(outputs)

    def __call__(self, sample_collection, pred_field: str, gt_field: str = "ground_truth", eval_key: str = "eval",
                 protocol: str = DEFAULT_CONVENTION, delegate: bool = False):
        return call_operator(self.uri, sample_collection, {"pred_field": pred_field, "gt_field": gt_field,
                                                           "eval_key": eval_key, "protocol": protocol}, delegate)
