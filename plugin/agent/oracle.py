"""The simulated user as a policy (``policy="oracle"``): the interactive-segmentation field's standard protocol.

It reads the sample's ground truth and answers in the same text format as a trained policy, through the same
parser and loop: step 0 is the ground truth's tight box; each refinement step is one click placed by
`clicks.next_click` (positive on the largest miss, negative on the largest false positive), or a stop once the
mask's IoU reaches `stop_iou` (never, when it is None: how NoC@85/90 is measured, with up to 20 steps). So it is
both a baseline beside the agent, an upper bound on what clicks can do with a given segmenter, and the source
of the mini policy's expert traces.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..metrics import IGNORE
from .clicks import next_click
from .policy import PolicyRequest
from .prompts import PIXELS, ModelFamily

ORACLE_FAMILY = ModelFamily("oracle", coordinates=PIXELS, input_size=(256, 256))
GOOD_ENOUGH_IOU = 0.9  # the simulated user stops at or above this IoU (and so do the mini policy's expert traces)


def ground_truth_parts(ground_truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(target, ignore) boolean masks of a ground-truth mask (0 background, 255 ignore, anything else target)."""
    gt = np.asarray(ground_truth)
    if gt.ndim == 3:
        gt = gt[..., 0]
    ignore = gt == IGNORE
    return (gt > 0) & ~ignore, ignore


class OraclePolicy:
    """Answers from the ground truth that each request carries (`PolicyRequest.ground_truth`)."""

    needs_ground_truth = True

    def __init__(self, family: ModelFamily = ORACLE_FAMILY, stop_iou: float | None = GOOD_ENOUGH_IOU) -> None:
        self.family = family
        self.stop_iou = stop_iou

    def generate(self, requests: Sequence[PolicyRequest], sample: bool = False) -> list[str]:
        return [self.answer(request) for request in requests]

    def answer(self, request: PolicyRequest) -> str:
        if request.ground_truth is None:
            raise ValueError("the simulated user (policy='oracle') needs the sample's ground truth")
        target, ignore = ground_truth_parts(request.ground_truth)
        size = (target.shape[1], target.shape[0])
        if request.mask is None:
            ys, xs = np.nonzero(target)
            if xs.size == 0:
                return "<think>The ground truth is empty.</think><answer>{\"bbox_2d\": null}</answer>"
            box = self.family.box_to_policy((xs.min(), ys.min(), xs.max() + 1.0, ys.max() + 1.0), size)
            return f"<think>The ground truth's box.</think><answer>{{\"bbox_2d\": [{_numbers(box)}]}}</answer>"
        mask = np.asarray(request.mask, dtype=bool)
        valid = ~ignore
        union = np.count_nonzero((mask | target) & valid)
        iou = np.count_nonzero(mask & target & valid) / union if union else 1.0
        click = None if self.stop_iou is not None and iou >= self.stop_iou else next_click(mask, target, ignore)
        if click is None:
            return (f"<think>IoU {iou:.3f}: good enough.</think>"
                    "<answer>{\"positive_point\": null, \"negative_point\": null}</answer>")
        xy = f"[{_numbers(self.family.to_policy(click[0], size))}]"
        positive, negative = (xy, "null") if click[1] else ("null", xy)
        kind = "a miss" if click[1] else "a false positive"
        return (f"<think>IoU {iou:.3f}: click the largest error, {kind}.</think>"
                f"<answer>{{\"positive_point\": {positive}, \"negative_point\": {negative}}}</answer>")


def _numbers(values) -> str:
    return ", ".join(f"{float(v):.3f}" for v in values)
