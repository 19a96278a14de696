import fiftyone as fo
import numpy as np
import pytest

from sam_veteran.plugin.agent.trace import Action, EndReason, Step, Trace
from sam_veteran.plugin.curation.bands import IOU_BAND_EDGES, band_filter, band_index, band_label
from sam_veteran.plugin.curation.tagging import band_tag, stopping_verdict, tag_from_evaluation
from sam_veteran.plugin.evaluation import evaluate
from sam_veteran.plugin.labels import trace_to_labels

W, H = 40, 30
GT = np.zeros((H, W), np.uint8)
GT[10:20, 10:30] = 1  # 200 px
FULL = GT.astype(bool)
HALF = FULL.copy()
HALF[:, 20:] = False  # IoU 0.5
QUARTER = FULL.copy()
QUARTER[15:, :] = False
QUARTER[:, 20:] = False  # IoU 0.25


def trace(end_reason, masks):
    steps = [Step(index=i, text="", action=Action.BOX if i == 0 else Action.POSITIVE, box=(10, 10, 30, 20),
                  mask=m, score=0.9) for i, m in enumerate(masks)]
    if end_reason is EndReason.AGENT_STOPPED:
        steps.append(Step(index=len(steps), text="", action=Action.STOP))
    return Trace(query="q", image_size=(W, H), steps=steps, end_reason=end_reason)


CASES = {  # name: (trace, is_sentence)
    "late": (trace(EndReason.STEP_CAP, [FULL, HALF, HALF, QUARTER]), True),
    "early": (trace(EndReason.AGENT_STOPPED, [HALF]), False),
    "fine": (trace(EndReason.AGENT_STOPPED, [HALF, FULL]), True),
    "cap_low": (trace(EndReason.STEP_CAP, [QUARTER] * 4), None),
    "failed": (trace(EndReason.PARSE_FAILURE, []), False),
}


@pytest.fixture
def evaluated():
    ds = fo.Dataset()
    samples = []
    for name, (tr, sentence) in CASES.items():
        labels = trace_to_labels(tr)
        samples.append(fo.Sample(filepath=f"/nonexistent/{name}.png", name=name, is_sentence=sentence,
                                 ground_truth=fo.Segmentation(mask=GT), tags=["keep", "eval:iou 0.00-0.10"],
                                 **{f"veteran_{k}": v for k, v in labels.items()}))
    ds.add_samples(samples)
    evaluate(ds, "veteran", eval_key="eval")
    yield ds
    ds.delete()


def test_bands_cover_zero_to_one_without_gaps():
    assert [band_index(v) for v in (0.0, 0.0999, 0.1, 0.5, 0.89, 0.9, 1.0)] == [0, 0, 1, 5, 8, 9, 9]
    assert band_index(None) is None
    assert band_label(2) == "iou 0.20-0.30" and IOU_BAND_EDGES[0] == 0.0 and IOU_BAND_EDGES[-1] == 1.0


def test_stopping_verdicts():
    assert stopping_verdict([1.0, 0.5], stopped_by_agent=True) == "stopped too late"
    assert stopping_verdict([0.5], stopped_by_agent=True) == "stopped too early"
    assert stopping_verdict([0.5], stopped_by_agent=False) is None
    assert stopping_verdict([0.93, 0.95], stopped_by_agent=True) is None
    assert stopping_verdict([0.5, 0.52, 0.48], stopped_by_agent=False) is None  # within the margin
    assert stopping_verdict([float("nan")], stopped_by_agent=True) is None and stopping_verdict([], True) is None


def test_tags_from_a_real_evaluation(evaluated):
    counts = tag_from_evaluation(evaluated, "eval")
    tags = dict(zip(evaluated.values("name"), evaluated.values("tags")))
    assert tags["late"] == ["keep", "eval:iou 0.20-0.30", "eval:stopped too late", "query:sentence"]
    assert tags["early"] == ["keep", "eval:iou 0.50-0.60", "eval:stopped too early", "query:phrase"]
    assert tags["fine"] == ["keep", "eval:iou 0.90-1.00", "query:sentence"]
    assert tags["cap_low"] == ["keep", "eval:iou 0.20-0.30"]
    assert tags["failed"] == ["keep", "eval:iou 0.00-0.10", "query:phrase"]
    assert counts["eval:iou 0.20-0.30"] == 2 and counts["query:phrase"] == 2


def test_band_tags_agree_with_the_evaluation_iou_and_the_band_filters(evaluated):
    tag_from_evaluation(evaluated, "eval")
    for iou, tags in zip(evaluated.values("eval_iou"), evaluated.values("tags")):
        assert band_tag("eval", band_index(iou)) in tags
    for index in range(len(IOU_BAND_EDGES) - 1):
        filtered = set(evaluated.match(band_filter("eval_iou", index)).values("id"))
        tagged = set(evaluated.match_tags(band_tag("eval", index)).values("id"))
        assert filtered == tagged


def test_band_tags_agree_with_the_panel_histogram_bars(evaluated):
    """Clicking histogram bar i in the evaluation panel shows exactly the samples tagged with band i."""
    from fiftyone.operators.executor import ExecutionContext, Executor

    from sam_veteran.plugin.panels.evaluation import EvaluationPanel

    def panel_event(method, state, **params):
        executor = Executor()
        ctx = ExecutionContext(request_params={"dataset_name": evaluated.name, "params": {
            "panel_id": "p", "panel_state": state, "__method__": method, **params}}, executor=executor)
        EvaluationPanel().execute(ctx)
        views = [r.params["view"] for r in executor._requests if r.operator_uri == "set_view"]
        return ctx.panel_state, views

    tag_from_evaluation(evaluated, "eval")
    state, _ = panel_event("on_load", {})
    bars = evaluated.load_evaluation_results("eval").histogram()
    assert [(b["low"], b["high"]) for b in bars] == list(zip(IOU_BAND_EDGES, IOU_BAND_EDGES[1:]))
    for index in range(len(bars)):
        state, views = panel_event("on_click_histogram", state, id=f"eval|{index}", idx=index)
        shown = set(fo.DatasetView._build(evaluated, views[-1]).values("id"))
        assert shown == set(evaluated.match_tags(band_tag("eval", index)).values("id"))


def test_retagging_follows_the_latest_evaluation(evaluated):
    tag_from_evaluation(evaluated, "eval")
    late = evaluated.match(fo.ViewField("name") == "late")
    late.set_values("veteran_steps", [fo.Detections(detections=late.first().veteran_steps.detections[:1])])
    late.set_values("veteran_mask", [fo.Segmentation(mask=GT)])
    evaluate(evaluated, "veteran", eval_key="eval")  # now a single full mask: IoU 1
    tag_from_evaluation(evaluated, "eval")
    assert late.first().tags == ["keep", "eval:iou 0.90-1.00", "query:sentence"]


def test_tagging_needs_the_evaluation(evaluated):
    with pytest.raises(ValueError, match="no evaluation 'other'"):
        tag_from_evaluation(evaluated, "other")


def test_a_plain_mask_evaluation_gets_bands_and_query_types_only(evaluated):
    evaluated.clone_sample_field("veteran_mask", "final")  # the final masks as a plain Segmentation field
    evaluate(evaluated, "final", eval_key="plain")
    counts = tag_from_evaluation(evaluated, "plain")
    assert not any("stopped" in tag for tag in counts)
    assert sum(n for tag, n in counts.items() if tag.startswith("plain:iou")) == len(evaluated)
