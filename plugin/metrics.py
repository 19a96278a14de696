"""gIoU and cIoU under named protocol conventions; LISA's protocol, the field's reference, is the default.

Each (image, query) item contributes its intersection and union. gIoU is the mean of per-item IoUs; cIoU is the
sum of intersections over the sum of unions. A missing prediction counts as an empty one: IoU 0 against a
non-empty ground truth, and its union (the ground-truth area) still counts in cIoU.

Peers' published numbers differ by several points because of two choices, so both are named here:

| convention | pixels marked 255 in the ground truth | item with empty prediction and empty target |
|---|---|---|
| ``lisa`` (default) | excluded from intersection and union | IoU 1 |
| ``empty_zero`` | excluded | IoU 0 |
| ``skip_empty`` | excluded | left out of gIoU (adds nothing to cIoU either way) |
| ``ignore_as_background`` | counted as background | IoU 1 |

A set whose total union is 0 (only empty-vs-empty items) has the convention's empty-vs-empty value as cIoU
(0 for ``skip_empty``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np

IGNORE = 255  # the ground truth's "ignore" value (0 background, 1 target): the one definition


@dataclass(frozen=True)
class Convention:
    name: str
    empty_iou: float | None  # IoU of an empty-vs-empty item; None = the item is left out of gIoU
    exclude_ignore: bool  # pixels marked IGNORE in the ground truth drop out of intersection and union
    description: str


CONVENTIONS = {c.name: c for c in (
    Convention("lisa", 1.0, True, "LISA: ignore pixels excluded, empty-vs-empty = 1"),
    Convention("empty_zero", 0.0, True, "ignore pixels excluded, empty-vs-empty = 0"),
    Convention("skip_empty", None, True, "ignore pixels excluded, empty-vs-empty items left out of gIoU"),
    Convention("ignore_as_background", 1.0, False, "ignore pixels count as background, empty-vs-empty = 1"),
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
        return ItemScore(0, int(target.sum()))
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
    if convention.exclude_ignore:
        return ground_truth == 1, ground_truth != IGNORE
    return ground_truth == 1, None


def item_ious(intersections, unions, convention: str | Convention = DEFAULT_CONVENTION) -> np.ndarray:
    """Per-item IoU as floats; NaN where the convention leaves an empty-vs-empty item out."""
    conv = get_convention(convention)
    intersections = np.asarray(intersections, dtype=np.float64)
    unions = np.asarray(unions, dtype=np.float64)
    empty = np.nan if conv.empty_iou is None else conv.empty_iou
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(unions > 0, intersections / np.maximum(unions, 1), empty)


def summarize_counts(intersections, unions, convention: str | Convention = DEFAULT_CONVENTION) -> dict:
    """``{"gIoU", "cIoU", "count"}`` from per-item intersections and unions (`count` = items in gIoU)."""
    conv = get_convention(convention)
    ious = item_ious(intersections, unions, conv)
    kept = ious[~np.isnan(ious)]
    total_union = float(np.sum(unions))
    empty = conv.empty_iou if conv.empty_iou is not None else 0.0
    return {"gIoU": float(kept.mean()) if len(kept) else 0.0,
            "cIoU": float(np.sum(intersections)) / total_union if total_union else (empty if len(ious) else 0.0),
            "count": int(len(kept))}


def summarize(scores: Iterable[ItemScore], convention: str | Convention = DEFAULT_CONVENTION) -> dict[str, float]:
    """``{"gIoU", "cIoU", "count"}`` over item scores, as fractions in [0, 1]."""
    scores = list(scores)
    return summarize_counts([s.intersection for s in scores], [s.union for s in scores], convention)


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
