import json
import math

import pytest
from hypothesis import given, strategies as st

from sam_veteran.plugin.agent.parsing import AnswerError, parse_grounding, parse_refinement

finite = st.floats(allow_nan=False, allow_infinity=False, min_value=-1e6, max_value=1e6)


@given(st.lists(finite, min_size=4, max_size=4), st.text(max_size=50).filter(lambda t: "<" not in t))
def test_any_well_formed_box_round_trips(box, reasoning):
    parsed = parse_grounding(f"<think>{reasoning}</think><answer>{json.dumps({'bbox_2d': box})}</answer>")
    assert parsed.box == tuple(box)
    assert parsed.reasoning == reasoning.strip()


@given(st.one_of(st.none(), st.lists(finite, min_size=2, max_size=2)),
       st.one_of(st.none(), st.lists(finite, min_size=2, max_size=2)))
def test_any_well_formed_click_answer_round_trips(positive, negative):
    text = f"<answer>{json.dumps({'positive_point': positive, 'negative_point': negative})}</answer>"
    parsed = parse_refinement(text)
    assert parsed.positive == (tuple(positive) if positive else None)
    assert parsed.negative == (tuple(negative) if negative else None)
    assert parsed.stop == (positive is None and negative is None)


@given(st.text(max_size=200))
def test_arbitrary_text_parses_or_raises_answer_error(text):
    for parse in (parse_grounding, parse_refinement):
        try:
            parsed = parse(text)
        except AnswerError:
            continue
        for value in (parsed.box or ()) + (parsed.positive or ()) + (parsed.negative or ()):
            assert math.isfinite(value)


def test_truncated_answer_without_closing_tag_is_read():
    parsed = parse_grounding('<think>the cup</think><answer>{"bbox_2d": [1, 2, 30, 40]}')
    assert parsed.box == (1, 2, 30, 40)
    assert any("unclosed" in note for note in parsed.notes)


def test_truncated_json_is_an_error():
    with pytest.raises(AnswerError, match="JSON"):
        parse_grounding('<answer>{"bbox_2d": [1, 2, 3')


def test_nested_and_repeated_values_use_the_first():
    parsed = parse_grounding('<answer>{"bbox_2d": [[1, 2, 3, 4], [5, 6, 7, 8]]}</answer>')
    assert parsed.box == (1, 2, 3, 4)
    assert "first was used" in parsed.notes[0]
    parsed = parse_refinement('<answer>{"positive_point": [[5, 6]], "negative_point": null}</answer>')
    assert parsed.positive == (5, 6) and "unwrapped" in parsed.notes[0]


def test_repeated_answer_blocks_use_the_last():
    text = '<answer>{"bbox_2d": [1, 1, 2, 2]}</answer> wait <answer>{"bbox_2d": [3, 3, 9, 9]}</answer>'
    parsed = parse_grounding(text)
    assert parsed.box == (3, 3, 9, 9) and "2 answer blocks" in parsed.notes[0]


@pytest.mark.parametrize("text", [
    'no tags at all',
    '<answer>{"bbox_2d": [NaN, 1, 2, 3]}</answer>',
    '<answer>{"bbox_2d": [Infinity, 1, 2, 3]}</answer>',
    '<answer>{"bbox_2d": [1e999, 1, 2, 3]}</answer>',
    '<answer>{"bbox_2d": [1, 2, 3]}</answer>',
    '<answer>{"bbox_2d": ["1", 2, 3, 4]}</answer>',
    '<answer>{"bbox_2d": [true, 2, 3, 4]}</answer>',
    '<answer>{"bbox_2d": null}</answer>',
    '<answer>{"point": [1, 2]}</answer>',
    '<answer>[1, 2, 3, 4]</answer>',
])
def test_unusable_boxes_are_errors(text):
    with pytest.raises(AnswerError):
        parse_grounding(text)


def test_refinement_needs_a_decision():
    with pytest.raises(AnswerError, match="neither"):
        parse_refinement("<answer>{}</answer>")
    assert parse_refinement('<answer>{"positive_point": null}</answer>').stop


def test_code_fences_and_peer_keys_are_accepted():
    parsed = parse_grounding('<answer>```json\n{"bbox": [1, 2, 3, 4]}\n```</answer>')
    assert parsed.box == (1, 2, 3, 4)
    parsed = parse_refinement('<answer>{"points_1": [1, 2], "points_2": [3, 4]}</answer>')
    assert (parsed.positive, parsed.negative) == ((1, 2), (3, 4))
