"""gIoU and cIoU under named protocol conventions; LISA's protocol, the field's reference, is the default.

Each (image, query) item contributes its intersection and union. gIoU is the mean of per-item IoUs; cIoU is the
sum of intersections over the sum of unions (0 when that sum is 0, as LISA's ``I / (U + 1e-10)`` gives). A missing
prediction (no mask at all) counts as an empty one: IoU 0 against a non-empty ground truth, and its union (the
ground-truth area) still counts in cIoU.

Peers' published numbers differ by several points because of a few choices, so each is named here. ``seg_zero``
and ``vision_reasoner`` reproduce those repositories' evaluation scripts (they score ``mask.astype(bool)``, so
pixels marked 255 count as target):

| convention | pixels marked 255 | empty prediction, empty target | missing prediction, empty target | cIoU |
|---|---|---|---|---|
| ``lisa`` (default) | excluded from intersection and union | IoU 1 | IoU 1 | yes |
| ``empty_zero`` | excluded | IoU 0 | IoU 0 | yes |
| ``skip_empty`` | excluded | left out of gIoU | left out of gIoU | yes |
| ``ignore_as_background`` | counted as background | IoU 1 | IoU 1 | yes |
| ``seg_zero`` | counted as target | left out of gIoU | IoU 0 | none (NaN) |
| ``vision_reasoner`` | counted as target | IoU 0 | IoU 0 | yes |

"Left out" items add nothing to cIoU either way (their union is 0). An empty set's gIoU is 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import numpy as np

IGNORE = 255  # the ground truth's "ignore" value (0 background, 1 target): the one definition
EXCLUDE, BACKGROUND, TARGET = "exclude", "background", "target"  # what a pixel marked IGNORE counts as


@dataclass(frozen=True)
class Convention:
    name: str
    empty_iou: float | None  # IoU of an empty prediction vs an empty target; None = the item is left out of gIoU
    ignore: str  # EXCLUDE: pixels marked IGNORE drop out of intersection and union; or count as BACKGROUND/TARGET
    description: str
    missing_empty_iou: float | None  # the same for a missing prediction (no mask) vs an empty target
    has_ciou: bool = True  # False: the reference reports gIoU only, cIoU is NaN here


CONVENTIONS = {c.name: c for c in (
    Convention("lisa", 1.0, EXCLUDE, "LISA: ignore pixels excluded, empty-vs-empty = 1", 1.0),
    Convention("empty_zero", 0.0, EXCLUDE, "ignore pixels excluded, empty-vs-empty = 0", 0.0),
    Convention("skip_empty", None, EXCLUDE, "ignore pixels excluded, empty-vs-empty items left out of gIoU", None),
    Convention("ignore_as_background", 1.0, BACKGROUND, "ignore pixels count as background, empty-vs-empty = 1",
               1.0),
    Convention("seg_zero", None, TARGET, "Seg-Zero's evaluation: ignore pixels count as target, empty-vs-empty "
               "left out, missing prediction on an empty target = 0, no cIoU", 0.0, has_ciou=False),
    Convention("vision_reasoner", 0.0, TARGET, "VisionReasoner's evaluation: ignore pixels count as target, "
               "empty-vs-empty = 0", 0.0),
)}
DEFAULT_CONVENTION = "lisa"


def get_convention(convention: str | Convention) -> Convention:
    if isinstance(convention, Convention):
        return convention
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown protocol convention {convention!r}; choose one of {', '.join(CONVENTIONS)}")
    return CONVENTIONS[convention]


@dataclass(frozen=True)
class ItemScore:
    intersection: int
    union: int
    missing: bool = False  # there was no prediction at all (not an empty one)

    @property
    def iou(self) -> float:
        """LISA's IoU (empty-vs-empty = 1)."""
        return self.intersection / self.union if self.union else 1.0


def score_item(prediction: np.ndarray | None, ground_truth: np.ndarray,
               convention: str | Convention = DEFAULT_CONVENTION) -> ItemScore:
    """Intersection and union of one prediction (nonzero = object) against a 0/1/255 ground truth of the same size;
    `None` is a missing prediction."""
    target, valid = _target(ground_truth, get_convention(convention))
    if prediction is None:
        return ItemScore(0, int(np.count_nonzero(target)), missing=True)
    if prediction.shape != ground_truth.shape:
        raise ValueError(f"prediction shape {prediction.shape} differs from ground truth {ground_truth.shape}")
    return _overlap(prediction.astype(bool), target, valid)


def mask_iou(a: np.ndarray | None, b: np.ndarray | None, ignore: np.ndarray | None = None) -> float:
    """IoU of two binary masks of one image (nonzero = object), `ignore` pixels left out of both: LISA's
    conventions, so a missing mask (None) is empty and two empty masks agree (1.0). The one mask IoU that the
    rewards, the trainer's task labels and triage use; `score_item` is the same count against a 0/1/255 truth."""
    if a is None and b is None:
        return 1.0
    a = np.zeros_like(b, dtype=bool) if a is None else a.astype(bool)
    b = np.zeros_like(a, dtype=bool) if b is None else b.astype(bool)
    if a.shape != b.shape:
        raise ValueError(f"masks of different sizes {a.shape} and {b.shape}")
    return _overlap(a, b, None if ignore is None else ~ignore).iou


def _overlap(predicted: np.ndarray, target: np.ndarray, valid: np.ndarray | None) -> ItemScore:
    """Intersection and union of two boolean masks over the `valid` pixels (all when None)."""
    if valid is not None:
        predicted, target = predicted & valid, target & valid
    intersection = int(np.count_nonzero(predicted & target))
    return ItemScore(intersection, int(np.count_nonzero(predicted)) + int(np.count_nonzero(target)) - intersection)


def score_crop(crop: np.ndarray, x: int, y: int, ground_truth: np.ndarray,
               convention: str | Convention = DEFAULT_CONVENTION, target_area: int | None = None) -> ItemScore:
    """`score_item` for a prediction that is zero outside the box of `crop` placed at pixel (x, y): only the box is
    compared, so a small mask on a large image costs little (pass `target_area`, the ground truth's target pixel
    count under the convention, when scoring several crops against one ground truth)."""
    conv = get_convention(convention)
    height, width = crop.shape
    region = ground_truth[y:y + height, x:x + width]
    if x < 0 or y < 0 or region.shape != crop.shape:
        raise ValueError(f"a {width}x{height} mask at ({x}, {y}) reaches outside the "
                         f"{ground_truth.shape[1]}x{ground_truth.shape[0]} ground truth")
    target, valid = _target(region, conv)
    predicted = crop.astype(bool) if valid is None else crop.astype(bool) & valid
    intersection = int(np.count_nonzero(predicted & target))
    if target_area is None:
        target_area = int(np.count_nonzero(_target(ground_truth, conv)[0]))
    return ItemScore(intersection, int(np.count_nonzero(predicted)) + target_area - intersection)


def _target(ground_truth: np.ndarray, convention: Convention) -> tuple[np.ndarray, np.ndarray | None]:
    """(target pixels, valid pixels or None when every pixel counts)."""
    if convention.ignore == EXCLUDE:
        return ground_truth == 1, ground_truth != IGNORE
    if convention.ignore == TARGET:
        return ground_truth != 0, None
    return ground_truth == 1, None


def item_ious(intersections, unions, convention: str | Convention = DEFAULT_CONVENTION,
              missing=None) -> np.ndarray:
    """Per-item IoU as floats; NaN where the convention leaves an item with union 0 out. `missing` flags the items
    that had no prediction at all (conventions may score those apart from empty predictions)."""
    conv = get_convention(convention)
    intersections = np.asarray(intersections, dtype=np.float64)
    unions = np.asarray(unions, dtype=np.float64)
    missing = np.zeros(len(unions), bool) if missing is None else np.asarray(missing, dtype=bool)
    empty = np.where(missing, _or_nan(conv.missing_empty_iou), _or_nan(conv.empty_iou))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(unions > 0, intersections / np.maximum(unions, 1), empty)


def _or_nan(value: float | None) -> float:
    return math.nan if value is None else value


def summarize_counts(intersections, unions, convention: str | Convention = DEFAULT_CONVENTION,
                     missing=None) -> dict:
    """``{"gIoU", "cIoU", "count"}`` from per-item intersections and unions (`count` = items in gIoU); cIoU is NaN
    under a convention that has none."""
    conv = get_convention(convention)
    ious = item_ious(intersections, unions, conv, missing)
    kept = ious[~np.isnan(ious)]
    total_union = float(np.sum(unions))
    ciou = float(np.sum(intersections)) / total_union if total_union else 0.0
    return {"gIoU": float(kept.mean()) if len(kept) else 0.0, "cIoU": ciou if conv.has_ciou else math.nan,
            "count": int(len(kept))}


def summarize(scores: Iterable[ItemScore], convention: str | Convention = DEFAULT_CONVENTION) -> dict[str, float]:
    """``{"gIoU", "cIoU", "count"}`` over item scores, as fractions in [0, 1]."""
    scores = list(scores)
    return summarize_counts([s.intersection for s in scores], [s.union for s in scores], convention,
                            [s.missing for s in scores])


NOC_THRESHOLDS = (0.85, 0.90)
NOC_CAP = 20  # the interactive-segmentation protocol's click budget


def clicks_to_reach(step_ious: Iterable[float], step_clicks: Iterable[int], threshold: float,
                    cap: int = NOC_CAP) -> int:
    """NoC for one item: how many clicks had been made when the IoU first reached `threshold` (0 when the box
    alone did); `cap` when it never did within `cap` clicks (the protocol's convention for failures).

    `step_ious[k]` is the IoU of the k-th mask (step 0: the box) and `step_clicks[k]` the clicks made so far."""
    for iou, clicks in zip(step_ious, step_clicks):
        if clicks > cap:
            break
        if iou >= threshold:
            return int(clicks)
    return cap


def mean_clicks_to_reach(items: Iterable[tuple[Iterable[float], Iterable[int]]], threshold: float,
                         cap: int = NOC_CAP) -> float:
    """NoC@threshold over items of (step IoUs, clicks so far at each step): the mean of `clicks_to_reach`."""
    counts = [clicks_to_reach(ious, clicks, threshold, cap) for ious, clicks in items]
    return float(np.mean(counts)) if counts else float("nan")
