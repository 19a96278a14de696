"""RefCOCO, RefCOCO+, RefCOCOg (the REFER layout) and gRefCOCO into FiftyOne: one sample per sentence.

Layout under `data_root` (as REFER and LISA expect it)::

    <dataset>/refs(<split_by>).p      refcoco, refcoco+, refcocog (a pickled list of refs)
    <dataset>/grefs(<split_by>).json  grefcoco (``ann_id`` a list; [-1] = no target)
    <dataset>/instances.json          COCO annotations (polygons or RLE) and image records
    images/mscoco/images/train2014/   COCO train2014 images (or pass images_dir)

The ground truth of a ref is its annotation's mask (gRefCOCO: the union of its non-crowd annotations' masks, empty
for a no-target expression), decoded with pycocotools from any form REFER, G_REFER or LISA reads: polygons, a
list of RLE dicts, a bare RLE dict, counts uncompressed or compressed. A malformed form (an RLE whose runs do not
cover the image exactly, a size that is not the image's, bad points) skips the ref with its reason.
``split="test"`` selects testA + testB (and any split naming test) as REFER's ``getRefIds`` does; see
docs/formats.md for what matches the reference code exactly and what differs. The pickles are read with an
unpickler that refuses every class: REFER's refs hold only lists, dicts, strings and numbers, so nothing in the
file can run code.
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
    split (``"test"``: every test split, as REFER selects). `images_dir` defaults to
    ``data_root/images/mscoco/images/train2014``. Sample fields: ``query`` (the sentence), ``ground_truth`` (0/1),
    ``ref_id``, ``ann_ids`` (gRefCOCO: without crowds), ``image_id``, ``sent_id``, ``category_ids``, ``no_target``
    (True for an empty gRefCOCO expression); the split is the sample's tag. `first_text_only` keeps only each
    ref's first sentence. Malformed refs are skipped and reported by ref id.
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
        refs = [r for r in refs if isinstance(r, dict) and in_split(r.get("split"), split, dataset)]
        if not refs:
            raise ValueError(f"no refs of split {split!r} in {refs_path}")
    skipped: list[Skipped] = []
    samples = _samples(refs, instances, images, refs_path.name, first_text_only, skipped, dataset == "grefcoco")
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


def in_split(ref_split, split: str, dataset: str) -> bool:
    """Whether a ref of `ref_split` belongs to `split` as the reference API selects: REFER's ``getRefIds`` reads
    ``test`` as every test split (testA + testB) and ``testA`` as every split naming A (testAB too); G_REFER
    (gRefCOCO) and every other name match exactly."""
    if not isinstance(ref_split, str):
        return False
    if dataset != "grefcoco" and split == "test":
        return "test" in ref_split
    if dataset != "grefcoco" and split in ("testA", "testB", "testC"):
        return split[-1] in ref_split
    return ref_split == split


def _samples(refs: list, instances: dict, images: Path, source: str, first_text_only: bool,
             skipped: list[Skipped], drop_crowd: bool) -> Iterator:
    import fiftyone as fo

    for index, ref in enumerate(refs):
        ref_id = ref.get("ref_id") if isinstance(ref, dict) else None
        ref_name = f"{source} ref {ref_id if ref_id is not None else f'#{index}'}"
        try:
            item = read_ref(ref, instances, images, ref_name, drop_crowd)
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


def read_ref(ref, instances: dict, images: Path, ref_name: str, drop_crowd: bool = False) -> dict:
    """One ref's image path, sentences and mask, or `MalformedItem`; `UnsafePathError` for an escaping file name.

    `drop_crowd` (gRefCOCO) leaves ``iscrowd`` annotations out of the target, as G_REFER's ``getMaskByRef`` does;
    a ref whose annotations are all crowds is skipped (G_REFER cannot build its mask either)."""
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
    category_ids, kept = [], []
    for ann_id in ann_ids:
        annotation = instances["annotations"].get(ann_id)
        if annotation is None:
            raise MalformedItem(f"annotation {ann_id} is not in instances.json")
        if int(annotation.get("image_id", image_id)) != image_id:
            raise MalformedItem(f"annotation {ann_id} belongs to image {annotation['image_id']}, not {image_id}")
        if drop_crowd and annotation.get("iscrowd"):
            continue
        mask |= decode_segmentation(annotation.get("segmentation"), width, height, f"annotation {ann_id}")
        category_ids.append(int(annotation.get("category_id", -1)))
        kept.append(ann_id)
    if ann_ids and not kept:
        raise MalformedItem(f"every annotation of the ref ({', '.join(map(str, ann_ids))}) is a crowd "
                            "(iscrowd), which gRefCOCO leaves out")
    ann_ids = kept
    return {"ref_id": ref_id, "image_id": image_id, "ann_ids": ann_ids, "category_ids": category_ids,
            "sentences": sentences, "split": str(ref.get("split", "")), "filepath": str(path.resolve()),
            "mask": mask}


def decode_segmentation(segmentation, width: int, height: int, what: str) -> np.ndarray:
    """A COCO segmentation as a 0/1 uint8 mask of the image size: a list of polygons, a list of RLE dicts (what
    REFER's ``getMask`` and LISA's loaders read), or a bare RLE dict; RLE counts uncompressed (a list) or
    compressed (a string). Several parts are united (REFER sums them, so overlaps there read 2)."""
    if isinstance(segmentation, dict):
        rle = _checked_rle(segmentation, width, height, what)
    elif isinstance(segmentation, list) and segmentation and all(isinstance(p, dict) for p in segmentation):
        rle = mask_utils.merge([_checked_rle(p, width, height, f"{what} RLE {i}") for i, p in enumerate(segmentation)])
    elif isinstance(segmentation, list) and segmentation and not any(isinstance(p, dict) for p in segmentation):
        polygons = [check_polygon(p, width, height, f"{what} polygon {i}").ravel().tolist()
                    for i, p in enumerate(segmentation)]
        rle = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    elif isinstance(segmentation, list) and segmentation:
        raise MalformedItem(f"{what}: segmentation mixes polygons and RLE dicts")
    elif isinstance(segmentation, list):
        raise MalformedItem(f"{what}: empty segmentation list")
    else:
        raise MalformedItem(f"{what}: segmentation is neither polygons nor RLE")
    try:
        return mask_utils.decode(rle).astype(np.uint8)
    except (ValueError, TypeError) as exc:
        raise MalformedItem(f"{what}: cannot decode the RLE: {exc}") from None


def _checked_rle(rle, width: int, height: int, what: str) -> dict:
    """A compressed RLE of the image size whose runs cover exactly its pixels, or `MalformedItem` (pycocotools
    decodes counts that fall short into uninitialised memory)."""
    if "counts" not in rle or "size" not in rle:
        raise MalformedItem(f"{what}: RLE needs 'counts' and 'size', found {sorted(rle)}")
    try:
        size = [int(v) for v in rle["size"]]
    except (TypeError, ValueError):
        raise MalformedItem(f"{what}: RLE size {rle['size']!r} is not [height, width]") from None
    if size != [height, width]:
        raise MalformedItem(f"{what}: RLE size {rle['size']} differs from the image {height}x{width}")
    counts = rle["counts"]
    if isinstance(counts, list):
        if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts):
            raise MalformedItem(f"{what}: RLE counts are not non-negative integers")
        runs = counts
    elif isinstance(counts, (str, bytes)):
        try:
            counts = counts.encode("ascii") if isinstance(counts, str) else counts
        except UnicodeEncodeError:
            raise MalformedItem(f"{what}: RLE counts string has a character outside '0'..'o'") from None
        runs = compressed_runs(counts, what)
    else:
        raise MalformedItem(f"{what}: RLE counts are neither a list nor a string")
    if sum(runs) != height * width:
        raise MalformedItem(f"{what}: RLE counts cover {sum(runs)} pixels, the image has {height * width}")
    if isinstance(counts, list):
        return mask_utils.frPyObjects({"size": size, "counts": counts}, height, width)
    return {"size": size, "counts": counts}


def compressed_runs(counts: bytes, what: str) -> list[int]:
    """The run lengths of COCO's compressed counts string (pycocotools' ``rleFrString``: 5 bits a character from
    '0', a continuation bit, runs after the second stored as differences to the run two before)."""
    runs: list[int] = []
    position = 0
    while position < len(counts):
        value, shift, more = 0, 0, True
        while more:
            if position >= len(counts):
                raise MalformedItem(f"{what}: RLE counts string ends inside a number")
            char = counts[position] - 48
            if not 0 <= char < 64:
                raise MalformedItem(f"{what}: RLE counts string has a character outside '0'..'o'")
            value |= (char & 0x1F) << shift
            more = bool(char & 0x20)
            position += 1
            shift += 5
            if not more and char & 0x10:
                value |= -1 << shift
        if len(runs) > 2:
            value += runs[-2]
        if value < 0:
            raise MalformedItem(f"{what}: RLE counts string decodes to a negative run")
        runs.append(value)
    return runs
