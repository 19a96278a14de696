"""`evaluate` as a FiftyOne evaluation run, on agent labels made from hand-written traces with known IoUs."""

import fiftyone as fo
import numpy as np
import pytest

from sam_veteran.plugin.evaluation import evaluate
from eval_data import make_agent_dataset


@pytest.fixture
def agent_dataset(tmp_path):
    dataset = make_agent_dataset(tmp_path)
    yield dataset
    dataset.delete()


def test_agent_run_is_a_fiftyone_evaluation(agent_dataset):
    results = evaluate(agent_dataset, "veteran", eval_key="eval")
    assert agent_dataset.list_evaluations() == ["eval"]
    info = agent_dataset.get_evaluation_info("eval")
    assert info.config.protocol == "lisa" and info.config.steps_field == "veteran_steps"

    assert results.metrics() == {"gIoU": pytest.approx((1 + 0.9 + 0 + 1) / 4), "cIoU": pytest.approx(38 / 60),
                                 "count": 4}
    assert agent_dataset.values("eval_iou") == pytest.approx([1.0, 0.9, 0.0, 1.0])
    step_ious = agent_dataset.values("eval_step_ious")
    assert step_ious[0] == pytest.approx([0.6, 1.0]) and step_ious[1] == pytest.approx([0.5, 2 / 3, 0.5, 0.9])
    assert step_ious[2] == [] and step_ious[3] == [1.0]

    curve = results.step_curve()
    assert [c["gIoU"] for c in curve] == pytest.approx([2.1 / 4, (2 + 2 / 3) / 4, 2.5 / 4, 2.9 / 4])
    assert [c["cIoU"] for c in curve] == pytest.approx([32 / 80, 40 / 70, 30 / 60, 38 / 60])
    assert [c["refined"] for c in curve] == [3, 2, 1, 1]
    stops = results.stop_rates()
    assert [s["stopped"] for s in stops] == [1, 1, 0, 0]
    assert [s["cumulative_share"] for s in stops] == [0.25, 0.5, 0.5, 0.5]
    split = results.by_query_type()
    assert split["sentence"] == {"gIoU": 0.5, "cIoU": 0.5, "count": 2}
    assert split["phrase"]["gIoU"] == pytest.approx(0.95) and split["phrase"]["cIoU"] == pytest.approx(0.9)
    assert sum(b["count"] for b in results.histogram()) == 4 and results.histogram()[-1]["count"] == 3

    agent_dataset.clear_cache()
    reloaded = agent_dataset.load_evaluation_results("eval", cache=False)
    assert reloaded is not results and reloaded.report() == results.report()


@pytest.mark.parametrize("protocol, giou, count, last_iou", [
    ("empty_zero", 1.9 / 4, 4, 0.0), ("skip_empty", 1.9 / 3, 3, None)])
def test_conventions_change_empty_items(agent_dataset, protocol, giou, count, last_iou):
    results = evaluate(agent_dataset, "veteran_mask", eval_key="other", protocol=protocol)
    assert results.metrics() == {"gIoU": pytest.approx(giou), "cIoU": pytest.approx(38 / 60), "count": count}
    assert agent_dataset.values("other_iou")[3] == last_iou


def test_ignore_as_background_counts_ignore_pixels(agent_dataset):
    evaluate(agent_dataset, "veteran", eval_key="bg", protocol="ignore_as_background")
    assert agent_dataset.values("bg_step_ious")[0] == pytest.approx([0.6, 20 / 24])


def test_plain_segmentation_field_rename_overwrite_and_delete(agent_dataset):
    agent_dataset.clone_sample_field("veteran_mask", "pred")
    results = evaluate(agent_dataset, "pred", eval_key="plain")
    assert results.step_curve() == [] and results.stop_rates() == []
    assert not agent_dataset.has_field("plain_step_ious")
    evaluate(agent_dataset.limit(2), "pred", eval_key="plain")  # overwrite on a view
    assert agent_dataset.load_evaluation_results("plain").metrics()["count"] == 2
    assert agent_dataset.values("plain_iou")[:2] == pytest.approx([1.0, 0.9])
    agent_dataset.rename_evaluation("plain", "renamed")
    assert agent_dataset.has_field("renamed_iou") and not agent_dataset.has_field("plain_iou")
    agent_dataset.delete_evaluation("renamed")
    assert not agent_dataset.has_field("renamed_iou") and agent_dataset.list_evaluations() == []


def test_bad_samples_are_named_and_nothing_is_written(agent_dataset):
    evaluate(agent_dataset, "veteran", eval_key="eval")
    sample = agent_dataset.last()
    sample["veteran_mask"] = fo.Segmentation(mask=np.zeros((3, 3), np.uint8))
    sample.save()
    with pytest.raises(ValueError, match=f"sample {sample.id}.*3x3"):
        evaluate(agent_dataset, "veteran", eval_key="eval")
    sample["ground_truth"] = None
    sample.save()
    with pytest.raises(ValueError, match=f"sample {sample.id} has no ground_truth"):
        evaluate(agent_dataset, "veteran", eval_key="second")
    assert agent_dataset.list_evaluations() == ["eval"]
    assert agent_dataset.values("eval_iou") == pytest.approx([1.0, 0.9, 0.0, 1.0])
    with pytest.raises(ValueError, match="not a Segmentation field"):
        evaluate(agent_dataset, "is_sentence")
    with pytest.raises(ValueError, match="unknown protocol"):
        evaluate(agent_dataset, "veteran", protocol="coco")


def test_masks_on_disk_are_read(agent_dataset, tmp_path):
    from PIL import Image

    sample = agent_dataset.first()
    path = tmp_path / "gt.png"
    Image.fromarray(sample.ground_truth.mask).save(path)
    sample["ground_truth"] = fo.Segmentation(mask_path=str(path))
    sample.save()
    results = evaluate(agent_dataset, "veteran", eval_key="disk")
    assert agent_dataset.values("disk_step_ious")[0] == pytest.approx([0.6, 1.0])
    assert results.metrics()["gIoU"] == pytest.approx(2.9 / 4)
