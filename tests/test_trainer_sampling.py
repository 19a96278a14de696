"""Dynamic sampling keeps diverse boxes (NMS at IoU 0.8) and the 1:2:2:1 action mix."""

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sam_veteran.plugin.agent.actions import click_action
from sam_veteran.plugin.agent.trace import Action
from sam_veteran.trainer.rewards import box_iou
from sam_veteran.trainer.sampling import ACTION_TYPES, quotas, select_actions, select_boxes

STOP, POSITIVE, NEGATIVE, BOTH = Action.STOP, Action.POSITIVE, Action.NEGATIVE, Action.POSITIVE_AND_NEGATIVE


def test_quotas_follow_the_ratio():
    assert quotas(6, (1, 2, 2, 1)) == [1, 2, 2, 1]
    assert quotas(12, (1, 2, 2, 1)) == [2, 4, 4, 2]
    assert quotas(8, (1, 2, 2, 1)) == [1, 3, 3, 1]
    assert sum(quotas(5, (1, 2, 2, 1))) == 5


def test_select_boxes_drops_near_duplicates_first():
    boxes = [(0, 0, 10, 10), (0, 0, 10, 10.5), (20, 20, 30, 30), None, (0, 0, 10, 12), (50, 50, 60, 60)]
    chosen, met = select_boxes(boxes, 4)
    # (0,0,10,10.5) overlaps the first at IoU 0.95 -> suppressed; (0,0,10,12) at IoU 0.83 -> suppressed
    assert chosen == [0, 2, 3, 5] and met
    chosen, met = select_boxes(boxes, 5)
    assert chosen == [0, 2, 3, 5, 1] and not met  # filled with the first suppressed candidate


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 50), st.integers(0, 50), st.integers(1, 30), st.integers(1, 30)),
                min_size=8, max_size=16))
def test_selected_boxes_are_diverse_whenever_possible(raw):
    boxes = [(x, y, x + w, y + h) for x, y, w, h in raw]
    chosen, met = select_boxes(boxes, 4)
    assert len(chosen) == len(set(chosen)) == 4
    if met:
        assert all(box_iou(boxes[i], boxes[j]) <= 0.8 for i in chosen for j in chosen if i < j)


def test_select_actions_keeps_one_two_two_one():
    types = [POSITIVE] * 6 + [NEGATIVE] * 5 + [STOP] * 3 + [BOTH] * 2
    chosen, met = select_actions(types, 6)
    assert met and Counter(types[i] for i in chosen) == {STOP: 1, POSITIVE: 2, NEGATIVE: 2, BOTH: 1}
    chosen, met = select_actions(types, 12)
    assert met and Counter(types[i] for i in chosen) == {STOP: 2, POSITIVE: 4, NEGATIVE: 4, BOTH: 2}


def test_select_actions_fills_from_readable_answers_before_unreadable_ones():
    types = [POSITIVE] * 8 + [None] * 4 + [STOP]
    chosen, met = select_actions(types, 6)
    assert not met and len(chosen) == 6
    assert Counter(types[i] for i in chosen) == {STOP: 1, POSITIVE: 5}


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(list(ACTION_TYPES) + [None]), min_size=12, max_size=24))
def test_selected_actions_meet_the_ratio_when_candidates_allow(types):
    chosen, met = select_actions(types, 6)
    assert len(chosen) == len(set(chosen)) == 6
    counts = Counter(types)
    possible = all(counts[k] >= q for k, q in zip(ACTION_TYPES, (1, 2, 2, 1)))
    assert met == possible
    if met:
        assert Counter(types[i] for i in chosen) == {STOP: 1, POSITIVE: 2, NEGATIVE: 2, BOTH: 1}


def test_select_candidates_chooses_per_group_from_all_its_candidates():
    from sam_veteran.trainer.config import SamplingConfig
    from sam_veteran.trainer.sampling import select_candidates
    from tests.scripted import box_answer, click_answer

    size = 6
    # group 0: grounding, the first round repeats one box, the second has distinct boxes
    # group 1: mask, the first round all positive clicks, the second the other action types
    boxes = [box_answer([0, 0, 10, 10])] * size + [box_answer([20 * i, 0, 20 * i + 10, 10]) for i in range(1, 7)]
    clicks = [click_answer([1, 1])] * size + [click_answer(None, None), click_answer(None, [2, 2]),
                                              click_answer(None, [3, 3]), click_answer([4, 4], [5, 5]),
                                              "unreadable", click_answer([6, 6])]
    chosen, met = select_candidates([boxes, clicks], ["grounding", "mask"], size, SamplingConfig())
    assert met == [True, True] and all(len(c) == size for c in chosen)
    assert len({boxes[i] for i in chosen[0]}) == size  # one copy of the repeated box, five distinct ones
    actions = Counter(click_action(*(p is not None for p in _clicks(clicks[i]))) for i in chosen[1])
    assert actions == {STOP: 1, POSITIVE: 2, NEGATIVE: 2, BOTH: 1}


def _clicks(text):
    from sam_veteran.plugin.agent.parsing import parse_refinement

    answer = parse_refinement(text)
    return answer.positive, answer.negative


def test_advantages_are_scaled_by_the_global_batch_std_not_per_group():
    import torch

    from sam_veteran.trainer.grpo import normalise_globally

    # two groups of centred rewards: a near-constant group keeps its small advantages small (per-group std would
    # blow them up to +-1), the varied group keeps its relative size
    centred = torch.tensor([0.01, -0.01, 0.01, -0.01, 2.0, -2.0, 1.0, -1.0])
    scaled = normalise_globally(centred)
    assert torch.allclose(scaled, centred / (centred.std() + 1e-4))
    assert scaled[:4].abs().max() < 0.01 and scaled[4] > 1.0
