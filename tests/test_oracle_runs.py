"""`policy="oracle"` (the simulated user) through FiftyOne: `apply_model` and `run_agent` hand it each sample's
ground truth; a sample without one fails alone, with the field named."""

import uuid

import fiftyone as fo
import numpy as np
import pytest
from PIL import Image

import sam_veteran


@pytest.fixture
def scenes_dataset(tmp_path):
    from sam_veteran.plugin.scenes import make_scenes

    dataset = fo.Dataset(f"oracle-{uuid.uuid4().hex}")
    samples = []
    for i, scene in enumerate(make_scenes("test", 3)):
        path = tmp_path / f"scene_{i}.png"
        Image.fromarray(scene.image).save(path)
        samples.append(fo.Sample(filepath=str(path), query=scene.query, ground_truth=fo.Segmentation(mask=scene.mask)))
    samples[-1]["ground_truth"] = None
    dataset.add_samples(samples)
    dataset.compute_metadata()
    yield dataset
    dataset.delete()


def _tight_box(mask):
    ys, xs = np.nonzero(mask)
    return [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


@pytest.mark.parametrize("runner", ["apply_model", "run_agent"])
def test_oracle_boxes_are_the_ground_truths_and_a_sample_without_one_fails(scenes_dataset, tiny_models, runner):
    segmenter = str(tiny_models["segmenter"])
    if runner == "apply_model":
        model = sam_veteran.SamVeteranModel(policy="oracle", segmenter=segmenter, max_steps=2, device="cpu")
        scenes_dataset.apply_model(model, label_field="oracle", prompt_field="query", batch_size=2)
    else:
        sam_veteran.run_agent(scenes_dataset, policy="oracle", segmenter=segmenter, max_steps=2, device="cpu",
                              label_field="oracle", batch_size=2)
    first, second, third = scenes_dataset.values("oracle_mask")
    for sample, label in zip(scenes_dataset.head(2), (first, second)):
        assert label.end_reason in ("agent_stopped", "step_cap") and label.num_steps >= 1
        step0 = [d for d in sample["oracle_steps"].detections if d.step == 0][0]
        width, height = sample.metadata.width, sample.metadata.height
        x, y, w, h = step0.prompt_box
        box = [x * width, y * height, (x + w) * width, (y + h) * height]
        assert np.allclose(box, _tight_box(sample.ground_truth.mask), atol=0.05)
    assert third.end_reason == "invalid_input" and "no ground truth in field 'ground_truth'" in third.error


def test_evaluation_reports_noc_from_the_steps_clicks(scenes_dataset, tiny_models):
    from sam_veteran.plugin.panels.evaluation import summary_markdown

    view = scenes_dataset.limit(2)
    sam_veteran.run_agent(view, policy="oracle", segmenter=str(tiny_models["segmenter"]), max_steps=3,
                          device="cpu", label_field="oracle", batch_size=2)
    results = sam_veteran.evaluate(view, "oracle", eval_key="noc")
    ious, clicks = results.step_ious, results.step_clicks
    assert all(c == list(range(len(i))) for i, c in zip(ious, clicks))  # the simulated user clicks once a step
    expected = []
    for row in ious:
        reached = [k for k, v in enumerate(row) if v >= 0.85]
        expected.append(reached[0] if reached else 20)
    assert results.noc()["NoC@85"] == pytest.approx(np.mean(expected))
    assert results.report()["noc"] == results.noc()
    assert "NoC@90 (clicks, cap 20)" in summary_markdown({"noc": scenes_dataset.load_evaluation_results("noc")})
