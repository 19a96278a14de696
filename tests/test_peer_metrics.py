"""The peers' conventions against ports of the peers' own metric code, on a few hundred random items.

Each port below re-implements what the repository's evaluation does, read from its code:

- LISA ``train_ds.validate()`` with ``utils.intersectionAndUnionGPU(..., K=2, ignore_index=255)``: the prediction
  is set to 255 where the target is 255, class-1 histogram counts give I and U; per item ``I / (U + 1e-5)`` plus 1
  where U == 0 (gIoU, averaged over items); cIoU = ``sum I / (sum U + 1e-10)``.
- Seg-Zero ``evaluation_scripts/evaluation.py`` + ``calculate_iou.py``: the ground truth is ``mask.astype(bool)``
  (``create_reasonseg_hf.py``), ``compute_iou`` returns 0 instead of a pair when the union is 0, so unpacking fails
  and the item is skipped (``continue``); a failed answer is appended with I = 0, U = ``gt.sum()``; the report is
  gIoU only, ``I / U if U > 0 else 0`` per item.
- VisionReasoner ``evaluation/evaluation_segmentation.py`` + ``calculate_iou.py``: boolean masks, ``compute_iou``
  gives (0, 0) for an empty union, a failed item I = 0, U = ``gt.sum()``; per item ``I / U if U > 0 else 0``;
  cIoU = ``sum I / sum U`` (0 when the sum is 0).

A missing prediction (None) stands for the peers' failure path (an answer that could not be read).
"""

import numpy as np
import pytest
import torch

from sam_veteran.plugin.metrics import score_item, summarize


def _lisa_intersection_and_union(output: torch.Tensor, target: torch.Tensor, k=2, ignore_index=255):
    output, target = output.reshape(-1).clone(), target.reshape(-1)
    output[target == ignore_index] = ignore_index
    intersection = output[output == target]
    area_intersection = torch.histc(intersection.float(), bins=k, min=0, max=k - 1)
    area_output = torch.histc(output.float(), bins=k, min=0, max=k - 1)
    area_target = torch.histc(target.float(), bins=k, min=0, max=k - 1)
    return area_intersection, area_output + area_target - area_intersection


def lisa_validate(items):
    """LISA's meters over (prediction, ground truth) items; LISA always predicts, so None is an empty mask."""
    intersection_sum, union_sum, acc_iou_sum = torch.zeros(2), torch.zeros(2), torch.zeros(2)
    for prediction, ground_truth in items:
        prediction = np.zeros_like(ground_truth) if prediction is None else prediction
        output = torch.from_numpy(prediction.astype(bool).astype(np.int32))
        target = torch.from_numpy(ground_truth.astype(np.int32))
        intersection, union = _lisa_intersection_and_union(output, target)
        acc_iou = intersection / (union + 1e-5)
        acc_iou[union == 0] += 1.0
        intersection_sum += intersection
        union_sum += union
        acc_iou_sum += acc_iou
    return {"gIoU": float(acc_iou_sum[1] / len(items)), "cIoU": float((intersection_sum / (union_sum + 1e-10))[1])}


def _peer_compute_iou(mask1, mask2, empty_result):
    intersection = np.logical_and(mask1, mask2).sum()
    union = np.logical_or(mask1, mask2).sum()
    if union == 0:
        return empty_result
    return intersection, union


def seg_zero_evaluate(items):
    outputs = []
    for prediction, ground_truth in items:
        gt_mask = ground_truth.astype(bool)
        if prediction is None:  # the except branch: penalty
            outputs.append((0, int(gt_mask.sum())))
            continue
        try:
            intersection, union = _peer_compute_iou(prediction.astype(bool), gt_mask, 0)
        except TypeError:  # "cannot unpack non-iterable int": the item is skipped
            continue
        outputs.append((int(intersection), int(union)))
    ious = [i / u if u > 0 else 0 for i, u in outputs]
    return {"gIoU": float(np.mean(ious)) if ious else 0.0, "count": len(ious)}


def vision_reasoner_evaluate(items):
    outputs = []
    for prediction, ground_truth in items:
        gt_mask = ground_truth.astype(bool)
        if prediction is None:
            outputs.append((0, int(gt_mask.sum())))
            continue
        outputs.append(tuple(int(v) for v in _peer_compute_iou(prediction.astype(bool), gt_mask, (0, 0))))
    ious = [i / u if u > 0 else 0 for i, u in outputs]
    total_i, total_u = sum(i for i, _ in outputs), sum(u for _, u in outputs)
    return {"gIoU": float(np.mean(ious)), "cIoU": total_i / total_u if total_u > 0 else 0, "count": len(ious)}


def _random_item(rng):
    """A ground truth with target, ignore regions or neither, and a prediction that is random, empty or missing."""
    shape = tuple(rng.integers(3, 14, size=2))
    kind = rng.integers(0, 5)
    ground_truth = np.zeros(shape, np.uint8)
    if kind > 0:
        ground_truth[rng.random(shape) < rng.uniform(0.05, 0.6)] = 1
    if kind in (2, 4):
        ground_truth[rng.random(shape) < 0.2] = 255
    if kind == 3:
        ground_truth[rng.random(shape) < 0.3] = 255
        ground_truth[ground_truth == 1] = 0  # only ignore pixels
    choice = rng.integers(0, 6)
    if choice == 0:
        return None, ground_truth
    if choice == 1:
        return np.zeros(shape, np.uint8), ground_truth
    return (rng.random(shape) < rng.uniform(0.05, 0.7)).astype(np.uint8) * rng.choice([1, 255]), ground_truth


def _item_sets(seed, sets=40, size=12):
    rng = np.random.default_rng(seed)
    out = [[_random_item(rng) for _ in range(rng.integers(1, size))] for _ in range(sets)]
    empty = np.zeros((5, 6), np.uint8)
    out.append([(empty, empty), (None, empty)])  # nothing to find anywhere
    out.append([(None, empty)])
    out.append([(empty, np.where(np.eye(5, 6) > 0, 255, 0).astype(np.uint8))])  # only ignore, empty prediction
    return out


def _ours(items, convention):
    return summarize([score_item(p, g, convention) for p, g in items], convention)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lisa_matches_validate(seed):
    for items in _item_sets(seed):
        ours, theirs = _ours(items, "lisa"), lisa_validate(items)
        assert ours["gIoU"] == pytest.approx(theirs["gIoU"], abs=1e-5)  # LISA's + 1e-5 in each item's denominator
        assert ours["cIoU"] == pytest.approx(theirs["cIoU"], abs=1e-7)


def test_lisa_all_empty_set_has_ciou_zero():
    empty = np.zeros((4, 4), np.uint8)
    assert lisa_validate([(empty, empty)])["cIoU"] == 0.0
    assert _ours([(empty, empty)], "lisa") == {"gIoU": 1.0, "cIoU": 0.0, "count": 1}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_seg_zero_matches_its_evaluation(seed):
    for items in _item_sets(seed):
        ours, theirs = _ours(items, "seg_zero"), seg_zero_evaluate(items)
        assert ours["gIoU"] == pytest.approx(theirs["gIoU"], abs=1e-12)
        assert ours["count"] == theirs["count"]
        assert np.isnan(ours["cIoU"])  # Seg-Zero reports no cIoU


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vision_reasoner_matches_its_evaluation(seed):
    for items in _item_sets(seed):
        ours, theirs = _ours(items, "vision_reasoner"), vision_reasoner_evaluate(items)
        assert ours["gIoU"] == pytest.approx(theirs["gIoU"], abs=1e-12)
        assert ours["cIoU"] == pytest.approx(theirs["cIoU"], abs=1e-12)
        assert ours["count"] == theirs["count"]


def test_the_cases_that_tell_the_conventions_apart():
    empty = np.zeros((4, 4), np.uint8)
    ignore_only = np.full((4, 4), 255, np.uint8)
    on_ignore = np.ones((4, 4), np.uint8)
    # pixels marked 255 count as target for the peers' scripts, drop out for LISA
    assert seg_zero_evaluate([(on_ignore, ignore_only)])["gIoU"] == _ours([(on_ignore, ignore_only)], "seg_zero")[
        "gIoU"] == 1.0
    assert _ours([(on_ignore, ignore_only)], "lisa")["gIoU"] == 1.0 and lisa_validate([(on_ignore, ignore_only)])[
        "gIoU"] == pytest.approx(1.0)
    # empty target: Seg-Zero skips an empty prediction but scores a missing one 0
    assert _ours([(empty, empty)], "seg_zero")["count"] == seg_zero_evaluate([(empty, empty)])["count"] == 0
    assert _ours([(None, empty)], "seg_zero") == {"gIoU": 0.0, "cIoU": pytest.approx(np.nan, nan_ok=True),
                                                  "count": 1}
    assert _ours([(empty, empty)], "vision_reasoner")["gIoU"] == vision_reasoner_evaluate([(empty, empty)])[
        "gIoU"] == 0.0


def test_evaluate_tells_missing_from_empty_predictions_and_keeps_that_when_reloaded(tmp_path):
    import uuid

    import fiftyone as fo

    from sam_veteran.plugin.evaluation import evaluate

    empty = np.zeros((6, 8), np.uint8)
    found = empty.copy()
    found[1:3, 2:5] = 1
    dataset = fo.Dataset(f"peer-metrics-{uuid.uuid4().hex[:8]}")
    dataset.add_samples([fo.Sample(filepath=str(tmp_path / f"{i}.png"), ground_truth=fo.Segmentation(mask=empty),
                                   pred=None if prediction is None else fo.Segmentation(mask=prediction))
                         for i, prediction in enumerate([empty, None, found])])
    items = [(empty, empty), (None, empty), (found, empty)]
    for convention, port in (("seg_zero", seg_zero_evaluate), ("vision_reasoner", vision_reasoner_evaluate)):
        results = evaluate(dataset, "pred", eval_key=f"e_{convention}", protocol=convention)
        for metrics in (results.metrics(), dataset.load_evaluation_results(f"e_{convention}").metrics()):
            assert (metrics["gIoU"], metrics["count"]) == (port(items)["gIoU"], port(items)["count"])
    assert evaluate(dataset, "pred", eval_key="e_lisa").metrics()["gIoU"] == pytest.approx(2 / 3)
    assert dataset.values("e_seg_zero_iou") == [None, 0.0, 0.0]  # the empty-vs-empty item is left out
    dataset.delete()
