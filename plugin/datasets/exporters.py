"""Any FiftyOne view back to the benchmarks' own formats, so other tools can evaluate on a curated split.

- `export_reasonseg`: LISA's ReasonSeg folders, ``<split>/<name>.jpg`` + ``<name>.json`` with LISA's keys
  (``text``, ``is_sentence``, ``shapes`` of LabelMe polygons labelled ``target`` / ``ignore``). The samples of one
  image that share a ground truth and a query type become one JSON with several texts, in their original order.
- `export_refer`: the REFER layout, ``<dataset>/refs(<split_by>).p`` (gRefCOCO: ``grefs(<split_by>).json``) with
  ``<dataset>/instances.json`` (COCO; each ``segmentation`` a list holding one compressed RLE dict, the form
  REFER's ``getMask``, G_REFER and LISA's loaders index with ``segmentation[0]``) and the images under
  ``images/mscoco/images/train2014/``, where `import_refcoco` looks by default. Sentences that share an image and a
  ground truth become one ref. Source ids (``ref_id``, ``image_id``, ``sent_id``, ``ann_ids``) are kept when the
  samples carry them and they do not clash, otherwise new ones are given.

Both read the ground truth from `gt_field` (0 background, 1 target, 255 ignore) and the split from the sample's
tag, or put everything in `split`. An export is written into a staging folder beside `export_dir` and renamed into
place when complete, so a failure or a kill leaves nothing half-written; an existing non-empty `export_dir` is
replaced only with ``overwrite=True``, only when it holds a previous export (never a folder this code did not
write), and by renaming it aside first, never by deleting it first (see `_export_folder`).
Samples that cannot be exported (no ground truth, no query, a missing image, a mask of the wrong size) stop the
export before anything is written, each named with its problem.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import logging
import os
import pickle
import shutil
import socket
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps
from pycocotools import mask as mask_utils

from ..agent.images import decoder_message
from ..lease import process_gone
from .common import IGNORE, MalformedItem, image_size
from .polygons import mask_polygons
from .reasonseg import IMAGE_EXTENSIONS, SPLITS as REASONSEG_SPLITS
from .refcoco import DATASETS, DEFAULT_IMAGES, DEFAULT_SPLIT_BY, SPLIT_BYS

logger = logging.getLogger(__name__)

MANIFEST = ".sam_veteran_export"  # marks a folder written here (a dot file: the ReasonSeg reader globs *.json)
OWNER = ".sam_veteran_owner"  # in a staging folder while it is written: the exporting host and pid
REFER_SPLITS = ("train", "val", "test", "testA", "testB")
MAX_PROBLEMS_SHOWN = 10
CHUNK = 128  # samples whose masks are in memory at once


@dataclass
class _Item:
    """What one sample contributes to an export; the mask itself is kept only in the export's own encoding."""

    sample_id: str
    filepath: str
    query: str
    split: str
    order: int
    size: tuple[int, int]  # (height, width)
    mask_key: str  # digest of the 0/1/255 mask: equal masks, equal keys
    encoded: object  # what `encode` made of the mask, shared by equal masks
    extra: dict = field(default_factory=dict)


def export_reasonseg(samples, export_dir: str | Path, gt_field: str = "ground_truth", query_field: str = "query",
                     split: str | None = None, overwrite: bool = False) -> dict:
    """Write `samples` as ReasonSeg folders under `export_dir` and return a summary.

    ``is_sentence`` is read from the samples when present (False otherwise); texts are ordered by ``text_index``
    when present. Images are copied (a format other than JPEG or PNG is written as PNG with its EXIF rotation
    applied, so masks still line up).
    """
    items = _read_items(samples, gt_field, query_field, split, REASONSEG_SPLITS, ("is_sentence", "text_index"),
                        encode=_polygons)
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
                          "shapes": _shapes(group[0].encoded, image_name)}
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
    if split_by not in SPLIT_BYS:
        raise ValueError(f"unknown split_by {split_by!r}; expected one of {', '.join(SPLIT_BYS)}")
    extras = ("ref_id", "image_id", "sent_id", "ann_ids", "category_ids")
    items = _read_items(samples, gt_field, query_field, split, REFER_SPLITS, extras, encode=_target_rle)
    if dataset != "grefcoco":
        empty = [i for i in items if i.encoded[0] is None]
        if empty:
            _raise_problems([(i.sample_id, i.filepath, "empty ground truth: only gRefCOCO has no-target refs "
                                                       "(dataset='grefcoco')") for i in empty])
    ignore_dropped = sum(i.encoded[1] for i in items)
    if ignore_dropped:
        logger.warning("%d sample(s) have ignore pixels; REFER has no ignore label, they become background",
                       ignore_dropped)

    images, annotations, refs = _refer_records(items, grefs=dataset == "grefcoco")
    categories = sorted({a["category_id"] for a in annotations} | {r["category_id"] for r in refs})
    instances = {"info": {"description": f"{dataset} exported by sam-veteran"},
                 "images": [{k: v for k, v in image.items() if k != "path"} for image in images],
                 "annotations": annotations,
                 "categories": [{"id": c, "name": str(c), "supercategory": ""} for c in categories]}

    with _export_folder(export_dir, overwrite, dataset) as root:
        folder = root / dataset
        folder.mkdir()
        (folder / "instances.json").write_text(json.dumps(instances), encoding="utf-8")
        if dataset == "grefcoco":
            (folder / f"grefs({split_by}).json").write_text(json.dumps(refs), encoding="utf-8")
        else:
            (folder / f"refs({split_by}).p").write_bytes(pickle.dumps(refs, protocol=2))
        image_folder = root / DEFAULT_IMAGES
        image_folder.mkdir(parents=True)
        for image in images:
            shutil.copyfile(image["path"], image_folder / image["file_name"])
    return {"format": dataset, "split_by": split_by, "export_dir": str(export_dir), "items": len(items),
            "refs": len(refs), "images": len(images), "annotations": len(annotations),
            "splits": sorted({i.split for i in items}), "ignore_dropped": ignore_dropped}


def _refer_records(items: list[_Item], grefs: bool) -> tuple[list[dict], list[dict], list[dict]]:
    """(image records, annotations, refs) of the REFER files; an image record also carries its source ``path``.

    The sentences of one image with the same mask (and ref id, if the samples have one) make one ref; one
    annotation per distinct mask of an image (and source annotation id)."""
    image_ids = _IdPool(i.extra.get("image_id") for i in items)
    ref_ids = _IdPool(i.extra.get("ref_id") for i in items)
    ann_ids = _IdPool(_single(i.extra.get("ann_ids")) for i in items)
    sent_ids = _IdPool(i.extra.get("sent_id") for i in items)
    images, annotations, refs = {}, {}, {}
    file_names: set[str] = set()
    for item in items:
        if item.filepath not in images:
            suffix = Path(item.filepath).suffix
            name = _unique_name(Path(item.filepath).stem, lambda n: n + suffix in file_names) + suffix
            file_names.add(name)
            height, width = item.size
            images[item.filepath] = {"id": image_ids.take(item.extra.get("image_id"), item.filepath),
                                     "file_name": name, "width": width, "height": height, "path": item.filepath}
        image = images[item.filepath]
        rle = item.encoded[0]
        category_id = (item.extra.get("category_ids") or [1])[0]
        ann_key = (item.filepath, item.mask_key, _single(item.extra.get("ann_ids")))
        if rle is not None and ann_key not in annotations:
            annotations[ann_key] = _annotation(ann_ids.take(ann_key[2], ann_key), image["id"], category_id, rle)
        ref_key = (item.split, item.filepath, item.mask_key, item.extra.get("ref_id"))
        if ref_key not in refs:
            ann_id = annotations[ann_key]["id"] if rle is not None else -1
            refs[ref_key] = {"ref_id": ref_ids.take(ref_key[3], ref_key), "image_id": image["id"],
                             "ann_id": [ann_id] if grefs else ann_id, "category_id": category_id,
                             "split": item.split, "file_name": image["file_name"], "sentences": []}
            if grefs:
                refs[ref_key]["no_target"] = ann_id == -1
        refs[ref_key]["sentences"].append({"sent_id": sent_ids.take(item.extra.get("sent_id"), item.sample_id),
                                           "sent": item.query, "raw": item.query,
                                           "tokens": item.query.lower().split()})
    for ref in refs.values():  # kept ids restore the source order; new ones follow the view's
        ref["sentences"].sort(key=lambda s: s["sent_id"])
        ref["sent_ids"] = [s["sent_id"] for s in ref["sentences"]]
    return list(images.values()), list(annotations.values()), list(refs.values())


def _read_items(samples, gt_field: str, query_field: str, split: str | None, known_splits: tuple[str, ...],
                extras: tuple[str, ...], encode) -> list[_Item]:
    """The samples' export data, read in chunks (masks are encoded at once, equal masks once); every unusable
    sample is collected and reported together."""
    for name in (gt_field, query_field):
        if not samples.has_field(name):
            raise ValueError(f"the samples have no field {name!r}")
    if split is not None and (not split or Path(split).name != split or split in (".", "..")):
        raise ValueError(f"split {split!r} must be a plain folder name")
    ids = samples.values("id")
    if not ids:
        raise ValueError("nothing to export: the view is empty")
    extras = tuple(name for name in extras if samples.has_field(name))
    items, problems, encoded = [], [], {}
    for start in range(0, len(ids), CHUNK):
        chunk = samples.select(ids[start:start + CHUNK], ordered=True)
        columns = chunk.values(["id", "filepath", gt_field, query_field, "tags", *extras])
        for offset, (sample_id, filepath, label, query, tags, *extra) in enumerate(zip(*columns)):
            mask = label.get_mask() if label is not None and label.has_mask else None
            problem = _check(filepath, mask, query, tags, split, known_splits, gt_field, query_field)
            if problem:
                problems.append((sample_id, filepath, problem))
                continue
            mask = np.where(mask == IGNORE, IGNORE, mask != 0).astype(np.uint8)
            key = hashlib.sha1(mask.tobytes() + str(mask.shape).encode()).hexdigest()
            if key not in encoded:
                encoded[key] = encode(mask)
            items.append(_Item(sample_id, filepath, query.strip(), split or _split_tag(tags, known_splits)[0],
                               start + offset, mask.shape, key, encoded[key], dict(zip(extras, extra))))
    if problems:
        _raise_problems(problems)
    return items


def _check(filepath: str, mask: np.ndarray | None, query, tags, split: str | None, known_splits: tuple[str, ...],
           gt_field: str, query_field: str) -> str | None:
    """Why a sample cannot be exported, or None."""
    splits = [split] if split else _split_tag(tags, known_splits)
    if len(splits) != 1:
        return (f"{'no' if not splits else 'more than one'} split tag among {', '.join(known_splits)}; "
                "pass split= to put every sample in one split")
    if not isinstance(query, str) or not query.strip():
        return f"no query in {query_field!r}"
    if mask is None:
        return f"no ground-truth mask in {gt_field!r}"
    if mask.ndim != 2:
        return f"{gt_field!r} is not a 2-D label mask (shape {mask.shape})"
    try:
        width, height = image_size(Path(filepath))
    except MalformedItem as exc:
        return str(exc)
    if mask.shape != (height, width):
        return f"mask is {mask.shape[1]}x{mask.shape[0]}, the image {width}x{height}"
    return None


def _split_tag(tags, known_splits) -> list[str]:
    return [t for t in tags or [] if t in known_splits]


def _raise_problems(problems: list[tuple[str, str, str]]) -> None:
    """One error naming every (sample id, file, reason), the first `MAX_PROBLEMS_SHOWN` in full."""
    shown = "\n".join(f"  sample {i} ({path}): {why}" for i, path, why in problems[:MAX_PROBLEMS_SHOWN])
    more = f"\n  ... and {len(problems) - MAX_PROBLEMS_SHOWN} more" if len(problems) > MAX_PROBLEMS_SHOWN else ""
    raise ValueError(f"{len(problems)} sample(s) cannot be exported, nothing was written:\n{shown}{more}")


def _polygons(mask: np.ndarray) -> list[tuple[str, list]]:
    """(label, points) pairs, ``target`` then ``ignore``, that LISA's filling turns back into `mask`."""
    return [(label, points.astype(float).tolist()) for label, value in (("target", 1), ("ignore", IGNORE))
            for points in mask_polygons(mask == value)]


def _shapes(polygons: list[tuple[str, list]], image_name: str) -> list[dict]:
    """LabelMe shapes with the keys LISA's files carry."""
    return [{"label": label, "labels": [label], "shape_type": "polygon", "image_name": image_name, "points": points,
             "group_id": None, "group_ids": [None], "flags": {}} for label, points in polygons]


def _target_rle(mask: np.ndarray) -> tuple[dict | None, bool]:
    """(compressed RLE of the target or None when empty, whether the mask had ignore pixels)."""
    target = (mask == 1).astype(np.uint8)
    return (mask_utils.encode(np.asfortranarray(target)) if target.any() else None), bool((mask == IGNORE).any())


def _write_image(source: Path, folder: Path, name: str) -> str:
    """Copy the image as ``<name><ext>`` (converted to PNG, EXIF rotation applied, if not JPEG or PNG)."""
    suffix = source.suffix.lower()
    if suffix in IMAGE_EXTENSIONS:
        shutil.copyfile(source, folder / f"{name}{suffix}")
        return f"{name}{suffix}"
    try:
        with Image.open(source) as image:
            ImageOps.exif_transpose(image).save(folder / f"{name}.png")
    except Exception as exc:  # a file whose header reads but whose pixels do not: named, and nothing is written
        raise ValueError(f"cannot convert image {source} to PNG: {decoder_message(exc)}; nothing was written") \
            from None
    return f"{name}.png"


def _annotation(ann_id: int, image_id: int, category_id: int, rle: dict) -> dict:
    return {"id": ann_id, "image_id": image_id, "category_id": category_id, "iscrowd": 0,
            "segmentation": [{"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}],
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
    """A fresh staging folder to write into, swapped in place of `export_dir` when the export completes (removed if
    it fails). An earlier export is renamed aside, never deleted first, so a kill at any point leaves it or the
    new one at `export_dir` (or aside, restored by the next export there); staging folders of killed exports
    are removed by the next export to the same place."""
    target = Path(export_dir)
    _clean_interrupted(target)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        if not overwrite:
            raise FileExistsError(f"{target} exists and is not empty; pass overwrite=True to replace an export")
        if not (target / MANIFEST).is_file():
            raise FileExistsError(f"{target} is not empty and was not written by a sam-veteran export; "
                                  "refusing to delete it: choose an empty or new folder")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    (staging / OWNER).write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid()}), encoding="utf-8")
    staging.chmod(0o755)
    try:
        yield staging
        (staging / OWNER).unlink()
        (staging / MANIFEST).write_text(json.dumps({"format": kind}), encoding="utf-8")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    previous = target.parent / f".{target.name}.previous"
    if target.exists():
        target.rename(previous)  # an empty folder too: `rename` onto it would need it gone first
    staging.rename(target)
    shutil.rmtree(previous, ignore_errors=True)


def _clean_interrupted(target: Path) -> None:
    """Undo what a killed export to `target` left: put an earlier export set aside back if nothing replaced it,
    and remove staging folders whose process is gone (those of live exports, or other hosts', are kept)."""
    previous = target.parent / f".{target.name}.previous"
    if previous.is_dir():
        if target.exists():
            shutil.rmtree(previous, ignore_errors=True)
        else:
            previous.rename(target)
    for staging in target.parent.glob(f".{glob.escape(target.name)}.partial-*"):
        try:
            owner = json.loads((staging / OWNER).read_text(encoding="utf-8"))
        except (OSError, ValueError):  # complete, or killed before its owner was written: nobody's
            owner = {"host": socket.gethostname(), "pid": -1}
        if process_gone(owner["host"], owner["pid"]):
            shutil.rmtree(staging, ignore_errors=True)
        else:
            logger.warning("%s belongs to an export in progress (process %s on %s); left alone", staging,
                           owner["pid"], owner["host"])
