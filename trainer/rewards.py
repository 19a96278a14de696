"""The paper's rewards as plain functions, and their TRL reward-function wrappers.

The plain functions take numbers and numpy arrays only (no FiftyOne, no torch), so each is tested against
hand-computed cases. The wrappers at the bottom have TRL's signature
``f(prompts, completions, completion_ids, **columns) -> list[float | None]`` and return ``None`` for the rows of
tasks they do not score, so TRL's per-function means are per-task means of each component.

Distances (box L1, the auxiliary point radius) are measured in pixels of the image the policy sees (its
`input_size`, 840x840 for Qwen2.5-VL as in the paper), whatever the family's coordinate convention.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from ..plugin.agent.actions import answer_box, answer_clicks
from ..plugin.agent.parsing import AnswerError, parse_grounding, parse_refinement
from ..plugin.agent.prompts import ModelFamily
from ..plugin.metrics import mask_iou

GROUNDING, MASK, AUXILIARY = "grounding", "mask", "auxiliary"
TASKS = (GROUNDING, MASK, AUXILIARY)
GOOD, REFINE, AMBIGUOUS = "good", "refine", "ambiguous"

_STRUCTURE = re.compile(r"\s*<think>.*?</think>\s*<answer>.*?</answer>\s*", re.DOTALL)


@dataclass(frozen=True)
class RewardConfig:
    """Thresholds of every reward; the defaults are the paper's."""

    box_iou_threshold: float = 0.5
    box_l1_threshold: float = 10.0
    iou_gain_tiers: tuple[float, float] = (0.1, 0.5)
    stop_bonus: float = 3.0
    ambiguous_stop_gain: float = 0.0  # R_delta for a stop on a mask between refine_iou and good_iou (either fits)
    point_radius: float = 50.0
    weights: dict[str, float] = field(default_factory=dict)  # reward name -> weight (default 1)


# --- geometry --------------------------------------------------------------------------------------------------


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of two xyxy boxes; 0 when the union is empty."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = max(0.0, a[2] - a[0]) * max(0.0, a[3] - a[1]) + max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def boundary_band(mask: np.ndarray, tolerance: int) -> np.ndarray:
    """Pixels within `tolerance` pixels (chessboard distance) of the mask's boundary, inside or outside."""
    if tolerance <= 0:
        return np.zeros_like(mask, dtype=bool)
    from scipy.ndimage import binary_dilation, binary_erosion

    structure = np.ones((3, 3), dtype=bool)
    grown = binary_dilation(mask, structure, iterations=tolerance)
    shrunk = binary_erosion(mask, structure, iterations=tolerance, border_value=1)
    return grown & ~shrunk


def tolerant_iou(pred: np.ndarray, gt: np.ndarray, ignore: np.ndarray | None = None, tolerance: int = 2) -> float:
    """IoU that forgives disagreement within `tolerance` pixels of the ground truth's edge ("near-edge tolerant")."""
    band = boundary_band(gt, tolerance)
    return mask_iou(pred, gt, band if ignore is None else band | ignore)


def mask_box(mask: np.ndarray) -> tuple[float, float, float, float] | None:
    """The tight xyxy box (pixel edges) around a boolean mask; None when it is empty."""
    ys, xs = np.nonzero(mask)
    if xs.size == 0:
        return None
    return (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))


def mask_centre(mask: np.ndarray) -> tuple[float, float] | None:
    """The centroid (x, y) of a boolean mask in pixel-centre coordinates; None when it is empty."""
    ys, xs = np.nonzero(mask)
    if xs.size == 0:
        return None
    return (float(xs.mean()) + 0.5, float(ys.mean()) + 0.5)


# --- the rewards -----------------------------------------------------------------------------------------------


def box_iou_reward(pred: Sequence[float], gt: Sequence[float], threshold: float = 0.5) -> float:
    """1 when the box overlaps the ground-truth box with IoU above `threshold` (a hard threshold, as the paper)."""
    return 1.0 if box_iou(pred, gt) > threshold else 0.0


def box_l1_reward(pred: Sequence[float], gt: Sequence[float], threshold: float = 10.0) -> float:
    """1 when the mean absolute difference of the four coordinates is below `threshold` pixels."""
    return 1.0 if float(np.mean(np.abs(np.subtract(pred, gt)))) < threshold else 0.0


def decision_reward(stop: bool, case: str) -> float:
    """R_DCS: 1 when the decision fits the mask: stop on a good-enough mask, refine one that needs it.

    Between the two thresholds (`AMBIGUOUS`) either decision is accepted.
    """
    if case == GOOD:
        return 1.0 if stop else 0.0
    if case == REFINE:
        return 0.0 if stop else 1.0
    return 1.0


def iou_gain_reward(before: float, after: float, tiers: tuple[float, float] = (0.1, 0.5)) -> float:
    """R_delta, tiered on delta = after - before: <= 0 -> 0; (0, t1] -> 1; (t1, t2] -> 2; > t2 -> 3."""
    delta = after - before
    if delta <= 0:
        return 0.0
    if delta <= tiers[0]:
        return 1.0
    if delta <= tiers[1]:
        return 2.0
    return 3.0


def stop_gain_reward(case: str, bonus: float = 3.0, ambiguous: float = 0.0) -> float:
    """R_delta for a stop: a correct stop on a good-enough mask earns the top tier, a stop in the ambiguous band
    `ambiguous` (the paper says nothing; 0 by default, as a click that gains nothing), a wrong stop nothing."""
    return bonus if case == GOOD else ambiguous if case == AMBIGUOUS else 0.0


def point_hit(point: Sequence[float] | None, centre: Sequence[float], radius: float = 50.0) -> bool:
    """A click counts when it lies within `radius` of the defect region's centre."""
    return point is not None and float(np.hypot(point[0] - centre[0], point[1] - centre[1])) <= radius


def auxiliary_reward(positive, negative, false_negative_centre, false_positive_centre, radius: float = 50.0) -> float:
    """The auxiliary task: a positive click on the removed area (false negative), a negative click on the added
    one (false positive). (hits - spurious clicks) / defects, clipped to [0, 1]: 1 when every defect is clicked
    and nothing else; a click for a defect that is not there cancels a hit. A stop scores 0 on a corrupted mask
    and 1 on a clean one (no defect), where any click scores 0."""
    slots = [(positive, false_negative_centre), (negative, false_positive_centre)]
    defects = sum(centre is not None for _, centre in slots)
    if defects == 0:
        return 1.0 if positive is None and negative is None else 0.0
    hits = sum(centre is not None and point_hit(point, centre, radius) for point, centre in slots)
    spurious = sum(centre is None and point is not None for point, centre in slots)
    return min(1.0, max(0.0, (hits - spurious) / defects))


def format_reward(text: str) -> float:
    """1 for exactly ``<think>...</think><answer>...</answer>`` (one of each, nothing around them)."""
    if text.count("<think>") != 1 or text.count("<answer>") != 1:
        return 0.0
    return 1.0 if _STRUCTURE.fullmatch(text) else 0.0


def answer_format_reward(text: str, task: str) -> float:
    """1 when the answer is well-formed JSON with the task's keys, readable without any repair."""
    parse = parse_grounding if task == GROUNDING else parse_refinement
    try:
        answer = parse(text)
    except AnswerError:
        return 0.0
    return 0.0 if answer.notes else 1.0


# --- TRL wrappers ----------------------------------------------------------------------------------------------


def completion_text(completion) -> str:
    """The text of a TRL completion: a string, or a conversational ``[{"role": "assistant", "content": ...}]``."""
    if isinstance(completion, str):
        return completion
    content = completion[-1]["content"]
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content)
    return content


class RewardFunction:
    """A TRL reward function: `score(text, record)` per row; rows of other tasks get None."""

    name = "reward"
    tasks: tuple[str, ...] = (GROUNDING, MASK, AUXILIARY)

    def __init__(self, family: ModelFamily, config: RewardConfig) -> None:
        self.family = family
        self.config = config
        self.__name__ = self.name

    def __call__(self, prompts, completions, record, **_) -> list[float | None]:
        return [self.score(completion_text(c), r) if r.task in self.tasks else None
                for c, r in zip(completions, record)]

    def score(self, text: str, record) -> float:
        raise NotImplementedError

    def view_scale(self, record) -> np.ndarray:
        """Factors from original-image pixels to pixels of the policy's view (x, y, x, y)."""
        sx = self.family.input_size[0] / record.image_size[0]
        sy = self.family.input_size[1] / record.image_size[1]
        return np.array([sx, sy, sx, sy])

    def box(self, text: str, record) -> tuple[float, float, float, float] | None:
        """The answer's box in original-image pixels as the agent gives it to the segmenter (`answer_box`: corners
        sorted, clamped into the image), or None when unreadable or without area inside the image."""
        try:
            return answer_box(parse_grounding(text), self.family, record.image_size).box
        except AnswerError:
            return None

    def clicks(self, text: str, record):
        """(positive, negative) clicks in original-image pixels as the agent gives them to the segmenter
        (`answer_clicks`: clamped onto the image), or None when unreadable."""
        try:
            clicks = answer_clicks(parse_refinement(text), self.family, record.image_size)
        except AnswerError:
            return None
        return clicks.positive, clicks.negative


class FormatReward(RewardFunction):
    name = "format"

    def score(self, text, record):
        return format_reward(text)


class AnswerFormatReward(RewardFunction):
    name = "answer_format"

    def score(self, text, record):
        return answer_format_reward(text, record.task)


class BoxIoUReward(RewardFunction):
    name = "box_iou"
    tasks = (GROUNDING,)

    def score(self, text, record):
        box = self.box(text, record)
        return 0.0 if box is None else box_iou_reward(box, record.gt_box, self.config.box_iou_threshold)


class BoxL1Reward(RewardFunction):
    name = "box_l1"
    tasks = (GROUNDING,)

    def score(self, text, record):
        box = self.box(text, record)
        if box is None:
            return 0.0
        scale = self.view_scale(record)
        return box_l1_reward(np.asarray(box) * scale, np.asarray(record.gt_box) * scale, self.config.box_l1_threshold)


class DecisionReward(RewardFunction):
    name = "decision"
    tasks = (MASK,)

    def score(self, text, record):
        clicks = self.clicks(text, record)
        if clicks is None:
            return 0.0
        return decision_reward(clicks == (None, None), record.case)


class AuxiliaryPointReward(RewardFunction):
    name = "aux_point"
    tasks = (AUXILIARY,)

    def score(self, text, record):
        clicks = self.clicks(text, record)
        if clicks is None:
            return 0.0
        scale = self.view_scale(record)[:2]
        in_view = lambda p: None if p is None else tuple(np.asarray(p) * scale)  # noqa: E731
        return auxiliary_reward(in_view(clicks[0]), in_view(clicks[1]), in_view(record.false_negative_centre),
                                in_view(record.false_positive_centre), self.config.point_radius)


class EmbeddingCache:
    """The segmenter's image embeddings, most recent `size` images: every rollout of a group (and every reward
    that runs the segmenter) reuses one encoding, as the agent does across its steps."""

    def __init__(self, segmenter, size: int = 32) -> None:
        self.segmenter = segmenter
        self.size = size
        self._embeddings: OrderedDict = OrderedDict()

    def get(self, record):
        key = record.filepath
        if key in self._embeddings:
            self._embeddings.move_to_end(key)
            return self._embeddings[key]
        embedding = self.segmenter.encode([record.load_image()])[0]
        self._embeddings[key] = embedding
        if len(self._embeddings) > self.size:
            self._embeddings.popitem(last=False)
        return embedding


class SegmenterReward(RewardFunction):
    """A reward that runs the segmenter on the cached image embedding."""

    def __init__(self, family: ModelFamily, config: RewardConfig, segmenter, cache: EmbeddingCache | None = None):
        super().__init__(family, config)
        self.segmenter = segmenter
        self.cache = cache or EmbeddingCache(segmenter)

    def embedding(self, record):
        return self.cache.get(record)


class SamIoUReward(SegmenterReward):
    """R_SAM: IoU between the segmenter's mask for the predicted box and the ground truth."""

    name = "sam_iou"
    tasks = (GROUNDING,)

    def score(self, text, record):
        box = self.box(text, record)
        if box is None:
            return 0.0
        mask = self.segmenter.segment(self.embedding(record), box).mask
        return mask_iou(mask, record.gt_mask(), record.ignore_mask())


class IoUGainReward(SegmenterReward):
    """R_delta: the segmenter is re-prompted as the agent would (box, the clicks, the current mask) and the IoU
    gain is tiered; a correct stop earns the top tier."""

    name = "iou_gain"
    tasks = (MASK,)

    def score(self, text, record):
        clicks = self.clicks(text, record)
        if clicks is None:
            return 0.0
        if clicks == (None, None):
            return stop_gain_reward(record.case, self.config.stop_bonus, self.config.ambiguous_stop_gain)
        points = [p for p in clicks if p is not None]
        labels = [label for p, label in zip(clicks, (1, 0)) if p is not None]
        embedding = self.embedding(record)
        # The agent carries the segmenter's own logits; a mask drawn from the ground truth has none to carry.
        logits = (self.segmenter.segment(embedding, record.prompt_box).logits
                  if record.mask_source == "segmenter" else None)
        after = self.segmenter.segment(embedding, record.prompt_box, points, labels, logits).mask
        gt, ignore = record.gt_mask(), record.ignore_mask()
        return iou_gain_reward(mask_iou(record.shown_mask(), gt, ignore), mask_iou(after, gt, ignore),
                               self.config.iou_gain_tiers)


def build_reward_functions(family: ModelFamily, config: RewardConfig, segmenter, extra: list | None = None,
                           cache: EmbeddingCache | None = None) -> list:
    """Every reward of the method in a fixed order, then `extra` TRL reward functions; their names key the
    metrics and `config.weights`. `cache` shares image embeddings with whoever else runs the segmenter."""
    cache = cache or EmbeddingCache(segmenter)
    functions = [FormatReward(family, config), AnswerFormatReward(family, config), BoxIoUReward(family, config),
                 BoxL1Reward(family, config), SamIoUReward(family, config, segmenter, cache),
                 DecisionReward(family, config), IoUGainReward(family, config, segmenter, cache),
                 AuxiliaryPointReward(family, config), *(extra or [])]
    names = [f.__name__ for f in functions]
    unknown = set(config.weights) - set(names)
    if unknown:
        raise ValueError(f"unknown reward names in weights: {sorted(unknown)}; known: {names}")
    return functions
