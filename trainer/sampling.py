"""Dynamic sampling: from an oversampled set of candidate answers, keep a group worth learning from.

For boxes, a diverse group: greedy non-maximum suppression at IoU 0.8 in generation order (an unreadable answer
is never a duplicate). For clicks, the four action types in the ratio 1:2:2:1 for (stop, positive only,
negative only, positive + negative). When the candidates cannot meet the target (too few distinct boxes, an
action type missing), the group is filled with the remaining candidates in generation order, and the group does
not count as "kept" in the metrics. Unreadable click answers are used only as filling.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..plugin.agent.actions import click_action
from ..plugin.agent.parsing import AnswerError, parse_grounding, parse_refinement
from ..plugin.agent.trace import Action
from .rewards import GROUNDING, box_iou

ACTION_TYPES = (Action.STOP, Action.POSITIVE, Action.NEGATIVE, Action.POSITIVE_AND_NEGATIVE)  # the ratio's order


def quotas(size: int, ratio: Sequence[float]) -> list[int]:
    """How many of each action type a group of `size` should hold (largest remainder, ties in type order)."""
    weights = np.asarray(ratio, dtype=float)
    exact = size * weights / weights.sum()
    counts = np.floor(exact).astype(int)
    for i in sorted(range(len(counts)), key=lambda i: (counts[i] - exact[i], i))[: size - counts.sum()]:
        counts[i] += 1
    return counts.tolist()


def select_boxes(boxes: Sequence[Sequence[float] | None], size: int, iou: float = 0.8) -> tuple[list[int], bool]:
    """Indices of `size` candidates: those NMS at `iou` keeps first, then the suppressed ones; and whether NMS
    alone filled the group."""
    kept: list[int] = []
    suppressed: list[int] = []
    for i, box in enumerate(boxes):
        if len(kept) == size:
            suppressed.append(i)
        elif box is None or all(boxes[j] is None or box_iou(box, boxes[j]) <= iou for j in kept):
            kept.append(i)
        else:
            suppressed.append(i)
    met = len(kept) == size
    return (kept + suppressed)[:size], met


def select_actions(types: Sequence[Action | None], size: int,
                   ratio: Sequence[float] = (1, 2, 2, 1)) -> tuple[list[int], bool]:
    """Indices of `size` candidates holding the action types in `ratio` (order `ACTION_TYPES`), and whether the
    ratio was met; `None` marks an unreadable answer."""
    chosen: list[int] = []
    for kind, quota in zip(ACTION_TYPES, quotas(size, ratio)):
        chosen += [i for i, t in enumerate(types) if t == kind][:quota]
    met = len(chosen) == size
    rest = [i for i, t in enumerate(types) if i not in chosen and t is not None]
    rest += [i for i, t in enumerate(types) if i not in chosen and t is None]
    return sorted(chosen) + rest[: size - len(chosen)], met


def select_group(task: str, texts: Sequence[str], size: int, config) -> tuple[list[int], bool]:
    """Indices of `size` of a group's candidate answers (`texts`) for `task`, and whether the target was met.
    `config` is a `SamplingConfig` (nms_iou, action_ratio)."""
    if task == GROUNDING:
        boxes = []
        for text in texts:
            try:
                boxes.append(parse_grounding(text).box)
            except AnswerError:
                boxes.append(None)
        return select_boxes(boxes, size, config.nms_iou)
    types = []
    for text in texts:
        try:
            answer = parse_refinement(text)
            types.append(click_action(answer.positive is not None, answer.negative is not None))
        except AnswerError:
            types.append(None)
    return select_actions(types, size, config.action_ratio)


def select_candidates(candidates: Sequence[Sequence[str]], tasks: Sequence[str], size: int,
                      config) -> tuple[list[list[int]], list[bool]]:
    """Per group, the indices of the `size` candidate answers it keeps (`candidates[g]`, `tasks[g]` its task), and
    whether the group met its target."""
    chosen, met = [], []
    for texts, task in zip(candidates, tasks):
        indices, ok = select_group(task, texts, size, config)
        chosen.append(indices)
        met.append(ok)
    return chosen, met
