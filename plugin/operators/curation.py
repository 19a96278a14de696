"""Triage and Tag from evaluation: the App forms over `curation.triage` and `curation.tag_from_evaluation`."""

from __future__ import annotations

import fiftyone.operators as foo
import fiftyone.operators.types as types

from ..curation.tagging import tag_from_evaluation
from ..curation.triage import Thresholds, review_order, triage
from .common import add_target_view, call_operator, execution_options, target_view
from ..defaults import DEFAULT_LABEL_FIELD
from ..labels import agent_runs
from .evaluate import segmentation_fields


class Triage(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(name="triage", label="SAM-Veteran: Triage for review",
                                  description="rank an agent run's samples for human review, no ground truth needed",
                                  icon="low_priority", dynamic=True)

    def resolve_input(self, ctx):
        inputs = types.Object()
        add_target_view(ctx, inputs, "Triage")
        runs = agent_runs(ctx.dataset)
        if not runs:
            inputs.view("none", types.Warning(label="No agent run on this dataset: run SAM-Veteran first"))
            return types.Property(inputs)
        inputs.enum("label_field", runs, default=runs[0], required=True, label="Agent run",
                    view=types.DropdownView())
        others = [f for f in segmentation_fields(ctx.dataset) if f != ctx.params.get("label_field", runs[0])]
        inputs.enum("compare_field", others, label="Compare with (optional)",
                    description="another run or mask field: their disagreement (1 - IoU) raises the score",
                    view=types.DropdownView())
        inputs.float("low_confidence", default=Thresholds.low_confidence, label="Low confidence below")
        inputs.float("large_change", default=Thresholds.large_change, label="Large change between steps above",
                     description="1 - IoU of consecutive step masks")
        inputs.bool("sort", default=True, label="Show the samples to review first")
        return types.Property(inputs, view=types.View(label="Triage an agent run for review"))

    def resolve_execution_options(self, ctx):
        return execution_options(ctx, small_run=2000)

    def execute(self, ctx):
        p = ctx.params
        view = target_view(ctx)
        thresholds = Thresholds(low_confidence=p.get("low_confidence", Thresholds.low_confidence),
                                large_change=p.get("large_change", Thresholds.large_change))
        summary = triage(view, p["label_field"], compare_field=p.get("compare_field") or None,
                         thresholds=thresholds)
        if not ctx.delegated:
            ctx.ops.reload_dataset()
            if p.get("sort", True):
                ctx.ops.set_view(review_order(view, key=summary["key"]))
        return {"key": summary["key"], "count": summary["count"], "scored": summary["scored"],
                "reasons": ", ".join(f"{r} {n}" for r, n in summary["reasons"].items()) or "none"}

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.str("key", label="Fields written: <key>_score, _reasons, _confidence, _step_change, _disagreement")
        outputs.int("count", label="Samples")
        outputs.int("scored", label="Samples with a score")
        outputs.str("reasons", label="Samples per reason")
        return types.Property(outputs)

    def __call__(self, sample_collection, label_field: str = DEFAULT_LABEL_FIELD, compare_field: str | None = None,
                 low_confidence: float = Thresholds.low_confidence, large_change: float = Thresholds.large_change,
                 delegate: bool = False):
        return call_operator(self.uri, sample_collection,
                             {"label_field": label_field, "compare_field": compare_field, "sort": False,
                              "low_confidence": low_confidence, "large_change": large_change}, delegate)


class TagFromEvaluation(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(name="tag_from_evaluation", label="SAM-Veteran: Tag from evaluation",
                                  description="tag samples by IoU band, stopping too early/late and query type",
                                  icon="sell", dynamic=True)

    def resolve_input(self, ctx):
        inputs = types.Object()
        add_target_view(ctx, inputs, "Tag")
        keys = ctx.dataset.list_evaluations()
        if not keys:
            inputs.view("none", types.Warning(label="No evaluation on this dataset: run SAM-Veteran: Evaluate first"))
            return types.Property(inputs)
        inputs.enum("eval_key", keys, default=keys[-1], required=True, label="Evaluation",
                    view=types.DropdownView())
        inputs.float("margin", default=0.05, label="Too late when the best step beats the last by more than")
        inputs.float("good_enough", default=0.9, label="Too early when the agent stopped below IoU")
        return types.Property(inputs, view=types.View(label="Tag samples from an evaluation"))

    def resolve_execution_options(self, ctx):
        return execution_options(ctx, small_run=2000)

    def execute(self, ctx):
        p = ctx.params
        counts = tag_from_evaluation(target_view(ctx), p["eval_key"], margin=p.get("margin", 0.05),
                                     good_enough=p.get("good_enough", 0.9))
        if not ctx.delegated:
            ctx.ops.reload_dataset()
        return {"tags": [f"{tag}: {n}" for tag, n in counts.items()]}

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.list("tags", types.String(), label="Samples per tag")
        return types.Property(outputs)

    def __call__(self, sample_collection, eval_key: str = "eval", margin: float = 0.05, good_enough: float = 0.9,
                 delegate: bool = False):
        return call_operator(self.uri, sample_collection,
                             {"eval_key": eval_key, "margin": margin, "good_enough": good_enough}, delegate)
