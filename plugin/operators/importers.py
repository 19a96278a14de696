"""Import ReasonSeg / Import RefCOCO: the App form over `import_reasonseg` and `import_refcoco`.

Each creates a new persistent dataset, reports the items it skipped and, run from the App, opens the dataset.
"""

from __future__ import annotations

import fiftyone.operators as foo
import fiftyone.operators.types as types
from fiftyone.operators.executor import ExecutionOptions

from ..datasets import import_reasonseg, import_refcoco
from ..datasets.refcoco import DATASETS, SPLIT_BYS


class _ImportOperator(foo.Operator):
    """What both importers share: the common options, the execution choice, the outcome."""

    def _common_inputs(self, inputs) -> None:
        inputs.str("name", label="Dataset name", required=True, description="a new FiftyOne dataset")
        inputs.bool("first_text_only", default=False, label="First text only",
                    description="one item per image/ref: its first query, as LISA's evaluation does")
        inputs.bool("overwrite", default=False, label="Replace a dataset of the same name")

    def resolve_execution_options(self, ctx):
        return ExecutionOptions(allow_immediate_execution=True, allow_delegated_execution=True)

    def _finish(self, ctx, dataset) -> dict:
        skipped = dataset.info["import"]["skipped"]
        if not ctx.delegated:
            ctx.ops.open_dataset(dataset.name)
        return {"dataset": dataset.name, "samples": len(dataset), "skipped": len(skipped),
                "skipped_files": [f"{s['file']}: {s['reason']}" for s in skipped[:50]]}

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.str("dataset", label="Dataset")
        outputs.int("samples", label="Items imported")
        outputs.int("skipped", label="Malformed items skipped")
        outputs.list("skipped_files", types.String(), label="Skipped (first 50)")
        return types.Property(outputs)

    def _call(self, params: dict, delegate: bool):
        return foo.execute_operator(self.uri, {"params": params}, request_delegation=delegate)


class ImportReasonSeg(_ImportOperator):
    @property
    def config(self):
        return foo.OperatorConfig(name="import_reasonseg", label="SAM-Veteran: Import ReasonSeg",
                                  description="LISA's ReasonSeg folders (image + JSON) as a new dataset",
                                  icon="input", dynamic=False)

    def resolve_input(self, ctx):
        inputs = types.Object()
        inputs.str("dataset_dir", label="ReasonSeg folder", required=True,
                   description="a split folder (image + JSON pairs) or the root holding train/val/test")
        inputs.str("split", label="Split", description="only this split folder of the root (default: all)")
        self._common_inputs(inputs)
        return types.Property(inputs, view=types.View(label="Import ReasonSeg"))

    def execute(self, ctx):
        p = ctx.params
        dataset = import_reasonseg(p["dataset_dir"], name=p["name"], split=p.get("split") or None,
                                   first_text_only=p.get("first_text_only", False),
                                   overwrite=p.get("overwrite", False), persistent=True)
        return self._finish(ctx, dataset)

    def __call__(self, dataset_dir: str, name: str, split: str | None = None, first_text_only: bool = False,
                 overwrite: bool = False, delegate: bool = False):
        return self._call({"dataset_dir": str(dataset_dir), "name": name, "split": split,
                           "first_text_only": first_text_only, "overwrite": overwrite}, delegate)


class ImportRefCoco(_ImportOperator):
    @property
    def config(self):
        return foo.OperatorConfig(name="import_refcoco", label="SAM-Veteran: Import RefCOCO",
                                  description="RefCOCO, RefCOCO+, RefCOCOg or gRefCOCO (REFER layout) as a new dataset",
                                  icon="input", dynamic=False)

    def resolve_input(self, ctx):
        inputs = types.Object()
        inputs.str("data_root", label="REFER data root", required=True,
                   description="the folder holding refcoco/, refcoco+/, refcocog/ or grefcoco/")
        inputs.enum("dataset", list(DATASETS), default="refcocog", label="Dataset", view=types.DropdownView())
        inputs.enum("split_by", ["default", *SPLIT_BYS], default="default", label="Split by",
                    description="default: umd for refcocog, unc otherwise", view=types.DropdownView())
        inputs.str("split", default="val", label="Split", description="train, val, test, testA, testB or all")
        inputs.str("images_dir", label="Images folder",
                   description="COCO train2014 images (default: <root>/images/mscoco/images/train2014)")
        self._common_inputs(inputs)
        return types.Property(inputs, view=types.View(label="Import RefCOCO"))

    def execute(self, ctx):
        p = ctx.params
        split = p.get("split") or "val"
        split_by = p.get("split_by") or "default"
        dataset = import_refcoco(p["data_root"], dataset=p.get("dataset", "refcocog"),
                                 split_by=None if split_by == "default" else split_by,
                                 split=None if split == "all" else split, images_dir=p.get("images_dir") or None,
                                 name=p["name"], first_text_only=p.get("first_text_only", False),
                                 overwrite=p.get("overwrite", False), persistent=True)
        return self._finish(ctx, dataset)

    def __call__(self, data_root: str, name: str, dataset: str = "refcocog", split_by: str | None = None,
                 split: str = "val", images_dir: str | None = None, first_text_only: bool = False,
                 overwrite: bool = False, delegate: bool = False):
        return self._call({"data_root": str(data_root), "name": name, "dataset": dataset,
                           "split_by": split_by or "default", "split": split,
                           "images_dir": str(images_dir) if images_dir else None,
                           "first_text_only": first_text_only, "overwrite": overwrite}, delegate)
