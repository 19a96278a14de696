"""One run over many workers, in this process: chunks claimed once each, a dead worker's chunk taken over where it
stopped, workers that disagree refused, the launchers' environment, the CLI's errors and status, the operator's
shard operations. The runs in processes of their own are in test_shard_processes.py."""

import threading
import time
from collections import Counter
from contextlib import contextmanager

import fiftyone.core.odm as foo
import numpy as np
import pytest
import torch
from fiftyone.operators.delegated import DelegatedOperationService

from agent_data import box_then_click, make_dataset, scripted_policy
from sam_veteran.cli import main
from sam_veteran.plugin import lease as lease_module
from sam_veteran.plugin import sharding
from sam_veteran.plugin.agent import Agent, AgentConfig
from sam_veteran.plugin.inference import run_agent
from sam_veteran.plugin.lease import RunLease
from sam_veteran.plugin.model import SamVeteranModel
from sam_veteran.plugin.sharding import ChunkQueue, from_environment, launcher_run_id, parse_shard
from test_lease import GONE_PID
from test_run_operator import URI


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread, as in the worker processes: on two shared cores, two make the tiny models' small
    operations several times slower (bench/README.md)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def dataset(tmp_path, request):
    ds = make_dataset(tmp_path, 10, name=f"shard-{request.node.name[:40]}")
    ds.persistent = True  # the CLI loads it by name
    yield ds
    ds.delete()


def model(segmenter, answers=box_then_click):
    policy = scripted_policy(answers)
    return policy, SamVeteranModel(agent=Agent(policy, segmenter, AgentConfig(max_steps=3)))


@contextmanager
def mask_writes(dataset, label_field: str):
    """Counts, per sample id, the updates of `<label_field>_mask` that the database server executed meanwhile (its
    profiler, on this dataset's collection only): a sample written twice shows 2."""
    db = foo.get_db_conn()
    ns = f"{db.name}.{dataset._dataset._sample_collection_name}"
    db.command("profile", 0)
    db.drop_collection("system.profile")
    db.create_collection("system.profile", capped=True, size=64 * 2 ** 20)
    db.command("profile", 2, filter={"ns": ns, "op": "update"})
    counts = Counter()
    try:
        yield counts
    finally:
        db.command("profile", 0)
        for entry in db["system.profile"].find({"ns": ns, "op": "update"}):
            if f"{label_field}_mask" in entry["command"].get("u", {}).get("$set", {}):
                counts[str(entry["command"]["q"]["_id"])] += 1


def labels_of(dataset, field: str) -> list[tuple]:
    """Each sample's labels of a run, comparable between runs (label ids differ, contents must not)."""
    out = []
    for sample in dataset.select_fields([f"{field}_mask", f"{field}_steps", f"{field}_clicks"]):
        mask, steps, clicks = (sample[f"{field}_{key}"] for key in ("mask", "steps", "clicks"))
        out.append((mask.end_reason, mask.num_steps, mask.mask.tobytes(),
                    [(d.step, d.bounding_box, d.mask.tobytes()) for d in steps.detections],
                    [(k.step, k.label, k.points) for k in clicks.keypoints]))
    return out


def test_workers_claim_each_chunk_once_and_a_dead_workers_chunk_goes_on_where_it_stopped(dataset, monkeypatch):
    monkeypatch.setattr(sharding, "POLL_SECONDS", 0.05)
    first, second = RunLease(dataset, "veteran", run_id="job-1"), RunLease(dataset, "veteran", run_id="job-1")
    with first, second:
        a = ChunkQueue(dataset, first, (0, 2), chunk_size=4, overwrite=False)
        b = ChunkQueue(dataset, second, (1, 2), chunk_size=4, overwrite=False)  # writes the same plan again
        held = a.claim()
        a.advance(held, 2)
        others = [b.claim(), b.claim()]
        assert [held.index] + [c.index for c in others] == [0, 1, 2]
        assert held.ids + others[0].ids + others[1].ids == dataset.values("id")  # the view's order, each id once
        for chunk in others:
            b.finish(chunk)
        waiting = []
        claimer = threading.Thread(target=lambda: waiting.append(b.claim()))
        claimer.start()
        time.sleep(0.5)
        assert claimer.is_alive()  # chunk 0's holder is alive: b waits, it does not take it
        lease_module._collection().update_one({"_id": first.key},  # a's process is gone (killed on this host)
                                              {"$set": {f"holders.{first.holder}.pid": GONE_PID}})
        claimer.join(timeout=10)
        taken = waiting[0]
        assert (taken.index, taken.written, taken.ids) == (0, 2, held.ids)
        assert not a.holds(held) and b.holds(taken)  # a, were it only stalled, would drop its batch
        b.finish(taken)
        assert b.claim() is None and b.run_done() == 10
        status = sharding.run_status(dataset, "veteran")
        assert (status["chunks_done"], status["chunks"], status["finished"]) == (3, 3, True)
        assert {h["alive"] for h in status["holders"]} == {True, False}


def test_an_interrupted_worker_leaves_the_rest_of_its_chunk_to_the_next_one_even_with_overwrite(
        dataset, tiny_segmenter, monkeypatch, capsys):
    monkeypatch.setattr(sharding, "REPORT_WAIT_SECONDS", 0.0)
    view = dataset.limit(8)
    run_agent(view, model(tiny_segmenter)[1], label_field="reference", batch_size=2)

    def interrupted(query, step, sampled):
        if query == "object 2":  # the second batch of chunk 0
            raise KeyboardInterrupt
        return box_then_click(query, step, sampled)

    options = dict(label_field="veteran", batch_size=2, chunk_size=4, overwrite=True, run_id="job-2")
    with mask_writes(dataset, "veteran") as writes:
        with pytest.raises(KeyboardInterrupt):
            run_agent(view, model(tiny_segmenter, interrupted)[1], shard=(1, 2), **options)
        policy, rest = model(tiny_segmenter)
        summary = run_agent(view, rest, shard=(0, 2), **options)
    # with overwrite nothing is skipped for having results: only the chunk's record of its written samples
    assert {q for q, step, _ in policy.calls if step == 0} == {f"object {i}" for i in range(2, 8)}
    assert writes == Counter({sample_id: 1 for sample_id in view.values("id")})
    assert (summary["done"], summary["run_done"], summary["run_samples"]) == (6, 8, 8)
    assert summary["final"]["reported"] == 1  # the interrupted worker never reported
    assert labels_of(view, "veteran") == labels_of(view, "reference")

    capsys.readouterr()
    assert main(["run-status", dataset.name, "veteran"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("run job-2 on 'veteran' of ") and "2 of 2 chunks done (8 of 8 samples), finished" in out
    assert "worker 0/2 finished: wrote 6 samples" in out


def test_workers_that_disagree_on_the_run_are_refused(dataset, tiny_segmenter):
    with RunLease(dataset, "veteran", run_id="job-3") as lease:
        ChunkQueue(dataset, lease, (0, 2), chunk_size=4, overwrite=False)
        with pytest.raises(ValueError, match="run 'job-3' .* was started with other samples"):
            ChunkQueue(dataset.limit(5), lease, (1, 2), chunk_size=4, overwrite=False)
        with pytest.raises(ValueError, match="with other workers \\(2 there, 3 here\\)"):
            ChunkQueue(dataset, lease, (1, 3), chunk_size=4, overwrite=False)
    with pytest.raises(ValueError, match="worker 1 of 2 needs the run_id"):
        run_agent(dataset, model(tiny_segmenter)[1], shard=(1, 2))
    with pytest.raises(ValueError, match="must be in 0..1 of 2 workers"):
        run_agent(dataset, model(tiny_segmenter)[1], shard=(2, 2), run_id="job-3")


def test_the_launchers_environment_gives_rank_world_size_local_rank_and_a_shared_run_id():
    torchrun = {"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "TORCHELASTIC_RUN_ID": "job7"}
    slurm = {"SLURM_PROCID": "3", "SLURM_NTASKS": "4", "SLURM_LOCALID": "0", "SLURM_JOB_ID": "991",
             "SLURM_STEP_ID": "2"}
    assert from_environment(torchrun) == (5, 8, 1) and launcher_run_id(torchrun) == "torchrun-job7"
    assert from_environment(slurm) == (3, 4, 0) and launcher_run_id(slurm) == "slurm-991.2"
    assert from_environment({**slurm, **torchrun}) == (5, 8, 1)  # torchrun under srun: torchrun's ranks
    assert launcher_run_id({"TORCHELASTIC_RUN_ID": "none"}) is None  # torchrun's default on several nodes
    assert from_environment({}) is None and parse_shard("2/4") == (2, 4)
    with pytest.raises(ValueError, match="INDEX/COUNT such as 0/4"):
        parse_shard("half")


def test_the_cli_says_what_a_sharded_run_is_missing(dataset, capsys, monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_JOB_ID", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    models = ["--policy", "oracle", "--segmenter", "mini"]
    assert main(["run", dataset.name, *models, "--shard", "auto"]) == 2
    assert "--shard auto found no launcher: neither RANK and WORLD_SIZE" in capsys.readouterr().err
    assert main(["run", dataset.name, *models, "--shard", "1/2"]) == 2
    assert "worker 1/2 needs a run id that all the run's workers share" in capsys.readouterr().err
    assert main(["run-status", dataset.name]) == 2
    assert "label field 'veteran' of " in capsys.readouterr().err


def test_the_run_operator_with_workers_queues_one_shard_operation_each(installed_plugin, dataset):
    import fiftyone.operators as foo_operators

    service = DelegatedOperationService()
    result = foo_operators.get_operator(URI)(dataset, policy="oracle", segmenter="mini", workers=3)
    assert result.error is None, result.error
    queued = service.list_operations(operator=URI, dataset_name=dataset.name)
    try:
        shards = sorted(tuple(op.context.params["shard"]) for op in queued)
        assert shards == [(0, 3), (1, 3), (2, 3)]
        assert len({op.context.params["run_id"] for op in queued}) == 1
        assert {op.run_state for op in queued} == {"queued"}
        assert sorted(op.label for op in queued)[0] == "SAM-Veteran: Run agent (worker 0/3)"
        assert {op.context.params["policy"] for op in queued} == {"oracle"}
    finally:
        for op in queued:
            service.delete_operation(op.id)


def test_a_mask_written_twice_is_counted_twice(dataset, tiny_segmenter):
    """The write counter that the run tests rely on sees every write."""
    with mask_writes(dataset, "veteran") as writes:
        run_agent(dataset.limit(2), model(tiny_segmenter)[1])
        run_agent(dataset.limit(2), model(tiny_segmenter)[1], overwrite=True)
    assert sorted(writes.values()) == [2, 2] and set(writes) == set(dataset.limit(2).values("id"))
    assert np.array_equal(*[m.mask for m in dataset.limit(2).values("veteran_mask")][:1] * 2)
