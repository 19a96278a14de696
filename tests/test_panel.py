"""The evaluation panel driven through real execution contexts, and the operators registered and run."""

import json

import fiftyone as fo
import fiftyone.operators as foo
import numpy as np
import pytest
from eval_data import make_agent_dataset
from panel_events import panel_event
from PIL import Image

from sam_veteran.plugin.evaluation import evaluate
from sam_veteran.plugin.panels.evaluation import EvaluationPanel

PLUGIN = "@sam-veteran/fiftyone"


@pytest.fixture
def evaluated(tmp_path):
    dataset = make_agent_dataset(tmp_path)
    evaluate(dataset, "veteran", eval_key="eval")
    evaluate(dataset, "veteran", eval_key="zero", protocol="empty_zero")
    yield dataset
    dataset.delete()


def _call(dataset, method, state, **params):
    return panel_event(EvaluationPanel(), dataset, method, state, **params)


def _shown(dataset, requests):
    view = fo.DatasetView._build(dataset, requests["set_view"][-1]["view"])
    return view.values("eval_iou") if dataset.has_field("eval_iou") else None, view


def test_panel_summary_plots_and_comparison(evaluated):
    state, requests = _call(evaluated, "on_load", {})
    assert state["keys"] == ["eval", "zero"] and state["eval_key"] == "eval" and state["compare_key"] == "(none)"
    assert "| gIoU | 0.7250 |" in state["summary"] and "| stopped by the agent | 50.0% |" in state["summary"]
    assert "| sentence gIoU / cIoU | 0.5000 / 0.5000 |" in state["summary"]
    data = {k: v for patch in requests["patch_panel_data"] for k, v in patch["data"].items()}
    curve = {t["name"]: t for t in data["curve"]}
    assert curve["eval gIoU"]["y"] == pytest.approx([0.525, (2 + 2 / 3) / 4, 0.625, 0.725])
    assert curve["eval cIoU"]["ids"] == ["eval|0", "eval|1", "eval|2", "eval|3"]
    assert data["histogram"][0]["y"] == [1, 0, 0, 0, 0, 0, 0, 0, 0, 3]
    assert data["stops"][0]["y"] == [0.25, 0.25, 0.0, 0.0]
    output = json.dumps(requests["show_panel_output"][-1]["output"])
    assert all(name in output for name in ("curve", "histogram", "stops", "eval_key", "compare_key"))

    state, requests = _call(evaluated, "on_change_compare", state, value="zero")
    assert "| | eval | zero |" in state["summary"] and "| gIoU | 0.7250 | 0.4750 |" in state["summary"]
    data = {k: v for patch in requests["patch_panel_data"] for k, v in patch["data"].items()}
    assert [t["name"] for t in data["histogram"]] == ["eval", "zero"]
    assert data["histogram"][1]["y"] == [2, 0, 0, 0, 0, 0, 0, 0, 0, 2]


def test_clicks_filter_the_grid_worst_first(evaluated):
    state, _ = _call(evaluated, "on_load", {})
    state, requests = _call(evaluated, "on_click_histogram", state, id="eval|9", idx=9)
    ious, _ = _shown(evaluated, requests)
    assert ious == pytest.approx([0.9, 1.0, 1.0])
    assert state["selection"].startswith("eval: final IoU in [0.9, 1.0]: 3 samples")

    state, requests = _call(evaluated, "on_click_curve", state, id="eval|1", idx=1)
    _, view = _shown(evaluated, requests)
    assert [row[1] for row in view.values("eval_step_ious")] == pytest.approx([2 / 3, 1.0])

    state, requests = _call(evaluated, "on_click_stops", state, id="eval|0", idx=0)
    _, view = _shown(evaluated, requests)
    assert view.values("eval_step_ious") == [[1.0]]

    state, requests = _call(evaluated, "on_show_all", state)
    assert "clear_view" in requests and state["selection"] is None


def test_panel_without_evaluations_says_how_to_make_one(tmp_path):
    dataset = make_agent_dataset(tmp_path)
    state, requests = _call(dataset, "on_load", {})
    assert state["keys"] == [] and "SAM-Veteran: Evaluate" in json.dumps(requests["show_panel_output"][-1])
    dataset.delete()


def test_operators_and_panel_are_registered(installed_plugin):
    for name in ("import_reasonseg", "import_refcoco", "evaluate", "sam_veteran_evaluation"):
        assert foo.get_operator(f"{PLUGIN}/{name}") is not None


def test_evaluate_operator_and_import_operator_run(installed_plugin, tmp_path):
    dataset = make_agent_dataset(tmp_path)
    result = foo.get_operator(f"{PLUGIN}/evaluate")(dataset, "veteran", eval_key="op", protocol="skip_empty")
    assert result.error is None, result.error
    assert result.result["gIoU"] == pytest.approx(1.9 / 3) and dataset.list_evaluations() == ["op"]
    dataset.delete()

    folder = tmp_path / "val"
    folder.mkdir()
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(folder / "a.jpg")
    (folder / "a.json").write_text(json.dumps({"text": ["q"], "shapes": [
        {"label": "target", "points": [[1, 1], [5, 1], [5, 5]]}]}))
    (folder / "bad.json").write_text("[]")
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(folder / "bad.jpg")
    result = foo.get_operator(f"{PLUGIN}/import_reasonseg")(folder, name="op-import")
    assert result.error is None, result.error
    assert result.result["samples"] == 1 and result.result["skipped"] == 1
    assert "bad.json" in result.result["skipped_files"][0]
    fo.load_dataset("op-import").delete()


def test_the_panel_leaves_out_a_staging_evaluation(tmp_path):
    import uuid

    from sam_veteran.plugin.evaluation import STAGING_SUFFIX
    from sam_veteran.plugin.panels.evaluation import reasonseg_evaluations

    dataset = fo.Dataset(f"panel-staging-{uuid.uuid4().hex}")
    mask = np.zeros((4, 4), np.uint8)
    mask[1:3, 1:3] = 1
    dataset.add_sample(fo.Sample(filepath=str(tmp_path / "x.png"), ground_truth=fo.Segmentation(mask=mask),
                                 pred=fo.Segmentation(mask=mask)))
    evaluate(dataset, "pred", eval_key="done")
    evaluate(dataset, "pred", eval_key=f"run{STAGING_SUFFIX}")
    assert reasonseg_evaluations(dataset) == ["done"]
    dataset.delete()
