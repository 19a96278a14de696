import fiftyone as fo
import numpy as np
import pytest
from PIL import Image

from agent_data import box_then_click, make_dataset, scripted_policy
from sam_veteran.plugin.agent import Agent, AgentConfig
from sam_veteran.plugin.model import SamVeteranModel


@pytest.fixture
def dataset(tmp_path):
    ds = make_dataset(tmp_path, 12)
    yield ds
    ds.delete()


def scripted_model(segmenter, answers=None):
    policy = scripted_policy() if answers is None else scripted_policy(answers)
    return policy, SamVeteranModel(agent=Agent(policy, segmenter, AgentConfig(max_steps=3)))


def test_apply_model_writes_the_documented_schema(dataset, tiny_segmenter):
    policy, model = scripted_model(tiny_segmenter)
    dataset.apply_model(model, label_field="veteran", prompt_field="query", batch_size=4)
    assert policy.batch_sizes[:3] == [4, 4, 4]  # whole batches reached the policy at once
    schema = dataset.get_field_schema()
    assert schema["veteran_mask"].document_type is fo.Segmentation
    assert schema["veteran_steps"].document_type is fo.Detections
    assert schema["veteran_clicks"].document_type is fo.Keypoints
    for sample in dataset:
        height, width = np.asarray(Image.open(sample.filepath)).shape[:2]
        mask = sample["veteran_mask"]
        assert mask.mask.shape == (height, width) and set(np.unique(mask.mask)) <= {0, 1}
        assert mask.num_steps == 2 and mask.stopped_by_agent and mask.end_reason == "agent_stopped"
        assert mask.error is None
        steps = sample["veteran_steps"].detections
        assert [d.step for d in steps] == [0, 1] and [d.action for d in steps] == ["box", "positive"]
        assert all(d.reasoning for d in steps) and all(isinstance(d.confidence, float) for d in steps)
        assert steps[0].prompt_box == pytest.approx((0.1, 0.1, 0.4, 0.4))
        for detection in steps:  # each step's mask, pasted at its box, lies inside the image
            x, y, w, h = detection.bounding_box
            assert detection.mask.shape == (round(h * height), round(w * width))
            assert 0 <= x and 0 <= y and x + w <= 1 + 1e-9 and y + h <= 1 + 1e-9
        pasted = np.zeros((height, width), bool)
        x, y = round(steps[-1].bounding_box[0] * width), round(steps[-1].bounding_box[1] * height)
        pasted[y:y + steps[-1].mask.shape[0], x:x + steps[-1].mask.shape[1]] = steps[-1].mask
        assert np.array_equal(pasted, mask.mask.astype(bool))  # the final mask is the last step's
        (click,) = sample["veteran_clicks"].keypoints
        assert click.label == "positive" and click.step == 1
        assert click.points[0] == pytest.approx((0.5, 0.25))


def test_relative_coordinates_hold_for_non_square_images(tmp_path, tiny_segmenter):
    # 300x150: a box at policy pixels (84, 84)-(420, 420) is image pixels (30, 15)-(150, 75)
    path = tmp_path / "wide.png"
    Image.fromarray(np.zeros((150, 300, 3), np.uint8)).save(path)
    ds = fo.Dataset()
    ds.add_sample(fo.Sample(filepath=str(path), query="it"))
    _, model = scripted_model(tiny_segmenter)
    ds.apply_model(model, label_field="v", prompt_field="query")
    sample = ds.first()
    x, y, w, h = sample["v_steps"].detections[0].prompt_box
    assert (x * 300, y * 150, (x + w) * 300, (y + h) * 150) == pytest.approx((30, 15, 150, 75))
    assert np.array(sample["v_clicks"].keypoints[0].points[0]) * (300, 150) == pytest.approx((150, 37.5))


def test_exif_rotated_photo_gets_a_mask_at_the_size_the_app_shows(tmp_path, tiny_segmenter):
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 200x100, shown rotated 90 degrees: 100 wide, 200 tall
    Image.fromarray(np.full((100, 200, 3), 128, np.uint8)).save(path, exif=exif)
    ds = fo.Dataset()
    ds.add_sample(fo.Sample(filepath=str(path), query="it"))
    _, model = scripted_model(tiny_segmenter)
    ds.apply_model(model, label_field="v", prompt_field="query")
    assert ds.first()["v_mask"].mask.shape == (200, 100)


def test_unreadable_image_and_missing_query_fail_alone(dataset, tiny_segmenter, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    ids = dataset.values("id")
    dataset.set_values("filepath", {ids[1]: str(broken)}, key_field="id")
    dataset.set_values("query", {ids[2]: None, ids[3]: "   "}, key_field="id")
    policy, model = scripted_model(tiny_segmenter)
    dataset.apply_model(model, label_field="veteran", prompt_field="query", batch_size=4)
    assert policy.batch_sizes[0] == 1  # the first batch's good sample ran; the batches after it ran whole
    assert policy.batch_sizes[3] == 4
    masks = dict(zip(ids, dataset.values("veteran_mask")))
    failed = {i: mask for i, mask in masks.items() if mask.end_reason == "invalid_input"}
    assert set(failed) == set(ids[1:4])
    assert "broken.png" in failed[ids[1]].error and failed[ids[1]].mask is None
    assert "field 'query' is missing" in failed[ids[2]].error
    assert "field 'query' is not usable text" in failed[ids[3]].error
    assert all(masks[i].num_steps == 2 for i in ids if i not in failed)
    assert all(len(s["veteran_steps"].detections) == 0 for s in dataset.select(list(failed)))


def test_a_sample_the_agent_raises_on_fails_alone(dataset, tiny_segmenter):
    def answers(query, step, sampled):
        if query == "object 5":
            raise RuntimeError("out of memory")
        return box_then_click(query, step, sampled)

    _, model = scripted_model(tiny_segmenter, answers)
    dataset.apply_model(model, label_field="veteran", prompt_field="query", batch_size=4)
    reasons = {s.query: s["veteran_mask"].end_reason for s in dataset}
    assert reasons.pop("object 5") == "invalid_input"
    assert set(reasons.values()) == {"agent_stopped"}
    error = dataset.match({"query": "object 5"}).first()["veteran_mask"].error
    assert "RuntimeError: out of memory" in error


def test_real_tiny_models_run_through_apply_model(dataset, tiny_models):
    model = SamVeteranModel(policy=str(tiny_models["policy-qwen2_5_vl"]), segmenter=str(tiny_models["segmenter"]),
                            max_steps=1, device="cpu", max_new_tokens=16)
    view = dataset.limit(3)
    view.apply_model(model, label_field="tiny", prompt_field="query", batch_size=3)
    for sample in view:
        assert sample["tiny_mask"].end_reason in {"parse_failure", "agent_stopped", "step_cap"}
        assert sample["tiny_mask"].mask.shape == np.asarray(Image.open(sample.filepath)).shape[:2]
