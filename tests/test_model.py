import fiftyone as fo
import numpy as np
import pytest
from PIL import Image

from sam_veteran.plugin.agent import Agent, AgentConfig
from sam_veteran.plugin.model import SamVeteranModel
from scripted import ScriptedPolicy, box_answer, click_answer


@pytest.fixture
def dataset(tmp_path):
    rng = np.random.default_rng(0)
    samples = []
    for i, (w, h) in enumerate([(200, 100), (120, 160), (90, 90), (300, 150)]):
        path = tmp_path / f"{i}.png"
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)
        samples.append(fo.Sample(filepath=str(path), query=f"object {i}"))
    ds = fo.Dataset()
    ds.add_samples(samples)
    yield ds
    ds.delete()


def test_apply_model_writes_mask_steps_and_clicks(dataset, tiny_segmenter):
    policy = ScriptedPolicy(lambda q, step, s: box_answer([84, 84, 420, 420]) if step == 0
                            else click_answer(positive=[420, 210]) if step == 1 else click_answer())
    model = SamVeteranModel(agent=Agent(policy, tiny_segmenter, AgentConfig(max_steps=3)))
    dataset.apply_model(model, label_field="veteran", prompt_field="query", batch_size=4)
    assert policy.batch_sizes[0] == 4  # the whole batch reached the policy at once
    for sample in dataset:
        image = np.asarray(Image.open(sample.filepath))
        mask = sample["veteran_mask"]
        assert mask.mask.shape == image.shape[:2]
        assert mask.num_steps == 2 and mask.stopped_by_agent and mask.end_reason == "agent_stopped"
        steps = sample["veteran_steps"].detections
        assert [d.step for d in steps] == [0, 1] and [d.action for d in steps] == ["box", "positive"]
        x, y, w, h = steps[0].prompt_box
        assert (x, y, w, h) == pytest.approx((0.1, 0.1, 0.4, 0.4))
        (click,) = sample["veteran_clicks"].keypoints
        assert click.label == "positive" and click.step == 1
        assert click.points[0] == pytest.approx((0.5, 0.25))
