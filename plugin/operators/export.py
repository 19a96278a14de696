"""Export ReasonSeg / Export REFER: the App forms over `export_reasonseg` and `export_refer`."""

from __future__ import annotations

import fiftyone.operators as foo
import fiftyone.operators.types as types

from ..datasets.exporters import export_reasonseg, export_refer
from ..datasets.refcoco import DATASETS, SPLIT_BYS
from .common import add_target_view, call_operator, execution_options, target_view
from .evaluate import segmentation_fields


class _ExportOperator(foo.Operator):
    """What both exports share: the samples, the folder, the fields, the split, the summary."""

    def _common_inputs(self, ctx, inputs) -> None:
        add_target_view(ctx, inputs, "Export")
        inputs.str("export_dir", label="Export folder", required=True,
                   description="a new or empty folder on the machine running FiftyOne")
        fields = segmentation_fields(ctx.dataset) or ["ground_truth"]
        default = "ground_truth" if "ground_truth" in fields else fields[0]
        inputs.enum("gt_field", fields, default=default, label="Ground truth", view=types.DropdownView(),
                    description="the masks to export (0 background, 1 target, 255 ignore)")
        inputs.str("query_field", default="query", label="Query field")
        inputs.str("split", label="Split (optional)",
                   description="put every sample in this split; by default each sample's split tag decides")
        inputs.bool("overwrite", default=False, label="Replace a previous export in that folder")

    def resolve_execution_options(self, ctx):
        return execution_options(ctx, small_run=500)

    def _params(self, ctx) -> dict:
        p = ctx.params
        return {"gt_field": p.get("gt_field", "ground_truth"), "query_field": p.get("query_field") or "query",
                "split": p.get("split") or None, "overwrite": p.get("overwrite", False)}

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.str("export_dir", label="Written to")
        outputs.int("items", label="Items")
        outputs.int("images", label="Images")
        outputs.list("splits", types.String(), label="Splits")
        return types.Property(outputs)


class ExportReasonSeg(_ExportOperator):
    @property
    def config(self):
        return foo.OperatorConfig(name="export_reasonseg", label="SAM-Veteran: Export ReasonSeg",
                                  description="the samples as LISA's ReasonSeg folders (image + JSON polygons)",
                                  icon="output", dynamic=True)

    def resolve_input(self, ctx):
        inputs = types.Object()
        self._common_inputs(ctx, inputs)
        return types.Property(inputs, view=types.View(label="Export as ReasonSeg"))

    def execute(self, ctx):
        return export_reasonseg(target_view(ctx), ctx.params["export_dir"], **self._params(ctx))

    def __call__(self, sample_collection, export_dir: str, gt_field: str = "ground_truth", query_field: str = "query",
                 split: str | None = None, overwrite: bool = False, delegate: bool = False):
        return call_operator(self.uri, sample_collection,
                             {"export_dir": str(export_dir), "gt_field": gt_field, "query_field": query_field,
                              "split": split, "overwrite": overwrite}, delegate)


class ExportRefer(_ExportOperator):
    @property
    def config(self):
        return foo.OperatorConfig(name="export_refer", label="SAM-Veteran: Export REFER",
                                  description="the samples in the REFER layout (refs pickle + COCO instances, RLE)",
                                  icon="output", dynamic=True)

    def resolve_input(self, ctx):
        inputs = types.Object()
        self._common_inputs(ctx, inputs)
        inputs.enum("dataset", list(DATASETS), default="refcocog", label="Dataset name",
                    description="grefcoco for samples with an empty ground truth (no-target expressions)",
                    view=types.DropdownView())
        inputs.enum("split_by", list(SPLIT_BYS), label="Split by (default: the dataset's usual)",
                    view=types.DropdownView())
        return types.Property(inputs, view=types.View(label="Export in the REFER layout"))

    def execute(self, ctx):
        p = ctx.params
        return export_refer(target_view(ctx), p["export_dir"], dataset=p.get("dataset", "refcocog"),
                            split_by=p.get("split_by") or None, **self._params(ctx))

    def resolve_output(self, ctx):
        outputs = super().resolve_output(ctx).type
        outputs.int("refs", label="Refs")
        outputs.int("ignore_dropped", label="Samples whose ignore pixels became background")
        return types.Property(outputs)

    def __call__(self, sample_collection, export_dir: str, dataset: str = "refcocog", split_by: str | None = None,
                 gt_field: str = "ground_truth", query_field: str = "query", split: str | None = None,
                 overwrite: bool = False, delegate: bool = False):
        return call_operator(self.uri, sample_collection,
                             {"export_dir": str(export_dir), "dataset": dataset, "split_by": split_by,
                              "gt_field": gt_field, "query_field": query_field, "split": split,
                              "overwrite": overwrite}, delegate)
