"""Answer to action: one mapping (family coordinates -> image pixels, repaired and noted) for the loop and the
trainer's rewards, so what is trained is what runs."""

import numpy as np
import pytest

from sam_veteran.plugin.agent import FAMILIES, Action, Agent, AgentConfig, AgentInput
from sam_veteran.plugin.agent.actions import answer_box, answer_clicks, click_action
from sam_veteran.plugin.agent.parsing import parse_grounding, parse_refinement
from sam_veteran.trainer.rewards import GROUNDING, RewardConfig, SamIoUReward, mask_iou
from sam_veteran.trainer.tasks import TaskRecord, encode_mask
from tests.scripted import ScriptedPolicy, box_answer, click_answer

FAMILY = FAMILIES["qwen2_5_vl"].with_input_size((64, 48))  # view pixels = image pixels


def test_box_repairs_are_noted_and_an_empty_box_is_an_error():
    swapped = answer_box(parse_grounding(box_answer([40, 30, 10, 10])), FAMILY, (64, 48))
    assert swapped.box == (10, 10, 40, 30) and swapped.notes == ("inverted box corners swapped",)
    clamped = answer_box(parse_grounding(box_answer([-5, 10, 90, 30])), FAMILY, (64, 48))
    assert clamped.box == (0, 10, 64, 30) and clamped.notes == ("box clamped into the image",)
    outside = answer_box(parse_grounding(box_answer([70, 10, 90, 30])), FAMILY, (64, 48))
    assert outside.box is None and "no area inside the image" in outside.error
    qwen3 = answer_box(parse_grounding(box_answer([0, 0, 500, 1000])), FAMILIES["qwen3_vl"], (64, 48))
    assert qwen3.box == (0, 0, 32, 48) and qwen3.notes == ()


def test_clicks_are_clamped_onto_the_image_and_name_their_action():
    clicks = answer_clicks(parse_refinement(click_answer([70, 10], [5, 5])), FAMILY, (64, 48))
    assert (clicks.positive, clicks.negative) == ((63, 10), (5, 5))
    assert clicks.notes == ("positive point clamped into the image",)
    assert clicks.action is Action.POSITIVE_AND_NEGATIVE and clicks.points == [(63, 10), (5, 5)]
    assert clicks.labels == [1, 0]
    assert answer_clicks(parse_refinement(click_answer()), FAMILY, (64, 48)).action is Action.STOP
    assert [click_action(p, n) for p, n in ((True, False), (False, True))] == [Action.POSITIVE, Action.NEGATIVE]


def test_the_reward_prompts_the_segmenter_with_the_box_the_agent_uses(tmp_path, tiny_segmenter):
    from PIL import Image

    image = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    path = tmp_path / "image.png"
    Image.fromarray(image).save(path)
    gt = np.zeros((48, 64), bool)
    gt[10:30, 10:40] = True
    record = TaskRecord(task=GROUNDING, sample_id="s", filepath=str(path), query="the thing", image_size=(64, 48),
                        gt_box=(10, 10, 40, 30), gt_rle=encode_mask(gt))
    text = box_answer([-20, 10, 40, 90])  # partly outside the image: the agent clamps it to (0, 10, 40, 48)
    policy = ScriptedPolicy(lambda query, step, sampled: text, family=FAMILY)
    (trace,) = Agent(policy, tiny_segmenter, AgentConfig(max_steps=0)).run([AgentInput(image, "the thing")])
    assert trace.box == (0, 10, 40, 48)
    reward = SamIoUReward(FAMILY, RewardConfig(), tiny_segmenter)
    [score] = reward(prompts=[None], completions=[[{"role": "assistant", "content": text}]], completion_ids=[[]],
                     record=[record], task=[GROUNDING])
    assert score == pytest.approx(mask_iou(trace.mask, gt))
