"""gIoU/cIoU under every convention, against values computed by hand on 4x4 masks."""

import numpy as np
import pytest

from sam_veteran.plugin.metrics import CONVENTIONS, score_crop, score_item, summarize

GT = np.array([[1, 1, 0, 0],
               [1, 1, 0, 0],
               [0, 255, 255, 0],
               [0, 0, 0, 0]], np.uint8)
PRED = np.array([[1, 0, 0, 0],
                 [1, 1, 0, 1],
                 [0, 1, 1, 0],
                 [0, 0, 0, 0]], np.uint8)
EMPTY = np.zeros((4, 4), np.uint8)
ONLY_IGNORE = np.where(GT == 255, 255, 0).astype(np.uint8)


def test_every_convention_is_tested():
    assert set(CONVENTIONS) == {"lisa", "empty_zero", "skip_empty", "ignore_as_background", "seg_zero",
                                "vision_reasoner"}


@pytest.mark.parametrize("convention, expected", [
    # target 4 px; the two predicted pixels on ignore drop out: 4 valid predicted px, 3 shared -> 3 / 5
    ("lisa", (3, 5)), ("empty_zero", (3, 5)), ("skip_empty", (3, 5)),
    # ignore counted as background: 6 predicted px, 3 shared -> 3 / 7
    ("ignore_as_background", (3, 7)),
    # ignore counted as target (the peers' mask.astype(bool)): 6 target px, 6 predicted, 5 shared -> 5 / 7
    ("seg_zero", (5, 7)), ("vision_reasoner", (5, 7)),
])
def test_ignore_region(convention, expected):
    score = score_item(PRED, GT, convention)
    assert (score.intersection, score.union) == expected


@pytest.mark.parametrize("convention", sorted(CONVENTIONS))
def test_empty_and_missing_predictions_and_empty_ground_truth(convention):
    target = 6 if CONVENTIONS[convention].ignore == "target" else 4
    assert (score_item(EMPTY, GT, convention).intersection, score_item(EMPTY, GT, convention).union) == (0, target)
    missing = score_item(None, GT, convention)
    assert (missing.intersection, missing.union, missing.missing) == (0, target, True)
    empty_gt = score_item(PRED, EMPTY, convention)
    assert (empty_gt.intersection, empty_gt.union) == (0, 6)
    assert summarize([empty_gt], convention)["gIoU"] == 0.0 and summarize([empty_gt], convention)["count"] == 1


@pytest.mark.parametrize("convention, giou, count", [
    ("lisa", 1.0, 1), ("empty_zero", 0.0, 1), ("skip_empty", 0.0, 0), ("ignore_as_background", 1.0, 1),
    ("seg_zero", 0.0, 0), ("vision_reasoner", 0.0, 1)])
def test_both_empty(convention, giou, count):
    score = score_item(EMPTY, EMPTY, convention)
    assert (score.intersection, score.union) == (0, 0)
    summary = summarize([score], convention)
    assert (summary["gIoU"], summary["count"]) == (giou, count)
    # a set whose total union is 0 has cIoU 0, as LISA's I / (U + 1e-10) gives (Seg-Zero has no cIoU)
    assert np.isnan(summary["cIoU"]) if convention == "seg_zero" else summary["cIoU"] == 0.0


def test_prediction_only_on_ignore_pixels():
    inside_ignore = (GT == 255).astype(np.uint8)
    lisa = score_item(inside_ignore, ONLY_IGNORE, "lisa")
    assert (lisa.intersection, lisa.union) == (0, 0)
    background = score_item(inside_ignore, ONLY_IGNORE, "ignore_as_background")
    assert (background.intersection, background.union) == (0, 2)


@pytest.mark.parametrize("convention, giou, ciou, count", [
    # items: PRED vs GT (3/5 or 3/7), missing vs GT (0/4), empty vs empty (0/0)
    ("lisa", (0.6 + 0 + 1) / 3, 3 / 9, 3),
    ("empty_zero", 0.6 / 3, 3 / 9, 3),
    ("skip_empty", 0.6 / 2, 3 / 9, 2),
    ("ignore_as_background", (3 / 7 + 0 + 1) / 3, 3 / 11, 3),
    # ignore as target: 5/7, missing vs GT 0/6, empty vs empty left out (Seg-Zero, no cIoU) or 0
    ("seg_zero", (5 / 7 + 0) / 2, None, 2),
    ("vision_reasoner", (5 / 7 + 0 + 0) / 3, 5 / 13, 3),
])
def test_summaries(convention, giou, ciou, count):
    scores = [score_item(PRED, GT, convention), score_item(None, GT, convention), score_item(EMPTY, EMPTY, convention)]
    summary = summarize(scores, convention)
    assert summary["gIoU"] == pytest.approx(giou)
    assert np.isnan(summary["cIoU"]) if ciou is None else summary["cIoU"] == pytest.approx(ciou)
    assert summary["count"] == count


def test_unknown_convention_names_the_choices():
    with pytest.raises(ValueError, match="lisa"):
        score_item(PRED, GT, "coco")


@pytest.mark.parametrize("convention", sorted(CONVENTIONS))
def test_crop_scores_equal_the_pasted_mask(convention, rng):
    for _ in range(30):
        ground_truth = rng.choice(np.array([0, 1, 255], np.uint8), size=(12, 15), p=[0.5, 0.4, 0.1])
        h, w = rng.integers(1, 12), rng.integers(1, 15)
        y, x = rng.integers(0, 12 - h + 1), rng.integers(0, 15 - w + 1)
        crop = rng.random((h, w)) > 0.5
        full = np.zeros((12, 15), bool)
        full[y:y + h, x:x + w] = crop
        assert score_crop(crop, x, y, ground_truth, convention) == score_item(full, ground_truth, convention)
    with pytest.raises(ValueError, match="outside"):
        score_crop(np.ones((3, 3), bool), 14, 0, np.zeros((12, 15), np.uint8))
