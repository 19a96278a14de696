"""What both importers share: safe paths, polygon filling as LISA does it, image sizes, all-or-nothing loading.

Malformed items are skipped and reported (a `Skipped` record names the file and the reason, logged and kept in
``dataset.info["import"]["skipped"]``); a file name that points outside the dataset folder stops the import with
`UnsafePathError`. Samples are added in chunks into a staging dataset (``sam-veteran-importing-...``) that gets
its final name only when complete, so a failed or killed import never leaves a partial dataset under that name,
and an earlier dataset it replaces (``overwrite=True``) stays until then. A failed import deletes its staging
dataset; the next import cleans up those of killed imports (and finishes one killed after it was complete, while
swapping it into place), and logs those of imports still running elsewhere.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Iterator

import cv2
import numpy as np
from PIL import Image

from ..metrics import IGNORE  # noqa: F401  (the importers and exporters read it from here)
from ..agent.images import decoder_message
from ..lease import process_gone

logger = logging.getLogger(__name__)

COORDINATE_TOLERANCE = 1.0  # pixels a polygon point may lie outside the image (annotation tools snap to the edge)
CHUNK = 64
STAGING_PREFIX = "sam-veteran-importing-"  # the name of a dataset being imported
STAGING_INFO = "sam_veteran_staging"  # in its info: final name, importing host and pid, complete yet
_ROTATED_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that swap width and height


class MalformedItem(ValueError):
    """An annotation that cannot become a sample; the item is skipped and reported."""


class UnsafePathError(ValueError):
    """A file name in the annotations points outside the dataset folder (``../`` or an absolute path)."""


@dataclass(frozen=True)
class Skipped:
    file: str
    reason: str


def safe_join(root: Path, name: str, source: str) -> Path:
    """`root / name`, refusing names that are absolute or climb out of `root` (`source` names the offending file)."""
    relative = Path(name)
    if not name or relative.is_absolute() or relative.drive or ".." in relative.parts:
        raise UnsafePathError(f"{source}: file name {name!r} points outside {root}; refusing to import")
    path = root / relative
    if not path.resolve().is_relative_to(root.resolve()):
        raise UnsafePathError(f"{source}: file name {name!r} resolves outside {root}; refusing to import")
    return path


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) as the App shows the image (EXIF rotation applied), read from the header only."""
    if not path.is_file():
        raise MalformedItem(f"image not found: {path.name}")
    try:
        with Image.open(path) as image:
            width, height = image.size
            orientation = image.getexif().get(0x0112)
    except Exception as exc:  # whatever one file makes a decoder raise fails that item alone
        raise MalformedItem(f"cannot read image {path.name}: {decoder_message(exc)}") from None
    return (height, width) if orientation in _ROTATED_ORIENTATIONS else (width, height)


def check_polygon(points, width: int, height: int, what: str) -> np.ndarray:
    """The polygon as an (N, 2) float array, or `MalformedItem` (under 3 points, not numbers, outside the image)."""
    try:
        array = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    except (TypeError, ValueError):
        raise MalformedItem(f"{what}: points are not [x, y] number pairs") from None
    if len(array) < 3:
        raise MalformedItem(f"{what}: polygon with {len(array)} point(s), at least 3 needed")
    if not np.isfinite(array).all():
        raise MalformedItem(f"{what}: polygon has a non-finite coordinate")
    low, high = -COORDINATE_TOLERANCE, np.array([width, height]) + COORDINATE_TOLERANCE
    if (array < low).any() or (array > high).any():
        raise MalformedItem(f"{what}: polygon reaches outside the {width}x{height} image")
    return array


def fill_polygons(polygons: list[tuple[np.ndarray, int]], width: int, height: int) -> np.ndarray:
    """LISA's ground truth: polygons sorted by filled area, largest first, each drawn (outline and inside) with its
    value, so smaller polygons drawn later win where they overlap. Coordinates are truncated to integers as LISA's
    ``np.array(points, dtype=np.int32)`` does; ties in area keep LISA's order (reversed stable argsort)."""
    areas = [int(_draw(np.zeros((height, width), np.uint8), points, 1).sum()) for points, _ in polygons]
    mask = np.zeros((height, width), np.uint8)
    for index in np.argsort(areas, kind="stable")[::-1]:
        points, value = polygons[index]
        _draw(mask, points, value)
    return mask


def _draw(mask: np.ndarray, points: np.ndarray, value: int) -> np.ndarray:
    contour = np.array([points], dtype=np.int32)
    cv2.polylines(mask, contour, True, value, 1)
    cv2.fillPoly(mask, contour, value)
    return mask


def load_all_or_nothing(samples: Iterable, skipped: list[Skipped], info: dict, name: str | None, overwrite: bool,
                        persistent: bool, source: str):
    """Add the samples (a generator that may append to `skipped` as it goes) in chunks to a staging dataset and give
    it `name` once complete; on any failure, or when no item survives, delete the staging dataset and raise."""
    import fiftyone as fo

    clean_interrupted_imports()
    if name and fo.dataset_exists(name) and not overwrite:
        raise ValueError(f"dataset {name!r} already exists; pass overwrite=True to replace it")
    target = name or fo.get_default_dataset_name()
    dataset = fo.Dataset(f"{STAGING_PREFIX}{uuid.uuid4().hex[:12]}")
    dataset.info[STAGING_INFO] = {"target": target, "host": socket.gethostname(), "pid": os.getpid(),
                                  "complete": False}
    dataset.save()
    try:
        for chunk in _chunks(samples, CHUNK):
            dataset.add_samples(chunk, progress=False)
        if not dataset.count("id"):
            reasons = "; ".join(f"{s.file}: {s.reason}" for s in skipped[:5])
            raise ValueError(f"no items imported from {source}" + (f" (skipped: {reasons})" if reasons else ""))
        dataset.info["import"] = {**info, "items": dataset.count("id"), "skipped": [asdict(s) for s in skipped]}
        dataset.info[STAGING_INFO]["complete"] = True  # the commit point: from here the import is finished
        dataset.persistent = persistent
        dataset.save()
    except BaseException:
        dataset.delete()
        raise
    _swap_in(dataset)
    for entry in skipped:
        logger.warning("skipped %s: %s", entry.file, entry.reason)
    return dataset


def clean_interrupted_imports() -> list[str]:
    """Delete the staging datasets of killed imports (finishing the swap of one that was complete) and return the
    names of those still held by a live import, or by one on another host, which are left alone."""
    import fiftyone as fo

    running = []
    for staging in fo.list_datasets(glob_patt=f"{STAGING_PREFIX}*"):
        try:
            dataset = fo.load_dataset(staging)
        except ValueError:  # deleted meanwhile by the import that held it
            continue
        mark = dataset.info.get(STAGING_INFO)
        if mark is None:  # killed before it was marked, or an import that is marking it right now
            created = dataset.created_at  # naive UTC, or aware when FiftyOne's `timezone` is configured
            created = created.astimezone(timezone.utc) if created.tzinfo else created.replace(tzinfo=timezone.utc)
            fresh = (datetime.now(timezone.utc) - created).total_seconds() < 60
            mark = {"host": socket.gethostname(), "pid": os.getpid() if fresh else -1}
        if not process_gone(mark["host"], mark["pid"]):
            running.append(staging)
        elif mark.get("complete") and not fo.dataset_exists(mark["target"]):
            logger.warning("finishing the interrupted import of %r", mark["target"])
            _swap_in(dataset)
        else:
            logger.warning("deleting %r, left by an import killed part-way", staging)
            dataset.delete()
    if running:
        logger.warning("imports in progress (or killed on another host; delete them with fo.delete_dataset): %s",
                       ", ".join(running))
    return running


def _swap_in(dataset) -> None:
    """Give a complete staging dataset its final name, replacing a dataset of that name."""
    import fiftyone as fo

    target = dataset.info[STAGING_INFO]["target"]
    if fo.dataset_exists(target):
        fo.delete_dataset(target)
    dataset.name = target
    dataset.info.pop(STAGING_INFO)
    dataset.save()


def _chunks(items: Iterable, size: int) -> Iterator[list]:
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
