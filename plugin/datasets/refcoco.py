"""RefCOCO, RefCOCO+, RefCOCOg (the REFER layout) and gRefCOCO into FiftyOne: one sample per sentence.

Layout under `data_root` (as REFER and LISA expect it)::

    <dataset>/refs(<split_by>).p      refcoco, refcoco+, refcocog (a pickled list of refs)
    <dataset>/grefs(<split_by>).json  grefcoco (``ann_id`` a list; [-1] = no target)
    <dataset>/instances.json          COCO annotations (polygons or RLE) and image records
    images/mscoco/images/train2014/   COCO train2014 images (or pass images_dir)

The ground truth of a ref is its annotation's mask (gRefCOCO: the union of its annotations' masks, empty for a
no-target expression), decoded with pycocotools. The pickles are read with an unpickler that refuses every class:
REFER's refs hold only lists, dicts, strings and numbers, so nothing in the file can run code.
"""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path
from typing import Iterator

import numpy as np
from pycocotools import mask as mask_utils

from .common import MalformedItem, Skipped, check_polygon, image_size, load_all_or_nothing, safe_join

DATASETS = ("refcoco", "refcoco+", "refcocog", "grefcoco")
DEFAULT_SPLIT_BY = {"refcoco": "unc", "refcoco+": "unc", "refcocog": "umd", "grefcoco": "unc"}
SPLIT_BYS = ("unc", "umd", "google")
DEFAULT_IMAGES = Path("images") / "mscoco" / "images" / "train2014"


def import_refcoco(data_root: str | Path, dataset: str = "refcocog", split_by: str | None = None,
                   split: str | None = "val", images_dir: str | Path | None = None, name: str | None = None,
                   first_text_only: bool = False, overwrite: bool = False, persistent: bool = False):
    """Import one split of a RefCOCO-family dataset into a new FiftyOne dataset and return it.

    `split_by` defaults to the dataset's usual one (umd for refcocog, unc otherwise); `split=None` imports every
    split. `images_dir` defaults to ``data_root/images/mscoco/images/train2014``. Sample fields: ``query`` (the
    sentence), ``ground_truth`` (0/1), ``ref_id``, ``ann_ids``, ``image_id``, ``sent_id``, ``category_ids``,
    ``no_target`` (True for an empty gRefCOCO expression); the split is the sample's tag. `first_text_only` keeps
    only each ref's first sentence. Malformed refs are skipped and reported by ref id.
    """
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {', '.join(DATASETS)}")
    split_by = split_by or DEFAULT_SPLIT_BY[dataset]
    if split_by not in SPLIT_BYS:
        raise ValueError(f"unknown split_by {split_by!r}; expected one of {', '.join(SPLIT_BYS)}")
    root = Path(data_root)
    folder = root / dataset
    refs_path = folder / (f"grefs({split_by}).json" if dataset == "grefcoco" else f"refs({split_by}).p")
    instances_path = folder / "instances.json"
    for path in (refs_path, instances_path):
        if not path.is_file():
            raise FileNotFoundError(f"{dataset} annotation file not found: {path}")
    images = Path(images_dir) if images_dir else root / DEFAULT_IMAGES
    if not images.is_dir():
        raise FileNotFoundError(f"images folder not found: {images} (pass images_dir)")

    refs = read_refs(refs_path)
    instances = _read_instances(instances_path)
    if split is not None:
        refs = [r for r in refs if isinstance(r, dict) and r.get("split") == split]
        if not refs:
            raise ValueError(f"no refs of split {split!r} in {refs_path}")
    skipped: list[Skipped] = []
    samples = _samples(refs, instances, images, refs_path.name, first_text_only, skipped)
    info = {"format": dataset, "split_by": split_by, "split": split, "source": str(refs_path),
            "images_dir": str(images), "first_text_only": first_text_only}
    return load_all_or_nothing(samples, skipped, info, name, overwrite, persistent, str(refs_path))


class _NoClassesUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"refs pickle refers to {module}.{name}; only plain data is accepted")


def read_refs(path: Path) -> list:
    """The refs list of a ``refs(...).p`` (no classes allowed) or ``grefs(...).json`` file."""
    try:
        if path.suffix == ".json":
            refs = json.loads(path.read_text(encoding="utf-8"))
        else:
            refs = _NoClassesUnpickler(io.BytesIO(path.read_bytes()), encoding="utf-8").load()
    except (pickle.UnpicklingError, json.JSONDecodeError, UnicodeDecodeError, EOFError, ValueError) as exc:
        raise ValueError(f"cannot read {path}: {exc}") from None
    if not isinstance(refs, list):
        raise ValueError(f"{path}: expected a list of refs, found {type(refs).__name__}")
    return refs


def _read_instances(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        images = {int(i["id"]): i for i in data["images"]}
        annotations = {int(a["id"]): a for a in data["annotations"]}
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"cannot read {path}: {exc!r}") from None
    return {"images": images, "annotations": annotations}


def _samples(refs: list, instances: dict, images: Path, source: str, first_text_only: bool,
             skipped: list[Skipped]) -> Iterator:
    import fiftyone as fo

    for index, ref in enumerate(refs):
        ref_id = ref.get("ref_id") if isinstance(ref, dict) else None
        ref_name = f"{source} ref {ref_id if ref_id is not None else f'#{index}'}"
        try:
            item = read_ref(ref, instances, images, ref_name)
        except MalformedItem as exc:
            skipped.append(Skipped(ref_name, str(exc)))
            continue
        segmentation = fo.Segmentation(mask=item["mask"])
        sentences = item["sentences"][:1] if first_text_only else item["sentences"]
        for sent_id, sentence in sentences:
            yield fo.Sample(filepath=item["filepath"], query=sentence, ground_truth=segmentation,
                            ref_id=item["ref_id"], ann_ids=item["ann_ids"], image_id=item["image_id"],
                            sent_id=sent_id, category_ids=item["category_ids"], no_target=not item["ann_ids"],
                            tags=[item["split"]])


def read_ref(ref, instances: dict, images: Path, ref_name: str) -> dict:
    """One ref's image path, sentences and mask, or `MalformedItem`; `UnsafePathError` for an escaping file name."""
    if not isinstance(ref, dict):
        raise MalformedItem("the ref is not an object")
    try:
        ref_id, image_id = int(ref["ref_id"]), int(ref["image_id"])
        raw_ann_ids = ref["ann_id"] if isinstance(ref["ann_id"], list) else [ref["ann_id"]]
        ann_ids = [int(a) for a in raw_ann_ids if int(a) != -1]
        sentences = [(int(s["sent_id"]), str(s["sent"]).strip()) for s in ref["sentences"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise MalformedItem(f"missing or invalid field {exc}") from None
    sentences = [(i, s) for i, s in sentences if s]
    if not sentences:
        raise MalformedItem("no sentence")
    image = instances["images"].get(image_id)
    if image is None:
        raise MalformedItem(f"image {image_id} is not in instances.json")
    path = safe_join(images, str(image.get("file_name", "")), ref_name)
    width, height = image_size(path)
    if (width, height) != (image.get("width", width), image.get("height", height)):
        raise MalformedItem(f"{path.name} is {width}x{height}, instances.json says {image['width']}x{image['height']}")
    mask = np.zeros((height, width), np.uint8)
    category_ids = []
    for ann_id in ann_ids:
        annotation = instances["annotations"].get(ann_id)
        if annotation is None:
            raise MalformedItem(f"annotation {ann_id} is not in instances.json")
        if int(annotation.get("image_id", image_id)) != image_id:
            raise MalformedItem(f"annotation {ann_id} belongs to image {annotation['image_id']}, not {image_id}")
        mask |= decode_segmentation(annotation.get("segmentation"), width, height, f"annotation {ann_id}")
        category_ids.append(int(annotation.get("category_id", -1)))
    return {"ref_id": ref_id, "image_id": image_id, "ann_ids": ann_ids, "category_ids": category_ids,
            "sentences": sentences, "split": str(ref.get("split", "")), "filepath": str(path.resolve()),
            "mask": mask}


def decode_segmentation(segmentation, width: int, height: int, what: str) -> np.ndarray:
    """A COCO segmentation (polygon list, uncompressed or compressed RLE) as a 0/1 uint8 mask of the image size."""
    if isinstance(segmentation, list):
        if not segmentation:
            raise MalformedItem(f"{what}: empty polygon list")
        polygons = [check_polygon(p, width, height, f"{what} polygon {i}").ravel().tolist()
                    for i, p in enumerate(segmentation)]
        rle = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    elif isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation:
        if list(segmentation["size"]) != [height, width]:
            raise MalformedItem(f"{what}: RLE size {segmentation['size']} differs from the image {height}x{width}")
        counts = segmentation["counts"]
        if isinstance(counts, list) and sum(counts) != height * width:
            raise MalformedItem(f"{what}: RLE counts cover {sum(counts)} pixels, the image has {height * width}")
        rle = mask_utils.frPyObjects(segmentation, height, width) if isinstance(counts, list) else \
            {"size": [height, width], "counts": counts.encode() if isinstance(counts, str) else counts}
    else:
        raise MalformedItem(f"{what}: segmentation is neither polygons nor RLE")
    try:
        return mask_utils.decode(rle).astype(np.uint8)
    except (ValueError, TypeError) as exc:
        raise MalformedItem(f"{what}: cannot decode the RLE: {exc}") from None

