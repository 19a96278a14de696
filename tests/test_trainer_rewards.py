"""Every reward of the method against hand-computed cases, plain functions and their TRL wrappers."""

import numpy as np
import pytest

from sam_veteran.plugin.agent import FAMILIES
from sam_veteran.trainer.rewards import (AMBIGUOUS, AUXILIARY, GOOD, GROUNDING, MASK, REFINE, AnswerFormatReward,
                                         AuxiliaryPointReward, BoxIoUReward, BoxL1Reward, DecisionReward,
                                         FormatReward, IoUGainReward, RewardConfig, SamIoUReward,
                                         answer_format_reward, auxiliary_reward, box_iou, box_iou_reward,
                                         box_l1_reward, build_reward_functions, decision_reward, format_reward,
                                         iou_gain_reward, mask_box, mask_centre, mask_iou, point_hit,
                                         stop_gain_reward, tolerant_iou)
from sam_veteran.trainer.tasks import TaskRecord, encode_mask
from tests.scripted import box_answer, click_answer


def test_box_iou_hand_computed():
    assert box_iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert box_iou((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0
    assert box_iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert box_iou((0, 0, 0, 0), (0, 0, 0, 0)) == 0.0


def test_box_iou_reward_is_a_hard_threshold_above_one_half():
    assert box_iou_reward((0, 0, 10, 10), (0, 0, 10, 6)) == 1.0  # IoU 0.6
    assert box_iou_reward((0, 0, 10, 10), (0, 0, 10, 5)) == 0.0  # IoU exactly 0.5 is not > 0.5
    assert box_iou_reward((0, 0, 10, 10), (0, 0, 10, 5), threshold=0.4) == 1.0


def test_box_l1_reward_mean_absolute_difference_below_ten_pixels():
    assert box_l1_reward((0, 0, 100, 100), (9, 9, 109, 109)) == 1.0  # mean 9
    assert box_l1_reward((0, 0, 100, 100), (10, 10, 110, 110)) == 0.0  # mean 10 is not < 10
    assert box_l1_reward((0, 0, 100, 100), (0, 0, 100, 139)) == 1.0  # mean 39/4 = 9.75
    assert box_l1_reward((0, 0, 100, 100), (0, 0, 100, 140), threshold=12) == 1.0


def test_mask_iou_ignores_marked_pixels_and_scores_empty_pairs_one():
    pred = np.zeros((4, 4), bool)
    gt = np.zeros((4, 4), bool)
    assert mask_iou(pred, gt) == 1.0
    pred[0, :2] = True  # 2 pixels
    gt[0, 1:3] = True  # 2 pixels, 1 shared
    assert mask_iou(pred, gt) == pytest.approx(1 / 3)
    ignore = np.zeros((4, 4), bool)
    ignore[0, 0] = True
    assert mask_iou(pred, gt, ignore) == pytest.approx(1 / 2)


def test_tolerant_iou_forgives_the_edge_band_only():
    gt = np.zeros((20, 20), bool)
    gt[5:15, 5:15] = True
    grown = np.zeros_like(gt)
    grown[4:16, 4:16] = True  # one pixel larger all round
    assert mask_iou(grown, gt) < 1.0
    assert tolerant_iou(grown, gt, tolerance=2) == 1.0
    far = grown.copy()
    far[0, 0] = True  # a stray pixel far from the edge still counts
    assert tolerant_iou(far, gt, tolerance=2) < 1.0
    assert tolerant_iou(grown, gt, tolerance=0) == mask_iou(grown, gt)


def test_mask_box_and_centre():
    mask = np.zeros((10, 10), bool)
    mask[2:4, 3:7] = True
    assert mask_box(mask) == (3.0, 2.0, 7.0, 4.0)
    assert mask_centre(mask) == (5.0, 3.0)
    assert mask_box(np.zeros((3, 3), bool)) is None


def test_decision_reward_fits_the_case():
    assert decision_reward(stop=True, case=GOOD) == 1.0
    assert decision_reward(stop=False, case=GOOD) == 0.0
    assert decision_reward(stop=True, case=REFINE) == 0.0
    assert decision_reward(stop=False, case=REFINE) == 1.0
    assert decision_reward(stop=True, case=AMBIGUOUS) == decision_reward(stop=False, case=AMBIGUOUS) == 1.0


@pytest.mark.parametrize("before, after, expected", [
    (0.5, 0.5, 0.0), (0.5, 0.4, 0.0), (0.5, 0.55, 1.0), (0.5, 0.6, 1.0), (0.5, 0.61, 2.0), (0.4, 0.9, 2.0),
    (0.3, 0.81, 3.0), (0.0, 1.0, 3.0),
])
def test_iou_gain_reward_tiers(before, after, expected):
    assert iou_gain_reward(before, after) == expected


def test_a_correct_stop_earns_the_maximum_of_four():
    assert decision_reward(True, GOOD) + stop_gain_reward(GOOD) == 4.0
    assert decision_reward(True, REFINE) + stop_gain_reward(REFINE) == 0.0
    assert stop_gain_reward(AMBIGUOUS) == 0.0 and stop_gain_reward(AMBIGUOUS, ambiguous=1.0) == 1.0
    assert stop_gain_reward(REFINE, ambiguous=1.0) == 0.0
    assert decision_reward(False, REFINE) + iou_gain_reward(0.2, 0.9) == 4.0


def test_point_and_auxiliary_rewards_within_fifty_pixels():
    assert point_hit((130, 140), (100, 100))  # distance 50
    assert not point_hit((131, 140), (100, 100))
    assert not point_hit(None, (100, 100))
    # removed area at (10, 10) -> positive click; added area at (200, 200) -> negative click
    assert auxiliary_reward((12, 12), (210, 190), (10, 10), (200, 200)) == 1.0
    assert auxiliary_reward((12, 12), None, (10, 10), (200, 200)) == 0.5
    assert auxiliary_reward((12, 12), (90, 90), (10, 10), (200, 200)) == 0.5  # the negative click missed
    assert auxiliary_reward(None, None, (10, 10), (200, 200)) == 0.0  # a stop finds nothing
    assert auxiliary_reward(None, (12, 12), (10, 10), None) == 0.0  # clicks swapped
    assert auxiliary_reward((12, 12), None, (10, 10), None) == 1.0
    assert auxiliary_reward((12, 12), (50, 50), (10, 10), None) == 0.0  # a spurious negative cancels the hit
    assert auxiliary_reward(None, None, (10, 10), None) == 0.0
    # a clean item (no defect): stopping is the right answer, any click is wrong
    assert auxiliary_reward(None, None, None, None) == 1.0
    assert auxiliary_reward((12, 12), None, None, None) == 0.0
    assert auxiliary_reward(None, (12, 12), None, None) == 0.0


def test_format_rewards():
    good = '<think>the cup</think><answer>{"bbox_2d": [1, 2, 3, 4]}</answer>'
    assert format_reward(good) == 1.0
    assert format_reward("  " + good + "\n") == 1.0
    assert format_reward('<answer>{"bbox_2d": [1, 2, 3, 4]}</answer>') == 0.0
    assert format_reward(good + good) == 0.0
    assert format_reward("preamble " + good) == 0.0
    assert answer_format_reward(good, GROUNDING) == 1.0
    assert answer_format_reward(good, MASK) == 0.0
    assert answer_format_reward('<answer>{"bbox_2d": [[1, 2, 3, 4]]}</answer>', GROUNDING) == 0.0  # repaired
    assert answer_format_reward('<answer>{"bbox_2d": [1, 2, NaN, 4]}</answer>', GROUNDING) == 0.0
    assert answer_format_reward(click_answer(None, None), AUXILIARY) == 1.0


# --- TRL wrappers: coordinates, task routing, segmenter --------------------------------------------------------


def record(task, size=(200, 100), gt_box=(40, 20, 120, 80), filepath="", **fields):
    gt = np.zeros((size[1], size[0]), bool)
    gt[gt_box[1]:gt_box[3], gt_box[0]:gt_box[2]] = True
    return TaskRecord(task=task, sample_id="s", filepath=filepath, query="q", image_size=size, gt_box=gt_box,
                      gt_rle=encode_mask(gt), **fields)


def call(reward, texts, records):
    return reward(prompts=[None] * len(texts), completions=[[{"role": "assistant", "content": t}] for t in texts],
                  completion_ids=[[]] * len(texts), record=records, task=[r.task for r in records])


def test_grounding_wrappers_map_the_family_coordinates():
    family = FAMILIES["qwen2_5_vl"].with_input_size((400, 200))  # x2 in both directions
    config = RewardConfig()
    rec = record(GROUNDING)
    exact = box_answer([80, 40, 240, 160])
    off = box_answer([80 + 24, 40, 240, 160])  # 12 px in the image = 24 px in the view: mean L1 6 px of the view
    further = box_answer([80 + 44, 40, 240, 160])  # mean 11 px of the view
    assert call(BoxIoUReward(family, config), [exact, off, "junk"], [rec] * 3) == [1.0, 1.0, 0.0]
    assert call(BoxL1Reward(family, config), [exact, off, further], [rec] * 3) == [1.0, 1.0, 0.0]
    normalized = FAMILIES["qwen3_vl"]
    assert call(BoxIoUReward(normalized, config), [box_answer([200, 200, 600, 800])], [rec]) == [1.0]


def test_wrappers_score_only_their_task():
    family, config = FAMILIES["qwen2_5_vl"], RewardConfig()
    rows = [record(GROUNDING), record(MASK, case=REFINE), record(AUXILIARY, false_positive_centre=(50.0, 50.0))]
    # (210, 420) in the 840x840 view is (50, 50) in the 200x100 image: the negative click hits the added area
    texts = [box_answer([1, 2, 3, 4]), click_answer([5, 5]), click_answer(None, [210, 420])]
    assert call(BoxIoUReward(family, config), texts, rows)[1:] == [None, None]
    assert call(DecisionReward(family, config), texts, rows) == [None, 1.0, None]
    assert call(AuxiliaryPointReward(family, config), texts, rows) == [None, None, 1.0]
    assert call(FormatReward(family, config), texts, rows) == [1.0, 1.0, 1.0]
    assert call(AnswerFormatReward(family, config), texts, rows) == [1.0, 1.0, 1.0]


def test_auxiliary_wrapper_measures_in_view_pixels():
    family = FAMILIES["qwen2_5_vl"].with_input_size((100, 50))  # half size: 50 view px = 100 image px
    rec = record(AUXILIARY, false_negative_centre=(50.0, 50.0), false_positive_centre=None)
    near = click_answer([25 + 48, 25])  # 48 px of the view (96 px of the image) from the centre (25, 25)
    far = click_answer([25 + 52, 25])
    assert call(AuxiliaryPointReward(family, RewardConfig()), [near, far], [rec, rec]) == [1.0, 0.0]


def test_weights_must_name_known_rewards(tiny_segmenter):
    with pytest.raises(ValueError, match="unknown reward names"):
        build_reward_functions(FAMILIES["qwen2_5_vl"], RewardConfig(weights={"box_iuo": 2.0}), tiny_segmenter)


def test_segmenter_rewards_run_the_segmenter(tmp_path, tiny_segmenter):
    from PIL import Image

    size = (64, 48)
    path = tmp_path / "image.png"
    Image.fromarray(np.full((48, 64, 3), 120, np.uint8)).save(path)
    family = FAMILIES["qwen2_5_vl"].with_input_size(size)
    rec = record(GROUNDING, size=size, gt_box=(10, 10, 40, 30), filepath=str(path))
    box = (10, 10, 40, 30)
    reward = SamIoUReward(family, RewardConfig(), tiny_segmenter)
    expected = mask_iou(tiny_segmenter.segment(tiny_segmenter.encode([np.asarray(Image.open(path))])[0], box).mask,
                        rec.gt_mask())
    assert call(reward, [box_answer(list(box)), "junk"], [rec, rec]) == [pytest.approx(expected), 0.0]

    shown = np.zeros((48, 64), bool)
    mask_rec = record(MASK, size=size, gt_box=(10, 10, 40, 30), filepath=str(path), shown_rle=encode_mask(shown),
                      mask_source="ground_truth", prompt_box=box, case=REFINE)
    gain = IoUGainReward(family, RewardConfig(), tiny_segmenter)
    embedding = tiny_segmenter.encode([np.asarray(Image.open(path))])[0]
    after = tiny_segmenter.segment(embedding, box, [(20.0, 20.0)], [1]).mask
    expected = iou_gain_reward(mask_iou(shown, mask_rec.gt_mask()), mask_iou(after, mask_rec.gt_mask()))
    assert call(gain, [click_answer([20, 20]), click_answer(None, None)], [mask_rec, mask_rec]) == [expected, 0.0]
    good = record(MASK, size=size, gt_box=(10, 10, 40, 30), filepath=str(path), shown_rle=encode_mask(shown),
                  mask_source="ground_truth", prompt_box=box, case=GOOD)
    assert call(gain, [click_answer(None, None)], [good]) == [3.0]
