"""Every long-running writer completes or leaves the previous state intact: evaluation, import and export.

An interruption at each step is a `KeyboardInterrupt` raised from the FiftyOne or file-system call of that step
(the SIGKILL versions, in other processes, are in test_faults.py); a rerun then finishes the job.
"""

import fiftyone as fo
import numpy as np
import pytest
from fiftyone.core.evaluation import EvaluationMethod

from eval_data import make_agent_dataset
from sam_veteran.plugin.evaluation import evaluate, staging_key

EVAL_IOUS = [1.0, 0.9, 0.0, 1.0]


@pytest.fixture
def agent_dataset(tmp_path):
    dataset = make_agent_dataset(tmp_path)
    yield dataset
    dataset.delete()


def interrupt_on_call(monkeypatch, owner, name: str, nth: int = 1) -> list:
    """Raise KeyboardInterrupt at the `nth` call of `owner.name` (a kill at that point); returns the calls seen."""
    calls = []
    original = getattr(owner, name)

    def interrupted(*args, **kwargs):
        calls.append(args[1:2])
        if len(calls) == nth:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, interrupted)
    return calls


def assert_first_evaluation(dataset, count: int = 4) -> None:
    dataset.reload()
    assert dataset.list_evaluations() == ["eval"]
    assert dataset.load_evaluation_results("eval").metrics()["count"] == count
    assert dataset.values("eval_iou")[:count] == pytest.approx(EVAL_IOUS[:count])


def test_an_eval_key_whose_field_is_the_users_is_refused_before_anything_is_registered(agent_dataset):
    agent_dataset.clone_sample_field("veteran_mask", "mine_iou")  # a field of the user's, not an evaluation's
    with pytest.raises(ValueError, match="eval_key 'mine' would write the field 'mine_iou'"):
        evaluate(agent_dataset, "veteran", eval_key="mine")
    assert agent_dataset.list_evaluations() == []
    agent_dataset.delete_evaluations()
    assert agent_dataset.has_field("mine_iou")
    with pytest.raises(ValueError, match="nothing to evaluate: the view .* is empty"):
        evaluate(agent_dataset.limit(0), "veteran", eval_key="empty")
    assert agent_dataset.list_evaluations() == []


@pytest.mark.parametrize("step", ["register_run", "write_fields", "save_run_results"])
def test_an_evaluation_cut_off_before_its_commit_leaves_the_earlier_one(agent_dataset, monkeypatch, step):
    from sam_veteran.plugin.evaluation import ReasonSegEvaluation

    evaluate(agent_dataset.limit(3), "veteran", eval_key="eval")
    interrupt_on_call(monkeypatch, ReasonSegEvaluation if step == "write_fields" else EvaluationMethod, step)
    with pytest.raises(KeyboardInterrupt):
        evaluate(agent_dataset, "veteran", eval_key="eval")
    monkeypatch.undo()
    assert agent_dataset.load_evaluation_results("eval").metrics()["count"] == 3
    assert agent_dataset.values("eval_iou") == pytest.approx(EVAL_IOUS[:3] + [None])

    evaluate(agent_dataset, "veteran", eval_key="eval")  # the rerun removes the staging run and completes
    assert_first_evaluation(agent_dataset)
    assert not agent_dataset.has_field(f"{staging_key('eval')}_iou")


@pytest.mark.parametrize("step,nth", [("delete_evaluation", 1), ("rename_evaluation", 1),
                                      ("rename_sample_fields", 1)])
def test_an_evaluation_cut_off_at_the_swap_is_finished_by_the_next_one(agent_dataset, monkeypatch, step, nth):
    evaluate(agent_dataset.limit(3), "veteran", eval_key="eval")
    interrupt_on_call(monkeypatch, fo.Dataset, step, nth)
    with pytest.raises(KeyboardInterrupt):
        evaluate(agent_dataset, "veteran", eval_key="eval")
    monkeypatch.undo()
    evaluate(agent_dataset.limit(1), "veteran", eval_key="other")  # another key's run leaves it alone
    assert staging_key("eval") in agent_dataset.list_evaluations()
    evaluate(agent_dataset, "veteran", eval_key="eval")
    agent_dataset.delete_evaluation("other")
    assert_first_evaluation(agent_dataset)
    assert set(agent_dataset.get_field_schema()) >= {"eval_iou", "eval_step_ious"}
    assert not any(name.startswith(staging_key("eval")) for name in agent_dataset.get_field_schema())


def test_rgb_ground_truth_is_named_as_such(agent_dataset):
    sample = agent_dataset.first()
    sample["ground_truth"] = fo.Segmentation(mask=np.zeros((8, 10, 3), np.uint8))
    sample.save()
    with pytest.raises(ValueError, match=f"sample {sample.id}: the ground_truth mask has shape \\(8, 10, 3\\).*"
                                         "not an RGB image"):
        evaluate(agent_dataset, "veteran", eval_key="eval")
