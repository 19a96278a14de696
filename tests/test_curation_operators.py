"""The curation operators registered in the plugin and run as the App runs them: triage, tag, export."""

import pickle

import fiftyone as fo
import fiftyone.operators as foo
import numpy as np
import pytest
from fiftyone.operators.executor import ExecutionContext, ExecutionError
from PIL import Image

from sam_veteran.plugin.agent.trace import Action, EndReason, Step, Trace
from sam_veteran.plugin.datasets import import_reasonseg
from sam_veteran.plugin.evaluation import evaluate
from sam_veteran.plugin.labels import trace_to_labels
from sam_veteran.plugin.operators.curation import Triage
from sam_veteran.plugin.operators.export import ExportRefer

PLUGIN = "@sam-veteran/fiftyone"
W, H = 32, 24


def box(x1, y1, x2, y2):
    mask = np.zeros((H, W), bool)
    mask[y1:y2, x1:x2] = True
    return mask


@pytest.fixture
def run(tmp_path):
    """Four items on two images with ground truth (one with an ignore region) and an agent run."""
    paths = []
    for i in range(2):
        paths.append(tmp_path / f"img{i}.png")
        Image.fromarray(np.full((H, W, 3), 40 * i, np.uint8)).save(paths[-1])
    gt = np.zeros((H, W), np.uint8)
    gt[4:12, 4:20] = 1
    gt[14:16, :] = 255
    rows = [(0, "the box", [box(4, 4, 20, 12)], EndReason.AGENT_STOPPED),
            (0, "the large box", [box(4, 4, 20, 12)], EndReason.AGENT_STOPPED),
            (1, "what holds the things?", [box(4, 4, 12, 12), box(0, 0, 32, 24)], EndReason.STEP_CAP),
            (1, "the shelf", [], EndReason.PARSE_FAILURE)]
    samples = []
    for image, query, masks, end in rows:
        steps = [Step(i, "", Action.BOX if i == 0 else Action.POSITIVE, box=(4, 4, 20, 12), mask=m, score=0.9)
                 for i, m in enumerate(masks)]
        if end is EndReason.AGENT_STOPPED:
            steps.append(Step(len(steps), "", Action.STOP))
        labels = trace_to_labels(Trace(query, (W, H), steps, end))
        samples.append(fo.Sample(filepath=str(paths[image]), query=query, is_sentence=query.endswith("?"),
                                 ground_truth=fo.Segmentation(mask=gt), tags=["val"],
                                 **{f"veteran_{k}": v for k, v in labels.items()}))
    ds = fo.Dataset()
    ds.add_samples(samples)
    yield ds
    ds.delete()


def test_curation_operators_are_registered(installed_plugin):
    for name in ("triage", "tag_from_evaluation", "export_reasonseg", "export_refer"):
        assert foo.get_operator(f"{PLUGIN}/{name}") is not None, name


def test_triage_form_offers_the_agent_runs(run):
    ctx = ExecutionContext(request_params={"dataset_name": run.name, "params": {}})
    form = Triage().resolve_input(ctx).type
    assert form.properties["label_field"].type.values == ["veteran"]
    assert "ground_truth" in form.properties["compare_field"].type.values
    export_form = ExportRefer().resolve_input(ctx).type
    assert export_form.properties["dataset"].type.values == ["refcoco", "refcoco+", "refcocog", "grefcoco"]
    assert "ignore_dropped" in ExportRefer().resolve_output(ctx).type.properties


def test_triage_tag_export_workflow(installed_plugin, run, tmp_path):
    result = foo.get_operator(f"{PLUGIN}/triage")(run, "veteran")
    assert result.error is None, result.error
    assert result.result["key"] == "veteran_triage" and result.result["scored"] == 4
    first = run.sort_by("veteran_triage_score", reverse=True).first()
    assert first.query == "the shelf" and first.veteran_triage_reasons == ["parse_failure", "low_confidence"]

    evaluate(run, "veteran", eval_key="eval")
    result = foo.get_operator(f"{PLUGIN}/tag_from_evaluation")(run, "eval")
    assert result.error is None, result.error
    assert "eval:iou 0.90-1.00: 2" in result.result["tags"] and "eval:stopped too late: 1" in result.result["tags"]
    good = run.match_tags("eval:iou 0.90-1.00")

    result = foo.get_operator(f"{PLUGIN}/export_reasonseg")(good, tmp_path / "rs")
    assert result.error is None, result.error
    assert (result.result["items"], result.result["images"]) == (2, 1)
    back = import_reasonseg(tmp_path / "rs")
    assert sorted(back.values("query")) == ["the box", "the large box"]
    assert np.array_equal(back.first().ground_truth.mask, run.first().ground_truth.mask)
    back.delete()
    with pytest.raises(ExecutionError, match="overwrite=True"):
        foo.get_operator(f"{PLUGIN}/export_reasonseg")(good, tmp_path / "rs")

    result = foo.get_operator(f"{PLUGIN}/export_refer")(run, tmp_path / "refer", dataset="refcoco")
    assert result.error is None, result.error
    assert (result.result["refs"], result.result["ignore_dropped"]) == (2, 4)
    refs = pickle.loads((tmp_path / "refer" / "refcoco" / "refs(unc).p").read_bytes())
    assert {r["split"] for r in refs} == {"val"}
