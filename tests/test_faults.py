"""Faults mid-run: runs killed with SIGKILL (agent, delegated operation, training, evaluation, import, export) and
two runs at once.

The runs under test are separate processes (tests/fault_worker.py, `sam-veteran train`) sharing this session's
FiftyOne database; a test watches the database or the output folder and kills the process part-way.
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import fiftyone as fo
import numpy as np
import pytest
import torch
from fiftyone.operators.delegated import DelegatedOperationService

from agent_data import SIZES, box_then_click, make_dataset, scripted_policy
from sam_veteran.plugin.agent import Agent, AgentConfig
from sam_veteran.plugin.inference import run_agent
from sam_veteran.plugin.lease import RunLeaseError
from sam_veteran.plugin.model import SamVeteranModel
from test_run_operator import URI
from test_safe_loading import SECRET, database_text, files_text

WORKER = Path(__file__).parent / "fault_worker.py"
TINY_YAML = Path(__file__).resolve().parents[1] / "trainer" / "configs" / "tiny.yaml"
CLI = "import sys; from sam_veteran.cli import main; sys.exit(main(sys.argv[1:]))"


@pytest.fixture
def shared_dataset(tmp_path, request):
    """A persistent dataset (other processes load it by name) of 12 samples, deleted afterwards."""
    dataset = make_dataset(tmp_path, 12, name=f"faults-{request.node.name[:40]}")
    dataset.persistent = True
    yield dataset
    dataset.delete()


def start(tmp_path: Path, name: str, *args: str) -> subprocess.Popen:
    """A Python process with a Hub token in its environment, which must end up nowhere (see test_safe_loading)."""
    log = open(tmp_path / f"{name}.log", "w")
    return subprocess.Popen([sys.executable, *args], stdout=log, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "HF_TOKEN": SECRET})


def kill_when(process: subprocess.Popen, condition, log: Path, timeout: float = 240) -> None:
    """SIGKILL `process` as soon as `condition()` holds; fail if it ends or times out first."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, f"ended before the kill point:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"kill point not reached in {timeout} s:\n{log.read_text()[-3000:]}"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    assert process.wait(timeout=30) == -signal.SIGKILL


def finished(dataset, field: str = "veteran_mask") -> int:
    """Samples with `field` as the database has them now (another process adds the field)."""
    dataset.reload()
    return dataset.exists(field).count() if dataset.has_sample_field(field) else 0


def scripted_model(segmenter):
    policy = scripted_policy(box_then_click)
    return policy, SamVeteranModel(agent=Agent(policy, segmenter, AgentConfig(max_steps=3)))


def assert_complete_and_correct(dataset, field: str, reference: str) -> None:
    """Every sample has all three labels, consistent with each other and equal to the reference run's."""
    for sample in dataset.select_fields([f"{field}_mask", f"{field}_steps", f"{field}_clicks",
                                         f"{reference}_mask"]):
        mask, steps, clicks = (sample[f"{field}_{key}"] for key in ("mask", "steps", "clicks"))
        assert mask.end_reason == "agent_stopped" and mask.num_steps == 2, sample.id
        assert [d.step for d in steps.detections] == [0, 1]  # once each: nothing duplicated
        assert [k.step for k in clicks.keypoints] == [1]
        assert np.array_equal(mask.mask, sample[f"{reference}_mask"].mask), sample.id


def test_a_kill_between_the_writes_of_a_batch_leaves_no_mask_without_its_steps(shared_dataset, tiny_segmenter,
                                                                               monkeypatch):
    """The mask (which marks a sample done) is written after its steps and clicks."""
    writes = []
    set_values = fo.Dataset.set_values

    def killed_on_the_sixth_write(dataset, field, values, **kwargs):
        if len(writes) == 5:
            raise KeyboardInterrupt  # the second batch's steps and clicks are written, its mask is not
        writes.append(field)
        return set_values(dataset, field, values, **kwargs)

    monkeypatch.setattr(fo.Dataset, "set_values", killed_on_the_sixth_write)
    with pytest.raises(KeyboardInterrupt):
        run_agent(shared_dataset, scripted_model(tiny_segmenter)[1], batch_size=4)
    assert writes == ["veteran_steps", "veteran_clicks", "veteran_mask", "veteran_steps", "veteran_clicks"]
    monkeypatch.undo()
    assert shared_dataset.exists("veteran_mask").count() == 4
    assert shared_dataset.exists("veteran_steps").count() == 8  # the second batch: steps without a mask

    policy, model = scripted_model(tiny_segmenter)
    summary = run_agent(shared_dataset, model, batch_size=4)
    assert (summary["skipped"], summary["done"]) == (4, 8)  # the half-written batch is run again
    assert {q for q, step, _ in policy.calls if step == 0} == {f"object {i}" for i in range(4, 12)}
    run_agent(shared_dataset, scripted_model(tiny_segmenter)[1], label_field="reference")
    assert_complete_and_correct(shared_dataset, "veteran", "reference")


@pytest.mark.slow
def test_a_run_killed_halfway_is_completed_by_a_rerun_of_exactly_the_rest(shared_dataset, tiny_models,
                                                                          tiny_segmenter, tmp_path):
    process = start(tmp_path, "run", str(WORKER), "run", shared_dataset.name, "veteran",
                    str(tiny_models["segmenter"]), "0.1", "1")
    deadline = time.monotonic() + 240
    while not finished(shared_dataset) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    with pytest.raises(RunLeaseError, match=f"another run is writing .*process {process.pid} on"):
        run_agent(shared_dataset, scripted_model(tiny_segmenter)[1])  # the two would interleave their labels
    kill_when(process, lambda: finished(shared_dataset) >= 6, tmp_path / "run.log")

    done = shared_dataset.exists("veteran_mask")
    kept = {s.id: s["veteran_mask"].id for s in done.select_fields("veteran_mask")}
    assert 6 <= len(kept) < 12
    assert done.exists("veteran_steps", False).count() == 0  # no mask without its steps
    policy, model = scripted_model(tiny_segmenter)
    summary = run_agent(shared_dataset, model, batch_size=4)
    assert (summary["skipped"], summary["to_run"], summary["done"]) == (len(kept), 12 - len(kept), 12 - len(kept))
    missing = set(shared_dataset.values("query")) - set(shared_dataset.select(list(kept)).values("query"))
    assert {q for q, step, _ in policy.calls if step == 0} == missing
    after = dict(zip(*shared_dataset.select(list(kept)).values(["id", "veteran_mask.id"])))
    assert after == kept  # the killed run's labels were kept, not written again
    run_agent(shared_dataset, scripted_model(tiny_segmenter)[1], label_field="reference")
    assert_complete_and_correct(shared_dataset, "veteran", "reference")


@pytest.mark.slow
def test_a_killed_delegated_run_is_marked_failed_then_rerun_does_the_rest(installed_plugin,
                                                                         shared_dataset, tiny_models, tmp_path):
    import fiftyone.operators as foo

    params = {"policy": str(tiny_models["policy-qwen2_5_vl"]), "segmenter": str(tiny_models["segmenter"]),
              "max_steps": 1, "max_new_tokens": 16, "batch_size": 1}
    queued = foo.get_operator(URI)(shared_dataset, delegate=True, **params)
    assert queued.error is None, queued.error
    service = DelegatedOperationService()
    process = start(tmp_path, "delegated", str(WORKER), "delegated", shared_dataset.name, URI)
    kill_when(process, lambda: finished(shared_dataset) >= 6, tmp_path / "delegated.log")
    done = finished(shared_dataset)

    killed = service.get(queued.result["id"])
    assert killed.run_state == "running"  # FiftyOne cannot tell: the operation stays "running"
    assert 0 < killed.status.progress < 1
    service.set_failed(killed.id)  # what `fiftyone delegated fail <id>` does
    assert service.get(killed.id).run_state == "failed"
    rerun = service.rerun_operation(killed.id)  # `fiftyone delegated rerun <id>`: the same parameters, queued
    service.execute_queued_operations(operator=URI, dataset_name=shared_dataset.name)
    rerun = service.get(rerun.id)
    assert rerun.run_state == "completed", rerun.result
    summary = rerun.result.result
    assert (summary["skipped"], summary["done"], summary["total"]) == (done, 12 - done, 12)
    assert shared_dataset.exists("veteran_mask").count() == 12
    for sample in shared_dataset.select_fields(["veteran_mask", "veteran_steps"]):
        assert len(sample["veteran_steps"].detections) == sample["veteran_mask"].num_steps
    assert SECRET not in database_text() + (tmp_path / "delegated.log").read_text()


@pytest.mark.slow
def test_two_runs_writing_different_fields_at_once_both_keep_their_labels(shared_dataset, tiny_models,
                                                                          tiny_segmenter, tmp_path):
    runs = {field: start(tmp_path, field, str(WORKER), "run", shared_dataset.name, field,
                         str(tiny_models["segmenter"]), "0", "3") for field in ("first", "second")}
    for field, process in runs.items():
        assert process.wait(timeout=300) == 0, (tmp_path / f"{field}.log").read_text()[-3000:]
        summary = json.loads((tmp_path / f"{field}.log").read_text().strip().splitlines()[-1])
        assert (summary["done"], summary["failed"]) == (12, 0)
    fresh = subprocess.run([sys.executable, "-c", "import sys, fiftyone as fo; "
                            "print(' '.join(fo.load_dataset(sys.argv[1]).get_field_schema()))",
                            shared_dataset.name], capture_output=True, text=True, check=True)
    schema = set(fresh.stdout.split())  # the schema as any other process now sees it
    assert {f"{field}_{key}" for field in runs for key in ("mask", "steps", "clicks")} <= schema
    shared_dataset.reload()
    run_agent(shared_dataset, scripted_model(tiny_segmenter)[1], label_field="reference")
    for field in runs:
        assert_complete_and_correct(shared_dataset, field, "reference")


@pytest.mark.slow
def test_a_killed_training_run_resumes_from_its_last_checkpoint(tmp_path, monkeypatch, capsys):
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY_YAML.read_text().replace("save_steps: 3", "save_steps: 1")
                      .replace("max_steps: 3", "max_steps: 5"))
    out = tmp_path / "run"
    process = start(tmp_path, "train", "-c", CLI, "train", "--config", str(config), "--output-dir", str(out))
    kill_when(process, lambda: saved(out / "checkpoint-2"), tmp_path / "train.log", timeout=400)
    complete = max(int(p.parent.name.split("-")[1]) for p in out.glob("checkpoint-*/trainer_state.json"))
    assert complete < 5 and not (out / "final").exists()
    logged = (out / "metrics.jsonl").read_text().splitlines()

    from sam_veteran.cli import main

    monkeypatch.setenv("HF_TOKEN", SECRET)
    stranger = tmp_path / "stranger" / f"checkpoint-{complete}"  # optimiser state that runs code when unpickled
    shutil.copytree(out / f"checkpoint-{complete}", stranger)
    torch.save({"state": RunsCode(tmp_path / "ran.txt"), "param_groups": []}, stranger / "optimizer.pt")
    capsys.readouterr()
    assert main(["train", "--config", str(config), "--output-dir", str(tmp_path / "stranger"), "--resume",
                 str(stranger)]) == 2  # refused, as a CLI error
    assert re.search("(?i)weights.only|unsupported global", capsys.readouterr().err)
    assert not (tmp_path / "ran.txt").exists()

    assert main(["train", "--config", str(config), "--output-dir", str(out), "--resume", "--json"]) == 0
    resumed = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()[len(logged):]
               if "reward" in json.loads(line)]
    assert resumed == list(range(complete + 1, 6))  # on from the checkpoint's step, none done twice
    state = json.loads((out / "checkpoint-5" / "trainer_state.json").read_text())
    assert state["global_step"] == 5
    optimizer = torch.load(out / "checkpoint-5" / "optimizer.pt", weights_only=True)["state"]
    assert {int(s["step"]) for s in optimizer.values()} == {5}  # AdamW went on from the checkpoint's moments
    assert (out / "final" / "model.safetensors").exists()
    assert SECRET.encode() not in files_text(tmp_path)  # config, checkpoints, TensorBoard events, the log


class RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def saved(checkpoint: Path) -> bool:
    """The trainer state, written last, is there and whole."""
    try:
        return json.loads((checkpoint / "trainer_state.json").read_text())["global_step"] > 0
    except (OSError, ValueError):
        return False


def test_resume_latest_skips_a_checkpoint_cut_off_while_saving(tmp_path):
    from sam_veteran.trainer.train import latest_checkpoint

    for step, files in ((2, ["model.safetensors", "trainer_state.json"]), (3, ["model.safetensors"])):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        for name in files:
            (folder / name).write_text("{}")
    assert latest_checkpoint(tmp_path) == str(tmp_path / "checkpoint-2")  # 3 has no trainer state: cut off
    assert latest_checkpoint(tmp_path / "nothing") is None



def killed_at(tmp_path: Path, name: str, target: str, nth: int, when: str, *operation: str) -> None:
    """Run `operation` in a worker that stops at the `nth` call of `target`, and SIGKILL it there."""
    marker = tmp_path / f"{name}.here"
    process = start(tmp_path, name, str(WORKER), "pause", target, str(nth), when, str(marker), *operation)
    kill_when(process, marker.exists, tmp_path / f"{name}.log")


SET_VALUES = "fiftyone.core.collections:SampleCollection.set_values"
# Two kill points an operation (each one a process start, ~10 s): before its commit and mid-swap. The other
# points are interrupted in-process by test_atomic.py.
EVALUATION_KILLS = {"writing": (SET_VALUES, 1, "after"),
                    "mid-swap": ("fiftyone.core.collections:SampleCollection.delete_evaluation", 1, "after")}


@pytest.mark.slow
@pytest.mark.parametrize("point", EVALUATION_KILLS)
def test_a_killed_evaluation_leaves_the_earlier_one_and_a_rerun_completes(tmp_path, point):
    from eval_data import make_agent_dataset
    from sam_veteran import evaluate
    from sam_veteran.plugin.evaluation import staging_key

    dataset = make_agent_dataset(tmp_path)
    dataset.name, dataset.persistent = f"faults-eval-{point.replace(' ', '-')}", True
    evaluate(dataset.limit(3), "veteran", eval_key="eval")
    killed_at(tmp_path, "eval", *EVALUATION_KILLS[point], "evaluate", dataset.name, "veteran", "eval")
    dataset.reload()
    if point == "mid-swap":  # committed, the earlier run deleted: the new one waits under the staging key
        assert dataset.list_evaluations() == [staging_key("eval")]
        assert dataset.load_evaluation_results(staging_key("eval")).metrics()["count"] == 4
    else:
        assert dataset.load_evaluation_results("eval").metrics()["count"] == 3
        assert dataset.values("eval_iou")[:3] == pytest.approx([1.0, 0.9, 0.0])
    evaluate(dataset, "veteran", eval_key="eval")
    assert dataset.list_evaluations() == ["eval"]
    assert dataset.load_evaluation_results("eval").metrics()["count"] == 4
    assert dataset.values("eval_iou") == pytest.approx([1.0, 0.9, 0.0, 1.0])
    assert not any(staging_key("eval") in field for field in dataset.get_field_schema())
    dataset.delete()


IMPORT_KILLS = {"adding": ("fiftyone.core.dataset:Dataset.add_samples", 2, "after"),
                "mid-swap": ("fiftyone:delete_dataset", 1, "after")}


@pytest.mark.slow
@pytest.mark.parametrize("point", IMPORT_KILLS)
def test_a_killed_import_leaves_no_partial_dataset_and_a_rerun_completes(tmp_path, point):
    from sam_veteran import import_reasonseg
    from sam_veteran.plugin.datasets import common
    from test_atomic import reasonseg_folder, staging_datasets

    name = f"faults-import-{point.replace(' ', '-')}"
    import_reasonseg(reasonseg_folder(tmp_path / "small", 3), name=name, persistent=True)
    big = reasonseg_folder(tmp_path / "big", 2 * common.CHUNK + 5)
    killed_at(tmp_path, "import", *IMPORT_KILLS[point], "import", str(big), name)
    assert len(staging_datasets()) == 1  # the killed import's, until the next import
    if point == "mid-swap":  # committed, the earlier dataset deleted: the next import moves the new one in
        assert not fo.dataset_exists(name)
        assert common.clean_interrupted_imports() == [] and fo.load_dataset(name).count("id") == 2 * common.CHUNK + 5
    else:
        assert fo.load_dataset(name).count("id") == 3
    dataset = import_reasonseg(big, name=name, overwrite=True, persistent=True)
    assert dataset.count("id") == 2 * common.CHUNK + 5 and staging_datasets() == []
    dataset.delete()


EXPORT_KILLS = {"writing": ("shutil:copyfile", 2, "after"), "mid-swap": ("pathlib:Path.rename", 1, "after")}


@pytest.mark.slow
@pytest.mark.parametrize("point", EXPORT_KILLS)
def test_a_killed_export_keeps_the_earlier_one_and_a_rerun_completes(tmp_path, point):
    from sam_veteran.plugin.datasets.exporters import export_reasonseg
    from test_atomic import exported

    dataset = make_dataset(tmp_path, 6, name=f"faults-export-{point.replace(' ', '-')}")
    dataset.persistent = True
    dataset.set_values("ground_truth", [fo.Segmentation(mask=np.ones((height, width), np.uint8))
                                        for width, height in (SIZES[i % len(SIZES)] for i in range(6))])
    dataset.tag_samples("val")
    out = tmp_path / "out"
    export_reasonseg(dataset.limit(2), out)
    killed_at(tmp_path, "export", *EXPORT_KILLS[point], "export", dataset.name, str(out))
    if point == "mid-swap":  # the earlier export set aside, the new one not yet moved in
        assert not out.exists() and exported(tmp_path / ".out.previous") == 2
    else:
        assert exported(out) == 2
    export_reasonseg(dataset, out, overwrite=True)
    assert exported(out) == 6
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []
    dataset.delete()


def start_mongod(directory: Path, port: int) -> subprocess.Popen:
    """FiftyOne's mongod on `directory` with periodic checkpoints off: only the journal survives a SIGKILL, so
    collection counts (kept with the checkpoints) come back stale while every document is there."""
    import importlib.util

    mongod = Path(importlib.util.find_spec("fiftyone").submodule_search_locations[0]) / "db" / "bin" / "mongod"
    directory.mkdir(exist_ok=True)
    process = subprocess.Popen([str(mongod), "--dbpath", str(directory), "--port", str(port), "--bind_ip",
                                "127.0.0.1", "--nounixsocket", "--syncdelay", "0", "--logpath",
                                str(directory / "mongod.log")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return process
        except OSError:
            assert process.poll() is None and time.monotonic() < deadline, (directory / "mongod.log").read_text()
            time.sleep(0.1)


@pytest.mark.slow
def test_after_an_unclean_database_restart_the_summary_counts_the_samples(tmp_path, tiny_models):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "FIFTYONE_DATABASE_URI": f"mongodb://127.0.0.1:{port}"}
    database = start_mongod(tmp_path / "db", port)
    try:
        subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); from pathlib import Path; "
                        "from agent_data import make_dataset; "
                        "make_dataset(Path(sys.argv[2]), 13, name='unclean').persistent = True",
                        str(WORKER.parent), str(tmp_path)], env=env, check=True, capture_output=True)
        time.sleep(1)  # the journal is flushed every 100 ms
        database.send_signal(signal.SIGKILL)
        database.wait(timeout=30)
        database = start_mongod(tmp_path / "db", port)
        done = subprocess.run([sys.executable, str(WORKER), "run", "unclean", "veteran", str(tiny_models["segmenter"]),
                               "0", "4"], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        summary = json.loads(done.stdout.strip().splitlines()[-1])
        assert (summary["total"], summary["skipped"], summary["to_run"], summary["done"]) == (13, 0, 13, 13)
    finally:
        database.terminate()
        database.wait(timeout=30)
