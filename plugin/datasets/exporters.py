"""Any FiftyOne view back to the benchmarks' own formats, so other tools can evaluate on a curated split.

- `export_reasonseg`: LISA's ReasonSeg folders, ``<split>/<name>.jpg`` + ``<name>.json`` with LISA's keys
  (``text``, ``is_sentence``, ``shapes`` of LabelMe polygons labelled ``target`` / ``ignore``). The samples of one
  image that share a ground truth and a query type become one JSON with several texts, in their original order.
- `export_refer`: the REFER layout, ``<dataset>/refs(<split_by>).p`` (gRefCOCO: ``grefs(<split_by>).json``) with
  ``<dataset>/instances.json`` (COCO, masks as compressed RLE) and the images under
  ``images/mscoco/images/train2014/``, where `import_refcoco` looks by default. Sentences that share an image and a
  ground truth become one ref. Source ids (``ref_id``, ``image_id``, ``sent_id``, ``ann_ids``) are kept when the
  samples carry them and they do not clash, otherwise new ones are given.

Both read the ground truth from `gt_field` (0 background, 1 target, 255 ignore) and the split from the sample's
tag, or put everything in `split`. An export is written into a temporary folder beside `export_dir` and moved in
place when complete, so a failure leaves nothing half-written; an existing non-empty `export_dir` is replaced
only with ``overwrite=True`` and only when it holds a previous export (never a folder this code did not write).
Samples that cannot be exported (no ground truth, no query, a missing image, a mask of the wrong size) stop the
export before anything is written, each named with its problem.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import pickle
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps
from pycocotools import mask as mask_utils

from .common import IGNORE, MalformedItem, image_size
from .polygons import mask_polygons
from .reasonseg import IMAGE_EXTENSIONS, SPLITS as REASONSEG_SPLITS
from .refcoco import DATASETS, DEFAULT_IMAGES, DEFAULT_SPLIT_BY

logger = logging.getLogger(__name__)

MANIFEST = ".sam_veteran_export"  # marks a folder written here (a dot file: the ReasonSeg reader globs *.json)
REFER_SPLITS = ("train", "val", "test", "testA", "testB")
MAX_PROBLEMS_SHOWN = 10


@dataclass
class _Item:
    """What one sample contributes to an export."""

    sample_id: str
    filepath: str
    query: str
    mask: np.ndarray
    split: str
    order: int
    extra: dict = field(default_factory=dict)

    @property
    def mask_key(self) -> str:
        return hashlib.sha1(self.mask.tobytes() + str(self.mask.shape).encode()).hexdigest()


def export_reasonseg(samples, export_dir: str | Path, gt_field: str = "ground_truth", query_field: str = "query",
                     split: str | None = None, overwrite: bool = False) -> dict:
    """Write `samples` as ReasonSeg folders under `export_dir` and return a summary.

    ``is_sentence`` is read from the samples when present (False otherwise); texts are ordered by ``text_index``
    when present. Images are copied (a format other than JPEG or PNG is written as PNG with its EXIF rotation
    applied, so masks still line up).
    """
    items = _read_items(samples, gt_field, query_field, split, REASONSEG_SPLITS, ("is_sentence", "text_index"))
    groups: dict[tuple, list[_Item]] = {}
    for item in items:
        key = (item.split, item.filepath, bool(item.extra.get("is_sentence")), item.mask_key)
        groups.setdefault(key, []).append(item)
    used: set[tuple[str, str]] = set()
    with _export_folder(export_dir, overwrite, "reasonseg") as root:
        for (folder, filepath, is_sentence, _), group in groups.items():
            name = _unique_name(Path(filepath).stem, lambda n: (folder, n) in used)
            used.add((folder, name))
            (root / folder).mkdir(exist_ok=True)
            image_name = _write_image(Path(filepath), root / folder, name)
            group.sort(key=lambda i: (i.extra.get("text_index") if i.extra.get("text_index") is not None
                                      else i.order, i.order))
            annotation = {"text": [i.query for i in group], "is_sentence": is_sentence,
                          "shapes": _shapes(group[0].mask, image_name)}
            (root / folder / f"{name}.json").write_text(json.dumps(annotation, indent=1), encoding="utf-8")
    return {"format": "reasonseg", "export_dir": str(export_dir), "items": len(items), "images": len(groups),
            "splits": sorted({i.split for i in items})}


def export_refer(samples, export_dir: str | Path, dataset: str = "refcocog", split_by: str | None = None,
                 gt_field: str = "ground_truth", query_field: str = "query", split: str | None = None,
                 overwrite: bool = False) -> dict:
    """Write `samples` in the REFER layout under `export_dir` (read back with ``import_refcoco(export_dir, dataset,
    split_by, split=None)``) and return a summary.

    REFER has no ignore label: ignore pixels (255) are written as background and counted in the summary
    (``ignore_dropped``). An empty ground truth needs ``dataset="grefcoco"`` (a no-target expression).
    """
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {', '.join(DATASETS)}")
    split_by = split_by or DEFAULT_SPLIT_BY[dataset]
    extras = ("ref_id", "image_id", "sent_id", "ann_ids", "category_ids")
    items = _read_items(samples, gt_field, query_field, split, REFER_SPLITS, extras)
    if dataset != "grefcoco":
        empty = [i for i in items if not (i.mask == 1).any()]
        if empty:
            _raise_problems([(i, "empty ground truth: only gRefCOCO has no-target refs (dataset='grefcoco')")
                             for i in empty])
    ignore_dropped = sum(bool((i.mask == IGNORE).any()) for i in items)
    if ignore_dropped:
        logger.warning("%d sample(s) have ignore pixels; REFER has no ignore label, they become background",
                       ignore_dropped)

    image_ids = _IdPool(i.extra.get("image_id") for i in items)
    ref_ids = _IdPool(i.extra.get("ref_id") for i in items)
    ann_ids = _IdPool(_single(i.extra.get("ann_ids")) for i in items)
    sent_ids = _IdPool(i.extra.get("sent_id") for i in items)
    images, annotations, refs = {}, {}, {}
    file_names: set[str] = set()
    for item in items:
        if item.filepath not in images:
            name = _unique_name(Path(item.filepath).stem, lambda n: n + Path(item.filepath).suffix in file_names)
            file_names.add(name + Path(item.filepath).suffix)
            height, width = item.mask.shape
            images[item.filepath] = {"id": image_ids.take(item.extra.get("image_id"), item.filepath),
                                     "file_name": name + Path(item.filepath).suffix, "width": width,
                                     "height": height}
        image = images[item.filepath]
        target = (item.mask == 1).astype(np.uint8)
        category_id = (item.extra.get("category_ids") or [1])[0]
        ann_key = (item.filepath, item.mask_key, _single(item.extra.get("ann_ids")))
        if target.any() and ann_key not in annotations:
            annotations[ann_key] = _annotation(ann_ids.take(ann_key[2], ann_key), image["id"], category_id, target)
        ref_key = (item.split, item.filepath, item.mask_key, item.extra.get("ref_id"))
        if ref_key not in refs:
            ann_id = annotations[ann_key]["id"] if target.any() else -1
            refs[ref_key] = {"ref_id": ref_ids.take(ref_key[3], ref_key), "image_id": image["id"],
                             "ann_id": [ann_id] if dataset == "grefcoco" else ann_id, "category_id": category_id,
                             "split": item.split, "file_name": image["file_name"], "sentences": [],
                             "sent_ids": []}
            if dataset == "grefcoco":
                refs[ref_key]["no_target"] = ann_id == -1
        sent_id = sent_ids.take(item.extra.get("sent_id"), item.sample_id)
        refs[ref_key]["sentences"].append({"sent_id": sent_id, "sent": item.query, "raw": item.query,
                                           "tokens": item.query.lower().split()})
    for ref in refs.values():  # kept ids restore the source order; new ones follow the view's
        ref["sentences"].sort(key=lambda s: s["sent_id"])
        ref["sent_ids"] = [s["sent_id"] for s in ref["sentences"]]
    categories = sorted({a["category_id"] for a in annotations.values()} | {r["category_id"] for r in refs.values()})
    instances = {"info": {"description": f"{dataset} exported by sam-veteran"}, "images": list(images.values()),
                 "annotations": list(annotations.values()),
                 "categories": [{"id": c, "name": str(c), "supercategory": ""} for c in categories]}

    with _export_folder(export_dir, overwrite, dataset) as root:
        folder = root / dataset
        folder.mkdir()
        (folder / "instances.json").write_text(json.dumps(instances), encoding="utf-8")
        if dataset == "grefcoco":
            (folder / f"grefs({split_by}).json").write_text(json.dumps(list(refs.values())), encoding="utf-8")
        else:
            (folder / f"refs({split_by}).p").write_bytes(pickle.dumps(list(refs.values()), protocol=2))
        image_folder = root / DEFAULT_IMAGES
        image_folder.mkdir(parents=True)
        for filepath, image in images.items():
            shutil.copyfile(filepath, image_folder / image["file_name"])
    return {"format": dataset, "split_by": split_by, "export_dir": str(export_dir), "items": len(items),
            "refs": len(refs), "images": len(images), "annotations": len(annotations),
            "splits": sorted({i.split for i in items}), "ignore_dropped": ignore_dropped}


def _read_items(samples, gt_field: str, query_field: str, split: str | None, known_splits: tuple[str, ...],
                extras: tuple[str, ...]) -> list[_Item]:
    """The samples' export data, in bulk; every unusable sample is collected and reported at once."""
    for name in (gt_field, query_field):
        if not samples.has_field(name):
            raise ValueError(f"the samples have no field {name!r}")
    if not len(samples):
        raise ValueError("nothing to export: the view is empty")
    columns = {name: samples.values(name) for name in ("id", "filepath", gt_field, query_field, "tags")}
    extra_columns = {name: samples.values(name) for name in extras if samples.has_field(name)}
    items, problems = [], []
    for row in range(len(columns["id"])):
        sample_id, filepath, label, query, tags = (columns[n][row] for n in ("id", "filepath", gt_field,
                                                                             query_field, "tags"))
        item = _Item(sample_id, filepath, "", np.zeros((0, 0), np.uint8), "", row,
                     {name: values[row] for name, values in extra_columns.items()})
        splits = [split] if split else [t for t in tags or [] if t in known_splits]
        if len(splits) != 1:
            problems.append((item, f"{'no' if not splits else 'more than one'} split tag among "
                                   f"{', '.join(known_splits)}; pass split= to put every sample in one split"))
            continue
        if not isinstance(query, str) or not query.strip():
            problems.append((item, f"no query in {query_field!r}"))
            continue
        mask = label.get_mask() if label is not None and label.has_mask else None
        if mask is None:
            problems.append((item, f"no ground-truth mask in {gt_field!r}"))
            continue
        try:
            width, height = image_size(Path(filepath))
        except MalformedItem as exc:
            problems.append((item, str(exc)))
            continue
        if mask.shape[:2] != (height, width):
            problems.append((item, f"mask is {mask.shape[1]}x{mask.shape[0]}, the image {width}x{height}"))
            continue
        mask = np.where(mask == IGNORE, IGNORE, (mask != 0).astype(np.uint8)).astype(np.uint8)
        items.append(_Item(sample_id, filepath, query.strip(), mask, splits[0], row, item.extra))
    if problems:
        _raise_problems(problems)
    return items


def _raise_problems(problems: list[tuple[_Item, str]]) -> None:
    shown = "\n".join(f"  sample {i.sample_id} ({i.filepath}): {why}" for i, why in problems[:MAX_PROBLEMS_SHOWN])
    more = f"\n  ... and {len(problems) - MAX_PROBLEMS_SHOWN} more" if len(problems) > MAX_PROBLEMS_SHOWN else ""
    raise ValueError(f"{len(problems)} sample(s) cannot be exported, nothing was written:\n{shown}{more}")


def _shapes(mask: np.ndarray, image_name: str) -> list[dict]:
    """LabelMe polygon shapes, ``target`` then ``ignore``, that LISA's filling turns back into `mask`."""
    shapes = []
    for label, value in (("target", 1), ("ignore", IGNORE)):
        for points in mask_polygons(mask == value):
            shapes.append({"label": label, "labels": [label], "shape_type": "polygon", "image_name": image_name,
                           "points": points.astype(float).tolist(), "group_id": None, "group_ids": [None],
                           "flags": {}})
    return shapes


def _write_image(source: Path, folder: Path, name: str) -> str:
    """Copy the image as ``<name><ext>`` (converted to PNG, EXIF rotation applied, if not JPEG or PNG)."""
    suffix = source.suffix.lower()
    if suffix in IMAGE_EXTENSIONS:
        shutil.copyfile(source, folder / f"{name}{suffix}")
        return f"{name}{suffix}"
    with Image.open(source) as image:
        ImageOps.exif_transpose(image).save(folder / f"{name}.png")
    return f"{name}.png"


def _annotation(ann_id: int, image_id: int, category_id: int, target: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(target))
    return {"id": ann_id, "image_id": image_id, "category_id": category_id, "iscrowd": 0,
            "segmentation": {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")},
            "area": float(mask_utils.area(rle)), "bbox": [float(v) for v in mask_utils.toBbox(rle)]}


def _single(ids) -> int | None:
    return ids[0] if isinstance(ids, list) and len(ids) == 1 else None


class _IdPool:
    """Integer ids that keep the samples' own ids where they are free, and give fresh ones above them otherwise.

    `take(preferred, owner)` returns the same id for the same owner; a preferred id already owned by another owner
    is not reused."""

    def __init__(self, preferred) -> None:
        numbers = [int(p) for p in preferred if isinstance(p, (int, np.integer)) and p >= 0]
        self._next = max(numbers, default=0) + 1
        self._owners: dict[int, object] = {}
        self._given: dict[object, int] = {}

    def take(self, preferred, owner) -> int:
        if owner in self._given:
            return self._given[owner]
        if isinstance(preferred, (int, np.integer)) and preferred >= 0 and int(preferred) not in self._owners:
            number = int(preferred)
        else:
            number, self._next = self._next, self._next + 1
        self._owners[number] = owner
        self._given[owner] = number
        return number


def _unique_name(stem: str, taken) -> str:
    name, n = stem, 0
    while taken(name):
        n += 1
        name = f"{stem}_{n}"
    return name


@contextlib.contextmanager
def _export_folder(export_dir: str | Path, overwrite: bool, kind: str):
    """A fresh folder to write into, moved to `export_dir` when the export completes (removed if it fails)."""
    target = Path(export_dir)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        if not overwrite:
            raise FileExistsError(f"{target} exists and is not empty; pass overwrite=True to replace an export")
        if not (target / MANIFEST).is_file():
            raise FileExistsError(f"{target} is not empty and was not written by a sam-veteran export; "
                                  "refusing to delete it: choose an empty or new folder")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    staging.chmod(0o755)
    try:
        yield staging
        (staging / MANIFEST).write_text(json.dumps({"format": kind}), encoding="utf-8")
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
