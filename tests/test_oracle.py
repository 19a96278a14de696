"""The simulated user: the protocol's click placement, and as a policy through the real parser and loop."""

import numpy as np
import pytest

from sam_veteran.plugin.agent import Agent, AgentConfig, AgentInput, EndReason
from sam_veteran.plugin.agent.clicks import first_click, next_click
from sam_veteran.plugin.agent.oracle import OraclePolicy
from sam_veteran.plugin.agent.segmenters import SamSegmenter, build_sam
from sam_veteran.plugin.metrics import clicks_to_reach, mean_clicks_to_reach


def test_click_goes_to_the_interior_of_the_largest_error():
    gt = np.zeros((40, 60), bool)
    gt[5:35, 5:25] = True  # a 20x30 object
    pred = gt.copy()
    pred[5:15, 5:25] = False  # a 20x10 miss
    pred[30:34, 40:44] = True  # a smaller false positive
    (x, y), positive = next_click(pred, gt)
    assert positive and 5 <= x <= 25 and 5 <= y < 15
    assert abs(y - 10) <= 1.5  # farthest from the region's boundary: its middle row
    pred[5:15, 5:25] = True
    (x, y), positive = next_click(pred, gt)
    assert not positive and 40 <= x <= 44 and 30 <= y <= 34
    assert next_click(gt, gt) is None


def test_ignore_pixels_are_never_an_error_and_the_first_click_is_central():
    gt = np.zeros((20, 20), bool)
    gt[4:16, 4:16] = True
    ignore = np.zeros_like(gt)
    ignore[4:16, 4:10] = True
    pred = gt & ~ignore
    assert next_click(pred, gt, ignore) is None
    assert first_click(gt) == (pytest.approx(10, abs=1), pytest.approx(10, abs=1))


def test_noc_counts_clicks_until_the_threshold_and_caps_failures():
    assert clicks_to_reach([0.5, 0.8, 0.86, 0.91], [0, 1, 2, 3], 0.85) == 2
    assert clicks_to_reach([0.95], [0], 0.9) == 0
    assert clicks_to_reach([0.1, 0.2], [0, 1], 0.9) == 20
    assert mean_clicks_to_reach([([0.9], [0]), ([0.1], [0])], 0.85) == 10.0


def _scene():
    image = np.full((48, 64, 3), 120, np.uint8)
    gt = np.zeros((48, 64), np.uint8)
    gt[10:30, 20:44] = 1
    image[gt > 0] = (200, 30, 30)
    return image, gt


def test_oracle_policy_runs_the_loop_from_the_ground_truth():
    image, gt = _scene()
    agent = Agent(OraclePolicy(stop_iou=1.01), SamSegmenter(build_sam("tiny"), device="cpu"), AgentConfig(max_steps=2))
    trace = agent.run([AgentInput(image, "the red box", gt)])[0]
    assert trace.steps[0].box == pytest.approx((20.0, 10.0, 44.0, 30.0), abs=0.01)
    assert [s.action.value in ("positive", "negative") for s in trace.steps[1:]] == [True, True]
    for step in trace.steps[1:]:
        click = step.positive or step.negative
        assert 0 <= click[0] < 64 and 0 <= click[1] < 48
    assert trace.end_reason is EndReason.STEP_CAP


def test_oracle_stops_on_a_good_mask_and_fails_a_sample_without_ground_truth():
    image, gt = _scene()
    agent = Agent(OraclePolicy(stop_iou=0.0), SamSegmenter(build_sam("tiny"), device="cpu"),
                  AgentConfig(max_steps=3))
    good, missing = agent.run([AgentInput(image, "the red box", gt), AgentInput(image, "the red box")])
    assert good.end_reason is EndReason.AGENT_STOPPED and good.num_steps == 1
    assert missing.end_reason is EndReason.INVALID_INPUT and "no ground truth" in missing.error
    wrong = agent.run([AgentInput(image, "the red box", gt[:10])])[0]
    assert wrong.end_reason is EndReason.INVALID_INPUT and "ground-truth mask is 64x10" in wrong.error
