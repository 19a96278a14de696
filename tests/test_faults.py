"""Faults mid-run: runs killed with SIGKILL (agent, delegated operation, training) and two runs at once.

The runs under test are separate processes (tests/fault_worker.py, `sam-veteran train`) sharing this session's
FiftyOne database; a test watches the database or the output folder and kills the process part-way.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import fiftyone as fo
import numpy as np
import pytest
import torch
from fiftyone.operators.delegated import DelegatedOperationService

from agent_data import box_then_click, make_dataset, scripted_policy
from sam_veteran.plugin.agent import Agent, AgentConfig
from sam_veteran.plugin.inference import run_agent
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

