"""gIoU and cIoU, LISA's protocol: the field's reference for reasoning segmentation.

Each (image, query) item contributes its intersection and union, with pixels marked `IGNORE` (255) in the ground
truth excluded from both. gIoU is the mean of per-item IoUs, an item whose prediction and ground truth are both
empty scoring 1; cIoU is the sum of intersections over the sum of unions. A missing prediction counts as an empty
one: IoU 0 against a non-empty ground truth, and its union (the ground-truth area) still counts in cIoU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np

IGNORE = 255


@dataclass(frozen=True)
class ItemScore:
    intersection: int
    union: int

    @property
    def iou(self) -> float:
        return self.intersection / self.union if self.union else 1.0


def score_item(prediction: np.ndarray | None, ground_truth: np.ndarray) -> ItemScore:
    """Intersection and union of one binary prediction against a 0/1/255 ground truth of the same size."""
    valid = ground_truth != IGNORE
    target = (ground_truth == 1) & valid
    if prediction is None:
        return ItemScore(0, int(target.sum()))
    if prediction.shape != ground_truth.shape:
        raise ValueError(f"prediction shape {prediction.shape} differs from ground truth {ground_truth.shape}")
    predicted = prediction.astype(bool) & valid
    return ItemScore(int((predicted & target).sum()), int((predicted | target).sum()))


def summarize(scores: Iterable[ItemScore]) -> dict[str, float]:
    """``{"gIoU", "cIoU", "count"}`` over item scores, as fractions in [0, 1]."""
    scores = list(scores)
    if not scores:
        return {"gIoU": 0.0, "cIoU": 0.0, "count": 0}
    intersections = sum(s.intersection for s in scores)
    unions = sum(s.union for s in scores)
    return {"gIoU": float(np.mean([s.iou for s in scores])),
            "cIoU": intersections / unions if unions else 1.0, "count": len(scores)}
