"""Every long-running writer completes or leaves the previous state intact: evaluation, import and export.

An interruption at each step is a `KeyboardInterrupt` raised from the FiftyOne or file-system call of that step
(the SIGKILL versions, in other processes, are in test_faults.py); a rerun then finishes the job.
"""

import json
import shutil
import socket
from pathlib import Path

import fiftyone as fo
import numpy as np
import pytest
from fiftyone.core.evaluation import EvaluationMethod

from eval_data import make_agent_dataset
from sam_veteran import import_reasonseg
from sam_veteran.plugin.datasets.common import STAGING_PREFIX
from sam_veteran.plugin.datasets.exporters import export_reasonseg
from sam_veteran.plugin.evaluation import evaluate, staging_key

HOST = socket.gethostname()

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


def reasonseg_folder(folder, count: int, stem: str = "item"):
    """`count` ReasonSeg items of 30x20 images with one target rectangle each."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.fromarray(np.full((20, 30, 3), i, np.uint8)).save(folder / f"{stem}{i:03d}.jpg")
        (folder / f"{stem}{i:03d}.json").write_text(json.dumps({
            "text": [f"thing {i}"], "is_sentence": False,
            "shapes": [{"label": "target", "points": [[2, 2], [12, 2], [12, 10], [2, 10]]}]}))
    return folder


def staging_datasets() -> list[str]:
    return fo.list_datasets(glob_patt=f"{STAGING_PREFIX}*")


def orphan(staging: str) -> None:
    """Mark a staging dataset as left by a process gone from this host (a pid above Linux's limit), as after a
    SIGKILL (in-process, the interrupted import itself is alive)."""
    from sam_veteran.plugin.datasets import common

    dataset = fo.load_dataset(staging)
    dataset.info[common.STAGING_INFO].update(host=HOST, pid=2 ** 22 + 1)
    dataset.save()


def test_an_import_cut_off_while_adding_leaves_no_partial_dataset_and_the_earlier_one(tmp_path, monkeypatch):
    from sam_veteran.plugin.datasets import common

    monkeypatch.setattr(common, "CHUNK", 4)
    import_reasonseg(reasonseg_folder(tmp_path / "small", 3), name="atomic-import", persistent=True)
    interrupt_on_call(monkeypatch, fo.Dataset, "add_samples", 2)  # after the first chunk of 4
    with pytest.raises(KeyboardInterrupt):
        import_reasonseg(reasonseg_folder(tmp_path / "big", 10), name="atomic-import", overwrite=True)
    monkeypatch.undo()
    dataset = fo.load_dataset("atomic-import")
    assert dataset.count("id") == 3 and dataset.info["import"]["items"] == 3 and staging_datasets() == []
    dataset = import_reasonseg(tmp_path / "big", name="atomic-import", overwrite=True, persistent=True)
    assert dataset.count("id") == 10 and dataset.persistent
    dataset.delete()


@pytest.mark.parametrize("earlier", [False, True])
def test_an_import_cut_off_at_its_swap_is_finished_by_the_next(tmp_path, monkeypatch, earlier):
    """Before the earlier dataset is deleted, it stays (the staging one is dropped); after, the new one moves in."""
    from sam_veteran.plugin.datasets import common

    if earlier:
        import_reasonseg(reasonseg_folder(tmp_path / "small", 2), name="atomic-swap", persistent=True)
        interrupt_on_call(monkeypatch, fo, "delete_dataset")
    else:
        interrupt_on_call(monkeypatch, common, "_swap_in")  # committed, not yet renamed
    with pytest.raises(KeyboardInterrupt):
        import_reasonseg(reasonseg_folder(tmp_path / "items", 3), name="atomic-swap", overwrite=True,
                         persistent=True)
    monkeypatch.undo()
    (staging,) = staging_datasets()
    assert common.clean_interrupted_imports() == [staging]  # its importer (this process) is alive: left alone
    orphan(staging)
    assert common.clean_interrupted_imports() == [] and staging_datasets() == []
    dataset = fo.load_dataset("atomic-swap")
    assert dataset.count("id") == (2 if earlier else 3) and dataset.persistent
    assert common.STAGING_INFO not in dataset.info
    dataset.delete()


def test_a_live_imports_staging_dataset_is_listed_and_left_alone(tmp_path):
    from sam_veteran.plugin.datasets import common

    staging = fo.Dataset(f"{STAGING_PREFIX}elsewhere")
    staging.info[common.STAGING_INFO] = {"target": "x", "host": "another-host", "pid": 1, "complete": False}
    staging.save()
    assert common.clean_interrupted_imports() == [staging.name]
    staging.info[common.STAGING_INFO]["pid"], staging.info[common.STAGING_INFO]["host"] = 2 ** 22 + 1, HOST
    staging.save()  # a pid above Linux's limit: a process gone from this host
    assert common.clean_interrupted_imports() == [] and not fo.dataset_exists(staging.name)


@pytest.fixture
def export_source(tmp_path):
    from PIL import Image

    dataset = fo.Dataset()
    for i in range(3):
        path = tmp_path / f"img{i}.png"
        Image.fromarray(np.full((20, 30, 3), i, np.uint8)).save(path)
        mask = np.zeros((20, 30), np.uint8)
        mask[2:10, 2:12] = 1
        dataset.add_sample(fo.Sample(filepath=str(path), query=f"thing {i}", ground_truth=fo.Segmentation(mask=mask),
                                     tags=["val"]))
    yield dataset
    dataset.delete()


def exported(folder: Path) -> int:
    return sum(len(json.loads(p.read_text())["text"]) for p in folder.rglob("*.json"))


@pytest.mark.parametrize("nth", [1, 2])
def test_an_export_cut_off_at_the_swap_keeps_the_earlier_export(export_source, tmp_path, monkeypatch, nth):
    out = tmp_path / "out"
    export_reasonseg(export_source.limit(1), out)
    interrupt_on_call(monkeypatch, Path, "rename", nth)  # 1: setting the earlier one aside, 2: moving the new in
    with pytest.raises(KeyboardInterrupt):
        export_reasonseg(export_source, out, overwrite=True)
    monkeypatch.undo()
    assert exported(out) == 1 if out.exists() else (tmp_path / ".out.previous").is_dir()
    export_reasonseg(export_source.limit(2), tmp_path / "elsewhere")  # another folder's export leaves it be
    export_reasonseg(export_source, out, overwrite=True)
    assert exported(out) == 3
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_an_export_killed_while_writing_leaves_its_staging_folder_to_the_next(export_source, tmp_path, monkeypatch):
    from sam_veteran.plugin.datasets import exporters

    out = tmp_path / "out"
    export_reasonseg(export_source.limit(1), out)
    interrupt_on_call(monkeypatch, exporters, "_write_image", 2)
    monkeypatch.setattr(shutil, "rmtree", lambda *a, **k: None)  # a SIGKILL runs no clean-up
    with pytest.raises(KeyboardInterrupt):
        export_reasonseg(export_source, out, overwrite=True)
    monkeypatch.undo()
    (partial,) = tmp_path.glob(".out.partial-*")
    owner = json.loads((partial / exporters.OWNER).read_text())
    (partial / exporters.OWNER).write_text(json.dumps({**owner, "pid": 2 ** 22 + 1}))  # its process is gone
    assert exported(out) == 1
    live = tmp_path / ".out.partial-live"
    live.mkdir()
    (live / exporters.OWNER).write_text(json.dumps({"host": "another-host", "pid": 1}))
    export_reasonseg(export_source, out, overwrite=True)
    assert exported(out) == 3 and not partial.exists() and live.is_dir()


def test_an_unmarked_staging_dataset_is_left_while_fresh_and_deleted_once_old(tmp_path):
    """Killed between creating its staging dataset and marking it, or marking it right now: age decides."""
    from datetime import timedelta

    from sam_veteran.plugin.datasets import common

    staging = fo.Dataset(f"{STAGING_PREFIX}unmarked")
    assert common.clean_interrupted_imports() == [staging.name]
    staging._doc.created_at -= timedelta(minutes=5)
    staging.save()
    assert common.clean_interrupted_imports() == [] and not fo.dataset_exists(staging.name)
