import numpy as np
import pytest

from sam_veteran.plugin.agent import Action, Agent, AgentConfig, AgentInput, EndReason, FAMILIES
from scripted import ScriptedPolicy, box_answer, click_answer


def _image(height=300, width=400, seed=0):
    return np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)


@pytest.fixture
def encoder_calls(tiny_segmenter):
    calls = []
    handle = tiny_segmenter.sam.image_encoder.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    yield calls
    handle.remove()


def test_box_then_clicks_then_stop(tiny_segmenter, encoder_calls):
    def answers(query, step, sampled):
        return {0: box_answer([84, 84, 420, 630]), 1: click_answer(positive=[420, 420]),
                2: click_answer(positive=[100, 100], negative=[700, 700])}.get(step, click_answer())

    policy = ScriptedPolicy(answers)
    (trace,) = Agent(policy, tiny_segmenter, AgentConfig(max_steps=3)).run([AgentInput(_image(), "the cat")])
    assert [s.action for s in trace.steps] == [Action.BOX, Action.POSITIVE, Action.POSITIVE_AND_NEGATIVE,
                                                Action.STOP]
    assert trace.end_reason is EndReason.AGENT_STOPPED and trace.stopped_by_agent
    # 840x840 policy pixels map back onto the 400x300 image
    assert trace.box == pytest.approx((40, 30, 200, 225))
    assert trace.clicks == [(1, pytest.approx((200, 150)), True), (2, pytest.approx((47.62, 35.71), abs=0.01), True),
                            (2, pytest.approx((333.33, 250), abs=0.01), False)]
    assert trace.num_steps == 3 and trace.mask.shape == (300, 400)
    assert all(s.score is not None for s in trace.mask_steps)
    assert trace.steps[0].reasoning == "it is there"
    assert encoder_calls == [1]  # one encoder pass for four policy steps


def test_step_cap_ends_the_trace(tiny_segmenter):
    policy = ScriptedPolicy(lambda q, step, s: box_answer([0, 0, 400, 400]) if step == 0
                            else click_answer(negative=[10, 10]))
    traces = Agent(policy, tiny_segmenter, AgentConfig(max_steps=2)).run([AgentInput(_image(), "a")])
    assert traces[0].end_reason is EndReason.STEP_CAP and traces[0].num_steps == 3
    assert len(policy.calls) == 3


def test_max_steps_zero_is_box_only(tiny_segmenter):
    policy = ScriptedPolicy(lambda q, step, s: box_answer([0, 0, 400, 400]))
    (trace,) = Agent(policy, tiny_segmenter, AgentConfig(max_steps=0)).run([AgentInput(_image(), "a")])
    assert trace.end_reason is EndReason.STEP_CAP and trace.num_steps == 1


def test_batch_advances_together_and_finished_samples_drop_out(tiny_segmenter, encoder_calls):
    stops_after = {"a": 0, "b": 1, "c": 3}

    def answers(query, step, sampled):
        if step == 0:
            return box_answer([10, 10, 500, 500])
        return click_answer() if step > stops_after[query] else click_answer(positive=[200, 200])

    policy = ScriptedPolicy(answers)
    items = [AgentInput(_image(seed=i), q) for i, q in enumerate("abc")]
    traces = Agent(policy, tiny_segmenter, AgentConfig(max_steps=3)).run(items)
    assert policy.batch_sizes == [3, 3, 2, 1]
    assert [t.num_steps for t in traces] == [1, 2, 4]
    assert [t.end_reason for t in traces] == [EndReason.AGENT_STOPPED, EndReason.AGENT_STOPPED, EndReason.STEP_CAP]
    assert encoder_calls == [3]  # the whole batch in one encoder pass (encode_batch_size 4)


def test_unreadable_answer_is_retried_once_with_sampling(tiny_segmenter):
    policy = ScriptedPolicy(lambda q, step, sampled: box_answer([1, 1, 300, 300]) if sampled else "I think a cat")
    (trace,) = Agent(policy, tiny_segmenter, AgentConfig(max_steps=0)).run([AgentInput(_image(), "a")])
    assert trace.num_steps == 1 and "retry 1 with sampling" in trace.steps[0].notes[0]
    assert [c[2] for c in policy.calls] == [False, True]


def test_parse_failure_ends_trace_and_keeps_the_last_mask(tiny_segmenter):
    policy = ScriptedPolicy(lambda q, step, s: box_answer([1, 1, 300, 300]) if step == 0 else "<answer>{oops")
    (trace,) = Agent(policy, tiny_segmenter, AgentConfig(max_steps=3)).run([AgentInput(_image(), "a")])
    assert trace.end_reason is EndReason.PARSE_FAILURE and "JSON" in trace.error
    assert trace.num_steps == 1 and trace.mask is trace.steps[0].mask
    assert len(trace.steps) == 2 and trace.steps[1].text == "<answer>{oops"


def test_bad_answers_are_repaired_or_recorded(tiny_segmenter):
    answers = {
        "inverted": box_answer([600, 600, 100, 100]),
        "outside": box_answer([-50, -50, 2000, 2000]),
        "empty": box_answer([900, 900, 1000, 1000]),
        "nan": '<answer>{"bbox_2d": [NaN, 1, 2, 3]}</answer>',
    }
    policy = ScriptedPolicy(lambda q, step, s: answers[q] if step == 0 else click_answer(positive=[-5, 5000]))
    items = [AgentInput(_image(), q) for q in answers]
    inverted, outside, empty, nan = Agent(policy, tiny_segmenter, AgentConfig(max_steps=1)).run(items)
    assert "inverted box corners swapped" in inverted.steps[0].notes
    assert inverted.box == pytest.approx((100 * 400 / 840, 100 * 300 / 840, 600 * 400 / 840, 600 * 300 / 840))
    assert outside.box == (0, 0, 400, 300) and "box clamped into the image" in outside.steps[0].notes
    assert outside.clicks[0][1] == (0, 299) and "positive point clamped into the image" in outside.steps[1].notes
    assert empty.end_reason is EndReason.PARSE_FAILURE and "no area" in empty.error
    assert nan.end_reason is EndReason.PARSE_FAILURE and empty.mask.shape == (300, 400)


def test_bad_inputs_end_their_trace_without_stopping_the_batch(tiny_segmenter):
    policy = ScriptedPolicy(lambda q, step, s: box_answer([0, 0, 840, 840]) if step == 0 else click_answer())
    items = [AgentInput(_image(), ""), AgentInput(_image(), "   "), AgentInput(np.zeros((5, 5, 2)), "a"),
             AgentInput(_image(1, 1), "tiny"), AgentInput((_image(20, 30)[..., 0].astype(np.uint16) * 257), "gray16"),
             AgentInput(np.dstack([_image(20, 30), np.full((20, 30), 255, np.uint8)]), "rgba")]
    traces = Agent(policy, tiny_segmenter).run(items)
    assert [t.end_reason for t in traces[:3]] == [EndReason.INVALID_INPUT] * 3
    assert traces[0].error == "the query is empty" and "channels" in traces[2].error
    assert all(t.end_reason is EndReason.AGENT_STOPPED for t in traces[3:])
    assert traces[3].mask.shape == (1, 1) and traces[4].mask.shape == (20, 30)


def test_the_policy_sees_the_mask_overlay(tiny_segmenter):
    policy = ScriptedPolicy(lambda q, step, s: box_answer([0, 0, 840, 840]) if step == 0 else click_answer())
    Agent(policy, tiny_segmenter, AgentConfig(input_size=(112, 112))).run([AgentInput(_image(), "a")])
    first, second = (np.asarray(image) for image in policy.images)
    assert first.shape == second.shape == (112, 112, 3)
    mask_drawn = (second != first).any()
    assert mask_drawn == policy_mask_nonempty(tiny_segmenter)


def policy_mask_nonempty(segmenter):
    (embedding,) = segmenter.encode([_image()])
    return bool(segmenter.segment(embedding, (0, 0, 400, 300)).mask.any())


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])
def test_family_convention_maps_clicks(tiny_segmenter, family):
    policy = ScriptedPolicy(lambda q, step, s: box_answer([0, 0, 420, 420]) if step == 0
                            else click_answer(positive=[420, 420]), family=FAMILIES[family])
    (trace,) = Agent(policy, tiny_segmenter, AgentConfig(max_steps=1)).run([AgentInput(_image(), "a")])
    grid = 840 if family == "qwen2_5_vl" else 1000
    assert trace.box == pytest.approx((0, 0, 420 * 400 / grid, 420 * 300 / grid))
    assert trace.clicks[0][1] == pytest.approx((420 * 400 / grid, 420 * 300 / grid))
