"""One run over several worker processes on the session's mongod server (conftest.py starts a real `mongod` and
hands it to every process through FIFTYONE_DATABASE_URI): launched as torchrun would, one killed mid-chunk and
rerun, and as delegated shard operations on two `fiftyone delegated launch`-style workers. Each compares its labels
with a single-process run's and counts, with the server's profiler, how often each sample's mask was written.
This test process is one of the workers where it can be (each extra process costs ~10 s of imports here)."""

import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
from fiftyone.operators.delegated import DelegatedOperationService

from agent_data import make_dataset
from sam_veteran.cli import main
from sam_veteran.plugin.agent.oracle import OraclePolicy
from sam_veteran.plugin.agent.policy import TransformersPolicy
from sam_veteran.plugin.demo import build_demo_dataset
from sam_veteran.plugin.inference import run_agent
from sam_veteran.run import run_main
from shard_worker import barrier, delayed, execute_one_shard
from test_run_operator import URI
from test_shard import labels_of, mask_writes, one_thread  # noqa: F401 (one_thread: autouse here too)

WORKER = Path(__file__).parent / "shard_worker.py"
DELAY = 0.3  # seconds added to each policy request: the model's time, so that every worker gets a part
pytestmark = pytest.mark.slow


@pytest.fixture
def scenes(tmp_path, request):
    """Generated scenes with ground truth (the simulated user reads it), persistent: the workers load it by name."""
    dataset = build_demo_dataset(tmp_path / "scenes", 12, name=f"shards-{request.node.name[:40]}")
    yield dataset
    dataset.delete()


def start(tmp_path: Path, name: str, *args: str, **env: str) -> subprocess.Popen:
    log = open(tmp_path / f"{name}.log", "w")
    return subprocess.Popen([sys.executable, str(WORKER), *args], stdout=log, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1", **env})


def finish(processes: dict[str, subprocess.Popen], tmp_path: Path, dataset) -> dict[str, str]:
    """Each worker's output, once all exited 0; `dataset` reloaded with the fields they added."""
    for name, process in processes.items():
        assert process.wait(timeout=300) == 0, (tmp_path / f"{name}.log").read_text()[-3000:]
    dataset.reload()
    return {name: (tmp_path / f"{name}.log").read_text() for name in processes}


def oracle_args(dataset, tiny_models, *more: str) -> list[str]:
    return [dataset.name, "--policy", "oracle", "--segmenter", str(tiny_models["segmenter"]), "--max-steps", "1",
            "--batch-size", "2", "--label-field", "sharded", *more]


def oracle_run(dataset, tiny_models, field: str = "single", **options) -> dict:
    """The workers' run in this process: by default on its own, the single-process run to compare with."""
    return run_agent(dataset, policy="oracle", segmenter=str(tiny_models["segmenter"]), max_steps=1, batch_size=2,
                     device="cpu", label_field=field, **options)


def chunk_workers(dataset, field: str) -> Counter:
    import fiftyone.core.odm as foo

    plan = f"{dataset._doc.id}/{field}"
    return Counter(doc["worker"] for doc in foo.get_db_conn()["sam_veteran_chunks"].find({"plan": plan}))


def test_three_workers_launched_like_torchrun_write_exactly_the_labels_of_one_process(scenes, tiny_models, tmp_path,
                                                                                      monkeypatch, capsys):
    """Ranks 1 and 2 in processes of their own, rank 0 in this one (through the same command line)."""
    oracle_run(scenes, tiny_models)
    ready = tmp_path / "ready"
    ready.mkdir()
    launch = {"WORLD_SIZE": "3", "TORCHELASTIC_RUN_ID": uuid.uuid4().hex}
    args = oracle_args(scenes, tiny_models, "--chunk-size", "2")
    with mask_writes(scenes, "sharded") as writes:
        workers = {f"rank{rank}": start(tmp_path, f"rank{rank}", "launch", str(ready), "3", str(DELAY), "0", "-",
                                        *args, **launch, RANK=str(rank), LOCAL_RANK=str(rank))
                   for rank in (1, 2)}
        for name, value in {**launch, "RANK": "0", "LOCAL_RANK": "0"}.items():
            monkeypatch.setenv(name, value)
        monkeypatch.setattr(OraclePolicy, "generate", delayed(OraclePolicy, DELAY))
        barrier(str(ready), 3)
        capsys.readouterr()
        assert run_main(args) == 0
        logs = {"rank0": capsys.readouterr().out, **finish(workers, tmp_path, scenes)}
    assert labels_of(scenes, "sharded") == labels_of(scenes, "single")
    assert writes == Counter({sample_id: 1 for sample_id in scenes.values("id")})
    done_by = chunk_workers(scenes, "sharded")
    assert sorted(done_by) == [0, 1, 2] and sum(done_by.values()) == 6  # every worker did a part, each chunk once
    for rank in range(3):
        assert f"worker {rank}/3: wrote {2 * done_by[rank]} samples (0 could not be run)" in logs[f"rank{rank}"]
    assert f"run torchrun-{launch['TORCHELASTIC_RUN_ID']} on 'sharded' (3 of 3 workers reported): 12 samples " \
           "written, 0 could not be run, 0 already had results, of 12" in logs["rank0"]
    assert "reported" not in logs["rank1"] + logs["rank2"]  # the run's summary comes from rank 0 alone


def test_a_worker_killed_mid_chunk_is_rerun_and_no_sample_is_lost_or_written_twice(scenes, tiny_models, tmp_path,
                                                                                    capsys):
    oracle_run(scenes, tiny_models)
    ready, marker = tmp_path / "ready", tmp_path / "paused"
    ready.mkdir()
    with mask_writes(scenes, "sharded") as writes:
        killed = start(tmp_path, "killed", "launch", str(ready), "1", "0", "2", str(marker),  # before its 2nd batch
                       *oracle_args(scenes, tiny_models, "--chunk-size", "4", "--shard", "1/2", "--run-id", "job"))
        deadline = time.monotonic() + 240
        while not marker.exists():
            assert killed.poll() is None and time.monotonic() < deadline, (tmp_path / "killed.log").read_text()
            time.sleep(0.05)
        killed.send_signal(signal.SIGKILL)
        assert killed.wait(timeout=30) == -signal.SIGKILL
        capsys.readouterr()
        assert main(["run-status", scenes.name, "sharded"]) == 0
        status = capsys.readouterr().out
        assert "0 of 3 chunks done (0 of 12 samples), running: 1 chunks held, 2 free" in status
        assert f"process {killed.pid} on" in status and "(dead)" in status
        assert scenes.exists("sharded_mask").count() == 2  # the first batch of its chunk

        # The launcher restarts the dead worker (same run id), then the other one starts
        rerun = oracle_run(scenes, tiny_models, "sharded", shard=(1, 2), run_id="job", chunk_size=4)
        summary = oracle_run(scenes, tiny_models, "sharded", shard=(0, 2), run_id="job", chunk_size=4)
    assert writes == Counter({sample_id: 1 for sample_id in scenes.values("id")})
    assert labels_of(scenes, "sharded") == labels_of(scenes, "single")
    assert (rerun["done"], rerun["skipped"], rerun["final"]) == (10, 0, None)  # the rest of its chunk, then on
    final = summary["final"]
    assert (final["reported"], final["done"], final["skipped"], final["samples"]) == (2, 10, 0, 12)
    assert [report["shard"] for report in final["per_worker"]] == ["0/2", "1/2"]


def test_two_delegated_shard_operations_on_two_worker_processes_complete_the_run(installed_plugin, tiny_models,
                                                                                 tmp_path, monkeypatch):
    """One worker in a process of its own, the other this one, each executing queued operations as `fiftyone
    delegated launch` does."""
    import fiftyone.operators as foo

    dataset = make_dataset(tmp_path, 8, name=f"shards-delegated-{uuid.uuid4().hex[:8]}")
    dataset.persistent = True
    params = {"policy": str(tiny_models["policy-qwen2_5_vl"]), "segmenter": str(tiny_models["segmenter"]),
              "max_steps": 1, "max_new_tokens": 16, "batch_size": 1}
    try:
        foo.get_operator(URI)(dataset, label_field="single", **params)  # one process: the reference
        ready = tmp_path / "ready"
        ready.mkdir()
        queued = foo.get_operator(URI)(dataset, label_field="sharded", workers=2, delegate=True, **params)
        assert queued.error is None, queued.error
        with mask_writes(dataset, "sharded") as writes:
            other = start(tmp_path, "other", "delegated", str(ready), "2", str(DELAY), dataset.name, URI,
                          params["policy"])
            monkeypatch.setattr(TransformersPolicy, "generate", delayed(TransformersPolicy, DELAY))
            here = execute_one_shard(str(ready), 2, dataset.name, URI)
            there = finish({"other": other}, tmp_path, dataset)["other"].strip().splitlines()[-1]
        assert sorted([here, there]) == ["0/2", "1/2"]
        service = DelegatedOperationService()
        operations = service.list_operations(operator=URI, dataset_name=dataset.name)
        fan_out = service.get(queued.result["id"])
        assert fan_out.run_state == "completed" and len(fan_out.result.result["queued"]) == 2
        shards = [op for op in operations if op.context.params.get("shard")]
        assert sorted(op.run_state for op in shards) == ["completed", "completed"]
        for op in shards:  # per-shard progress in the delegated-operations list
            assert op.status.progress == 1.0 and op.status.label.startswith(f"worker {op.result.result['shard']}: ")
        assert labels_of(dataset, "sharded") == labels_of(dataset, "single")  # the same greedy answers
        assert writes == Counter({sample_id: 1 for sample_id in dataset.values("id")})
        assert sorted(chunk_workers(dataset, "sharded")) == [0, 1]
    finally:
        dataset.delete()
