import fiftyone as fo
import numpy as np
import pytest

from sam_veteran.plugin.agent.trace import Action, EndReason, Step, Trace
from sam_veteran.plugin.curation.triage import DEFAULT_WEIGHTS, review_order, step_masks, triage
from sam_veteran.plugin.metrics import mask_iou
from sam_veteran.plugin.labels import trace_to_labels

W, H = 64, 48


def rect(x1, y1, x2, y2):
    mask = np.zeros((H, W), dtype=bool)
    mask[y1:y2, x1:x2] = True
    return mask


def trace(end_reason, masks_scores, box=(8, 8, 40, 40)):
    steps = [Step(index=i, text="", action=Action.BOX if i == 0 else Action.POSITIVE, box=box,
                  positive=None if i == 0 else (20.0, 20.0), mask=mask, score=score)
             for i, (mask, score) in enumerate(masks_scores)]
    if end_reason is EndReason.AGENT_STOPPED:
        steps.append(Step(index=len(steps), text="", action=Action.STOP))
    return Trace(query="q", image_size=(W, H), steps=steps, end_reason=end_reason)


A, B, C = rect(10, 10, 30, 30), rect(10, 20, 30, 40), rect(0, 0, 64, 48)  # IoU(A, B) = 200 / 600
TRACES = {
    "good": trace(EndReason.AGENT_STOPPED, [(A, 0.95), (A | rect(30, 10, 31, 30), 0.9)]),
    "cap": trace(EndReason.STEP_CAP, [(A, 0.8), (A, 0.8), (A, 0.8), (A, 0.8)]),
    "jump": trace(EndReason.AGENT_STOPPED, [(A, 0.9), (B, 0.3)]),
    "parse": trace(EndReason.PARSE_FAILURE, []),
    "parse_late": trace(EndReason.PARSE_FAILURE, [(C, 0.7)]),
    "invalid": Trace(query="", image_size=(W, H), end_reason=EndReason.INVALID_INPUT, error="empty query"),
}


@pytest.fixture
def dataset():
    ds = fo.Dataset()
    samples = []
    for name, tr in TRACES.items():
        labels = trace_to_labels(tr)
        other = fo.Segmentation(mask=B.astype(np.uint8))
        samples.append(fo.Sample(filepath=f"/nonexistent/{name}.png", name=name, other=other,
                                 **{f"veteran_{k}": v for k, v in labels.items()}))
    samples.append(fo.Sample(filepath="/nonexistent/not_run.png", name="not_run"))
    ds.add_samples(samples)
    yield ds
    ds.delete()


def by_name(ds, field):
    return dict(zip(ds.values("name"), ds.values(field)))


def test_step_masks_rebuild_every_step_at_full_size():
    tr = TRACES["jump"]
    detections = trace_to_labels(tr)["steps"].detections
    rebuilt = step_masks(detections, W, H)
    assert len(rebuilt) == 2
    for mask, step in zip(rebuilt, tr.mask_steps):
        assert np.array_equal(mask, step.mask)


def test_mask_iou_conventions():
    assert mask_iou(A, B) == pytest.approx(1 / 3)
    assert mask_iou(np.zeros((2, 2)), np.zeros((2, 2))) == 1.0
    assert mask_iou(None, A) == 0.0 and mask_iou(None, None) == 1.0


def test_triage_fields_on_handmade_traces(dataset):
    summary = triage(dataset, "veteran")
    assert summary["count"] == 7 and summary["scored"] == 6
    reasons = by_name(dataset, "veteran_triage_reasons")
    assert reasons == {"good": [], "cap": ["step_cap"], "jump": ["low_confidence", "large_change"],
                       "parse": ["parse_failure", "low_confidence"], "parse_late": ["parse_failure"],
                       "invalid": ["invalid_input", "low_confidence"], "not_run": ["not_run"]}
    change = by_name(dataset, "veteran_triage_step_change")
    assert change["good"] == pytest.approx(1 - 400 / 420)
    assert change["jump"] == pytest.approx(2 / 3)
    assert change["cap"] == 0.0 and change["parse"] == 0.0 and change["not_run"] is None
    confidence = by_name(dataset, "veteran_triage_confidence")
    assert confidence["jump"] == pytest.approx(0.3) and confidence["parse"] is None
    w = DEFAULT_WEIGHTS
    total = w["failure"] + w["step_cap"] + w["confidence"] + w["step_change"]
    score = by_name(dataset, "veteran_triage_score")
    assert score["parse"] == pytest.approx((w["failure"] + w["confidence"]) / total)
    assert score["invalid"] == score["parse"]
    assert score["cap"] == pytest.approx((w["step_cap"] + 0.2 * w["confidence"]) / total)
    assert score["jump"] == pytest.approx((0.7 * w["confidence"] + 2 / 3 * w["step_change"]) / total)
    assert score["not_run"] is None
    order = review_order(dataset).values("name")
    assert set(order[:2]) == {"parse", "invalid"} and order.index("good") == 5
    assert summary["reasons"] == {"not_run": 1, "parse_failure": 2, "invalid_input": 1, "step_cap": 1,
                                  "low_confidence": 3, "large_change": 1}


def test_two_runs_disagree(dataset):
    triage(dataset, "veteran", compare_field="other", key="cmp")
    disagreement = by_name(dataset, "cmp_disagreement")
    assert disagreement["jump"] == 0.0  # final mask B is the other run's mask
    assert disagreement["good"] == pytest.approx(1 - 200 / 620)
    assert disagreement["parse"] == 1.0 and disagreement["invalid"] == 1.0  # no mask against a non-empty one
    assert disagreement["parse_late"] == pytest.approx(1 - 400 / (W * H))
    assert "disagreement" in by_name(dataset, "cmp_reasons")["good"]
    assert "veteran_triage_score" not in dataset.get_field_schema()


def test_triage_needs_the_run(dataset):
    with pytest.raises(ValueError, match="run the agent"):
        triage(dataset, "nope")
    with pytest.raises(ValueError, match="to compare with"):
        triage(dataset, "veteran", compare_field="missing")


def test_chunked_reading_keeps_samples_aligned(dataset, monkeypatch):
    import sam_veteran.plugin.curation.triage as triage_module

    triage(dataset, "veteran", compare_field="other")
    monkeypatch.setattr(triage_module, "CHUNK", 2)
    triage(dataset.sort_by("name"), "veteran", compare_field="other", key="small")
    for name in ("score", "reasons", "disagreement", "step_change"):
        assert dataset.values(f"small_{name}") == dataset.values(f"veteran_triage_{name}")


def test_triage_of_a_real_agent_run(tmp_path, tiny_segmenter):
    """The agent (scripted answers, the real tiny SAM) run through apply_model, then triaged: the fields match
    the traces the agent produced."""
    from PIL import Image

    from sam_veteran.plugin.agent import Agent, AgentConfig
    from sam_veteran.plugin.model import SamVeteranModel
    from scripted import ScriptedPolicy, box_answer, click_answer

    def answers(query, step, sampled):
        if step == 0:
            return box_answer([84, 84, 600, 500])
        return {"stops": click_answer(), "clicks on": click_answer(positive=[300, 300]),
                "babbles": "<answer>{oops"}[query]

    rng = np.random.default_rng(1)
    samples = []
    for query in ("stops", "clicks on", "babbles"):
        path = tmp_path / f"{query}.png"
        Image.fromarray(rng.integers(0, 255, (90, 120, 3), dtype=np.uint8)).save(path)
        samples.append(fo.Sample(filepath=str(path), query=query))
    ds = fo.Dataset()
    ds.add_samples(samples)
    agent = Agent(ScriptedPolicy(answers), tiny_segmenter, AgentConfig(max_steps=2))
    ds.apply_model(SamVeteranModel(agent=agent), label_field="veteran", prompt_field="query")
    triage(ds, "veteran")
    rows = {s.query: s for s in ds}
    assert rows["stops"].veteran_triage_step_change == 0.0
    assert "step_cap" in rows["clicks on"].veteran_triage_reasons
    assert "parse_failure" in rows["babbles"].veteran_triage_reasons
    for sample in rows.values():
        steps = sorted(sample.veteran_steps.detections, key=lambda d: d.step)
        assert sample.veteran_triage_confidence == pytest.approx(steps[-1].confidence)
        masks = step_masks(steps, 120, 90)
        assert np.array_equal(masks[-1], sample.veteran_mask.mask.astype(bool))
    cap = step_masks(rows["clicks on"].veteran_steps.detections, 120, 90)
    assert rows["clicks on"].veteran_triage_step_change == pytest.approx(
        max(1 - mask_iou(a, b) for a, b in zip(cap, cap[1:])))
    ds.delete()
