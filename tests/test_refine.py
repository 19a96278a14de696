"""A person's corrections and the agent continuing (`sam_veteran.refine`, `sam_veteran.continue_agent`) on demo
scenes run by the simulated user with the shipped mini segmenter, written to and read back from the database."""

import json
import uuid

import numpy as np
import pytest
from panel_events import panel_event

import sam_veteran
from sam_veteran.plugin.agent import Agent, AgentConfig, OraclePolicy, load_segmenter
from sam_veteran.plugin.demo import build_demo_dataset
from sam_veteran.plugin.evaluation import evaluate
from sam_veteran.plugin.inference import run_agent
from sam_veteran.plugin.labels import HUMAN, placed_crop
from sam_veteran.plugin.model import SamVeteranModel
from sam_veteran.plugin.panels.refine import RefinePanel
from sam_veteran.plugin.refine import (POLICY_ENV, SEGMENTER_ENV, Refiner, default_models, read_history,
                                       refiner_for)


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    """Three scenes, each with a box and two refinement clicks of the simulated user (it never stops here)."""
    dataset = build_demo_dataset(tmp_path_factory.mktemp("refine"), num_samples=3,
                                 name=f"refine-{uuid.uuid4().hex[:8]}")
    agent = Agent(OraclePolicy(stop_iou=None), refiner_for("mini").segmenter, AgentConfig(max_steps=2))
    run_agent(dataset, SamVeteranModel(agent=agent))
    yield dataset
    dataset.delete()


@pytest.fixture
def scenes(ran):
    dataset = ran.clone()
    yield dataset
    dataset.delete()


def _full_mask(detection, width, height):
    crop, x, y = placed_crop(np.asarray(detection.mask, dtype=bool), detection.bounding_box, width, height)
    full = np.zeros((height, width), dtype=bool)
    full[y : y + crop.shape[0], x : x + crop.shape[1]] = crop
    return full


def _centre(mask):
    ys, xs = np.nonzero(mask)
    i = np.argmin((xs - xs.mean()) ** 2 + (ys - ys.mean()) ** 2)
    return float(xs[i]) + 0.5, float(ys[i]) + 0.5


def test_a_persons_click_refines_exactly_as_the_agent_did(ran):
    """The agent's own step-2 click, given as a person's click after step 1, gives the agent's step-2 mask: same
    box, same clicks, same previous logits (recomputed by replaying steps 0 and 1)."""
    for sample in ran:
        steps = {d.step: d for d in sample.veteran_steps.detections}
        assert sorted(steps) == [0, 1, 2]
        (x, y), = sample.veteran_clicks.keypoints[-1].points
        positive = sample.veteran_clicks.keypoints[-1].label == "positive"
        width, height = sample.metadata.width, sample.metadata.height
        correction = sam_veteran.refine(sample, [(x * width, y * height, positive)], from_step=1, save=False,
                                        segmenter="mini")
        assert correction.new[0].index == 3
        assert np.array_equal(correction.mask, _full_mask(steps[2], width, height))
        assert correction.new[0].score == pytest.approx(steps[2].confidence, abs=1e-5)


def test_the_shipped_mini_policy_continues_from_a_correction(scenes):
    """The App's default policy, the real mini Qwen2.5-VL, through the agent's prompts and parser: whatever it
    answers (a click, a stop or an unreadable answer), the run ends with that reason and keeps the human step."""
    sample = scenes.skip(1).first()
    x, y = _centre(sample.ground_truth.mask > 0)
    sam_veteran.refine(sample, [(x, y, True)], segmenter="mini")
    stored = len(sample.veteran_steps.detections)
    correction = sam_veteran.continue_agent(sample, policy="mini", segmenter="mini", max_steps=2)

    sample.reload()
    steps = sample.veteran_steps.detections
    assert steps[stored - 1].get_field("source") == "human"
    assert len(steps) == stored + sum(step.mask is not None for step in correction.new) <= stored + 2
    assert all(d.get_field("source") == "agent" for d in steps[stored:])
    assert sample.veteran_mask.end_reason == correction.end_reason.value
    assert correction.end_reason.value in ("agent_stopped", "step_cap", "parse_failure")
    assert correction.new and correction.new[0].text  # the policy's own answer to the corrected mask


def test_refine_saves_human_steps_after_the_agents(scenes):
    sample = scenes.first()
    before = [d.step for d in sample.veteran_steps.detections]
    width, height = sample.metadata.width, sample.metadata.height
    last = _full_mask(sample.veteran_steps.detections[-1], width, height)
    x, y = _centre(sample.ground_truth.mask > 0)
    correction = sam_veteran.refine(sample, [(x, y, False), (x, y, True)])

    sample.reload()
    steps = sample.veteran_steps.detections
    assert [d.step for d in steps] == before + [3, 4]
    assert [d.get_field("source") for d in steps[-2:]] == [HUMAN, HUMAN]
    assert [d.base_step for d in steps[-2:]] == [2, 3] and [d.action for d in steps[-2:]] == ["negative", "positive"]
    for detection, step in zip(steps[-2:], correction.new):  # each click's own mask, stored like the agent's
        assert np.array_equal(_full_mask(detection, width, height), step.mask)
    assert not np.array_equal(correction.new[0].mask, last)
    clicks = sample.veteran_clicks.keypoints
    assert [(k.step, k.label) for k in clicks[-2:]] == [(3, "negative"), (4, "positive")]
    assert np.allclose(clicks[-1].points[0], (x / width, y / height))
    mask = sample.veteran_mask
    assert mask.end_reason == HUMAN and not mask.stopped_by_agent and mask.num_steps == 5
    assert np.array_equal(mask.mask.astype(bool), correction.mask)

    results = evaluate(scenes, "veteran", eval_key="fixed")  # the human steps are steps like any other
    assert len(scenes.first()["fixed_step_ious"]) == 5 and results.metrics()["count"] == 3


def test_continue_agent_appends_the_policys_steps_from_the_correction(scenes):
    sample = scenes.first()
    x, y = _centre(sample.ground_truth.mask > 0)
    sam_veteran.refine(sample, [(x, y, False)])
    correction = sam_veteran.continue_agent(sample, policy=OraclePolicy(stop_iou=None), segmenter="mini",
                                            max_steps=2)

    sample.reload()
    steps = sample.veteran_steps.detections
    added = steps[4:]
    assert [d.step for d in added] == [4, 5]
    assert all(d.get_field("source") == "agent" for d in added) and added[0].base_step == 3
    assert all(d.reasoning.startswith("IoU ") for d in added)  # the simulated user's answers, parsed by the loop
    assert sample.veteran_mask.end_reason == correction.trace.end_reason.value == "step_cap"
    assert np.array_equal(sample.veteran_mask.mask.astype(bool), correction.new[-1].mask)
    assert [k.step for k in sample.veteran_clicks.keypoints][-2:] == [4, 5]
    assert sample.veteran_mask.num_steps == len(steps)


def test_reset_to_an_earlier_step_branches_and_keeps_the_history(scenes):
    sample = scenes.first()
    x, y = _centre(sample.ground_truth.mask > 0)
    sam_veteran.refine(sample, [(x, y, True)], from_step=0, segmenter="mini")
    sample.reload()
    assert [d.step for d in sample.veteran_steps.detections] == [0, 1, 2, 3]
    history = read_history(sample)
    assert [s.step.index for s in history.path(3)] == [0, 3] and history.steps[3].base == 0
    assert [s.step.index for s in history.path(2)] == [0, 1, 2]
    sam_veteran.refine(sample, [(x, y, False)])  # after the last stored step: the branch goes on
    sample.reload()
    assert [s.step.index for s in read_history(sample).path(4)] == [0, 3, 4]


def test_the_embedding_is_computed_once_per_sample(ran):
    class Counting:
        def __init__(self, inner):
            self.inner, self.encoded = inner, 0

        def encode(self, images):
            self.encoded += len(images)
            return self.inner.encode(images)

        def segment(self, *args):
            return self.inner.segment(*args)

    segmenter = Counting(load_segmenter("mini", device="cpu"))
    refiner = Refiner(segmenter)
    sample = ran.first()
    for step in (2, 1, 0, 2):
        sam_veteran.refine(sample, [(10, 10, True)], segmenter=refiner, save=False, from_step=step)
    assert segmenter.encoded == 1


def test_bad_requests_name_the_sample(scenes, tiny_segmenter):
    sample = scenes.first()
    with pytest.raises(ValueError, match=f"sample {sample.id}: click \\(999, 5\\) is outside the"):
        sam_veteran.refine(sample, [(999, 5, True)])
    with pytest.raises(ValueError, match=r"no step 7 \(steps: \[0, 1, 2\]\)"):
        sam_veteran.refine(sample, [(5, 5, True)], from_step=7)
    with pytest.raises(ValueError, match="does not reproduce the stored mask of step 2"):
        sam_veteran.refine(sample, [(5, 5, True)], segmenter=tiny_segmenter)
    with pytest.raises(ValueError, match=f"sample {sample.id} .* has no steps in 'other_steps'"):
        sam_veteran.refine(sample, [(5, 5, True)], label_field="other")
    sample["ground_truth"] = None
    with pytest.raises(ValueError, match="no ground truth in field 'ground_truth'"):
        sam_veteran.continue_agent(sample, policy="oracle")
    sample.reload()
    assert len(sample.veteran_steps.detections) == 3  # nothing was written


def test_default_models_follow_the_environment(monkeypatch):
    monkeypatch.delenv(POLICY_ENV, raising=False)
    monkeypatch.delenv(SEGMENTER_ENV, raising=False)
    policy, segmenter = default_models()
    assert segmenter == "mini" and policy in ("mini", "oracle")
    monkeypatch.setenv(POLICY_ENV, "/models/policy")
    monkeypatch.setenv(SEGMENTER_ENV, "vit_b")
    assert default_models() == ("/models/policy", "vit_b")


def _panel(dataset, method, state, sample_id, **params):
    return panel_event(RefinePanel(), dataset, method, state, current_sample=sample_id, **params)


def test_the_panel_refines_saves_and_continues(scenes, monkeypatch):
    """Each event gets the panel's state as it was after loading, as the App sends it to a modal panel: what a
    person is doing survives in the server's editing record."""
    monkeypatch.setenv(POLICY_ENV, "oracle")
    sample = scenes.first()
    loaded, requests = _panel(scenes, "on_load", {}, sample.id)
    state = dict(loaded)
    assert state["error"] is None and state["from_step"] == 2 and "| 2 ◀ | agent | positive" in state["steps_md"]
    figure = {k: v for patch in requests["patch_panel_data"] for k, v in patch["data"].items()}["figure"]
    assert figure[0]["type"] == "heatmap" and figure[0]["x0"] == 0.5 and len(figure[0]["z"]) == sample.metadata.height
    assert state["figure_layout"]["images"][0]["source"].startswith("data:image/png;base64,")
    assert '"figure"' in json.dumps(requests["show_panel_output"][-1]["output"])

    x, y = _centre(sample.ground_truth.mask > 0)
    state, _ = _panel(scenes, "on_toggle", dict(loaded), sample.id, value=False)
    state, _ = _panel(scenes, "on_click_image", dict(loaded), sample.id, x=x, y=y)
    state, _ = _panel(scenes, "on_click_image", dict(loaded), sample.id, x=x + 3, y=y)
    assert [p[2] for p in state["pending"]] == [False, False] and "3 (unsaved) | human | negative" in state["steps_md"]
    state, _ = _panel(scenes, "on_undo", dict(loaded), sample.id)
    state, requests = _panel(scenes, "on_save", dict(loaded), sample.id)
    assert state["pending"] == [] and state["message"] == "Saved 1 human step." and "reload_samples" in requests
    sample.reload()
    assert sample.veteran_steps.detections[-1].source == HUMAN

    state, _ = _panel(scenes, "on_continue", dict(loaded), sample.id)
    assert state["message"].startswith("The agent (oracle) added") and state["error"] is None
    sample.reload()
    assert sample.veteran_mask.end_reason in ("agent_stopped", "step_cap")

    state, _ = _panel(scenes, "on_reset", dict(loaded), sample.id, value="0")
    assert state["from_step"] == 0 and "| 0 ◀ |" in state["steps_md"]


def test_the_panel_keeps_each_samples_correction_apart(scenes, monkeypatch):
    """Unsaved clicks belong to the sample they were made on; the dropdown's echo of the step it shows, sent when
    it is drawn again, neither restarts the correction nor blanks the panel."""
    monkeypatch.setenv(POLICY_ENV, "oracle")
    first, second = scenes.first(), scenes.skip(1).first()
    loaded, _ = _panel(scenes, "on_load", {}, first.id)
    x, y = _centre(first.ground_truth.mask > 0)
    state, _ = _panel(scenes, "on_click_image", dict(loaded), first.id, x=x, y=y)
    shown = state["from_step"]
    state, requests = _panel(scenes, "on_reset", dict(loaded), first.id, value=str(shown))
    assert len(state["pending"]) == 1 and "(unsaved)" in state["steps_md"] and "patch_panel_data" in requests
    state, _ = _panel(scenes, "on_change_current_sample", dict(loaded), second.id)
    assert state["pending"] == [] and state["message"] is None and "(unsaved)" not in state["steps_md"]


def test_the_panel_shows_errors_instead_of_going_blank(scenes):
    bare = scenes.last()
    bare["veteran_steps"] = None
    bare.save()
    state, requests = _panel(scenes, "on_load", {}, bare.id)
    assert f"sample {bare.id}" in state["error"] and "has no steps in 'veteran_steps'" in state["error"]
    assert "Error:" in json.dumps(requests["show_panel_output"][-1]["output"])
    state, _ = _panel(scenes, "on_click_image", state, bare.id, x=1, y=1)
    assert "has no steps" in state["error"]
