"""One run over many workers: the view's samples in chunks that workers claim from the database.

    run_agent(view, shard=(rank, world_size), run_id="job-42", ...)   # on every worker, the same view and run id

The first worker of a run writes its plan: the ids of the view, in the view's order, cut into chunks of
`chunk_size` (a multiple of the batch size keeps each batch what a single process would run). Every worker of the
run writes the same plan (the same ids give the same chunks, so writing it twice changes nothing) and claims
chunks one at a time with an atomic update, so no two workers hold one chunk. A worker records how far into its
chunk it has written, after each batch, and marks the chunk done at its end. A chunk whose holder is dead (by the
field's run lease, `lease.py`: at once for a process gone on this host, after the lease timeout elsewhere) is
handed to the next worker that asks, which goes on where the dead one stopped: a sample is written once, and a
worker that stalled past the timeout finds the chunk gone and drops its batch instead of writing it twice.
Workers that find no chunk to claim wait while others hold the rest, so a straggler that dies is still covered.

A rerun with the same run id (a restarted job) finishes that plan; a new run id plans again from the view, and
without `overwrite` skips the samples that already have results, so a rerun does exactly what is missing. One plan
is kept per label field (the latest run's), with each worker's summary, for `run_status`. Everything here is
FiftyOne-side bookkeeping: the agent does not know it is sharded.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from dataclasses import dataclass, field

from pymongo import ASCENDING, ReturnDocument
from pymongo.errors import BulkWriteError, DuplicateKeyError

from .lease import RunLease

PLANS = "sam_veteran_runs"
CHUNKS = "sam_veteran_chunks"
CHUNK_BATCHES = 4  # a chunk is this many batches unless chunk_size says otherwise
POLL_SECONDS = 1.0  # how often a worker without a chunk looks again while others hold the rest
REPORT_WAIT_SECONDS = 30.0  # how long worker 0 waits for the reports of workers not seen alive


@dataclass
class Chunk:
    """A claimed chunk: its ids in the view's order and how many of them were written before this claim."""

    key: str
    index: int
    ids: list[str] = field(repr=False)
    written: int


def parse_shard(spec: str) -> tuple[int, int]:
    """``"I/N"`` -> (I, N), worker I (from 0) of N."""
    try:
        index, count = (int(part) for part in spec.split("/"))
    except ValueError:
        raise ValueError(f"a shard is INDEX/COUNT such as 0/4, not {spec!r}") from None
    check_shard((index, count))
    return index, count


def check_shard(shard: tuple[int, int]) -> None:
    index, count = shard
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"shard {index}/{count}: the worker index must be in 0..{count - 1} of {count} workers")


def from_environment(environ) -> tuple[int, int, int] | None:
    """(rank, world size, local rank) as torchrun/accelerate (RANK, WORLD_SIZE, LOCAL_RANK) or SLURM (SLURM_PROCID,
    SLURM_NTASKS, SLURM_LOCALID) set them; None outside a launcher."""
    for rank, size, local in (("RANK", "WORLD_SIZE", "LOCAL_RANK"), ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID")):
        if rank in environ and size in environ:
            index, count = int(environ[rank]), int(environ[size])
            check_shard((index, count))
            return index, count, int(environ.get(local, 0))
    return None


def launcher_run_id(environ) -> str | None:
    """A run id every worker of one launch shares: torchrun's rendezvous id (unless "none"), else SLURM's job and
    step; None when neither is set."""
    rendezvous = environ.get("TORCHELASTIC_RUN_ID", "none")
    if rendezvous != "none":
        return f"torchrun-{rendezvous}"
    if "SLURM_JOB_ID" in environ:
        return f"slurm-{environ['SLURM_JOB_ID']}.{environ.get('SLURM_STEP_ID', '0')}"
    return None


def _db():
    import fiftyone.core.odm as foo

    return foo.get_db_conn()


class ChunkQueue:
    """Worker `shard` of the run that holds `lease`, over the samples of `samples` in chunks of `chunk_size`."""

    def __init__(self, samples, lease: RunLease, shard: tuple[int, int], chunk_size: int, overwrite: bool) -> None:
        check_shard(shard)
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
        self.lease = lease
        self.index, self.count = shard
        self.plan_key = lease.key
        self.run = {"plan": lease.key, "run_id": lease.run_id}
        self.plans, self.chunks = _db()[PLANS], _db()[CHUNKS]
        self.chunks.create_index([("plan", ASCENDING), ("run_id", ASCENDING), ("done", ASCENDING),
                                  ("index", ASCENDING)])
        ids = samples.values("id")
        self.samples = len(ids)
        self._write_plan(samples._dataset, lease, ids, chunk_size, overwrite)

    def _write_plan(self, dataset, lease: RunLease, ids: list[str], chunk_size: int, overwrite: bool) -> None:
        digest = hashlib.sha1("\n".join(ids).encode()).hexdigest()
        plan = {"dataset": dataset.name, "label_field": lease.key.split("/", 1)[1], "run_id": lease.run_id,
                "workers": self.count, "chunk_size": chunk_size, "samples": len(ids), "digest": digest,
                "overwrite": overwrite, "chunks": -(-len(ids) // chunk_size)}
        try:  # a new run replaces the field's last plan; the same run's stays
            self.plans.update_one({"_id": self.plan_key, "run_id": {"$ne": lease.run_id}},
                                  {"$set": {**plan, "reports": {}}, "$currentDate": {"created": True}}, upsert=True)
        except DuplicateKeyError:
            pass
        current = self.plans.find_one({"_id": self.plan_key})
        for name in ("digest", "workers", "chunk_size", "overwrite"):
            if current[name] != plan[name]:
                what = "samples" if name == "digest" else name
                raise ValueError(f"run {lease.run_id!r} on {lease.what} was started with other {what} "
                                 f"({current[name]!r} there, {plan[name]!r} here): every worker of a run must pass "
                                 "the same view, shard count, chunk size and overwrite; a new run id starts afresh")
        self.chunks.delete_many({"plan": self.plan_key, "run_id": {"$ne": lease.run_id}})
        if self.chunks.count_documents(self.run) < plan["chunks"]:
            docs = [{"_id": f"{self.plan_key}/{lease.run_id}/{n:08d}", **self.run, "index": n,
                     "ids": ids[start:start + chunk_size], "size": len(ids[start:start + chunk_size]), "written": 0,
                     "holder": None, "done": False} for n, start in enumerate(range(0, len(ids), chunk_size))]
            try:
                self.chunks.insert_many(docs, ordered=False)
            except BulkWriteError as exc:  # another worker of the run wrote them first
                if any(error["code"] != 11000 for error in exc.details["writeErrors"]):
                    raise

    def pending(self) -> bool:
        """Whether any chunk of the run is not done yet."""
        return self.chunks.count_documents({**self.run, "done": False}, limit=1) > 0

    def claims(self):
        """Chunks for this worker, one at a time, until every chunk of the run is done."""
        while (chunk := self.claim()) is not None:
            yield chunk

    def claim(self) -> Chunk | None:
        """The next free chunk (or a dead worker's); waits while live workers hold all the rest; None when done."""
        while True:
            doc = self.chunks.find_one_and_update({**self.run, "done": False, "holder": None},
                                                  {"$set": {"holder": self.lease.holder}},
                                                  sort=[("index", ASCENDING)], return_document=ReturnDocument.AFTER)
            if doc is not None:
                return Chunk(doc["_id"], doc["index"], doc["ids"], doc["written"])
            holders = set(self.chunks.distinct("holder", {**self.run, "done": False}))
            if not holders:
                return None
            dead = holders - self.lease.live_holders() - {None}
            if dead:
                self.chunks.update_many({**self.run, "done": False, "holder": {"$in": sorted(dead)}},
                                        {"$set": {"holder": None}})
            elif None not in holders:
                time.sleep(POLL_SECONDS)

    def holds(self, chunk: Chunk) -> bool:
        """Whether this worker still holds `chunk` (a worker that stalled past the lease timeout may not)."""
        return self.chunks.count_documents({"_id": chunk.key, "holder": self.lease.holder}, limit=1) > 0

    def advance(self, chunk: Chunk, written: int) -> None:
        """Record that the first `written` ids of `chunk` are written."""
        self.chunks.update_one({"_id": chunk.key, "holder": self.lease.holder}, {"$set": {"written": written}})

    def finish(self, chunk: Chunk) -> None:
        self.chunks.update_one({"_id": chunk.key, "holder": self.lease.holder},
                               {"$set": {"done": True, "written": len(chunk.ids), "worker": self.index}})

    def run_done(self) -> int:
        """Samples of the run in chunks that are done, by any worker."""
        found = list(self.chunks.aggregate([{"$match": {**self.run, "done": True}},
                                            {"$group": {"_id": None, "samples": {"$sum": "$size"}}}]))
        return found[0]["samples"] if found else 0

    def report(self, summary: dict) -> None:
        """Store this worker's summary on the plan."""
        self.plans.update_one({"_id": self.plan_key, "run_id": self.run["run_id"]},
                              {"$set": {f"reports.{self.index}": summary}})

    def final_summary(self) -> dict:
        """The whole run's summary, once every worker reported (or, for workers never seen alive, after
        `REPORT_WAIT_SECONDS`)."""
        deadline = time.monotonic() + REPORT_WAIT_SECONDS
        while True:
            plan = self.plans.find_one({"_id": self.plan_key})
            others_alive = self.lease.live_holders() - {self.lease.holder}
            if len(plan["reports"]) >= self.count or (not others_alive and time.monotonic() > deadline):
                return _summary(plan)
            time.sleep(POLL_SECONDS)


def _summary(plan: dict) -> dict:
    reports = [plan["reports"][key] for key in sorted(plan["reports"], key=int)]
    return {"run_id": plan["run_id"], "workers": plan["workers"], "reported": len(reports),
            "samples": plan["samples"], "done": sum(r["done"] for r in reports),
            "failed": sum(r["failed"] for r in reports), "skipped": sum(r["skipped"] for r in reports),
            "seconds": max((r["seconds"] for r in reports), default=0.0), "per_worker": reports}


def run_status(dataset, label_field: str) -> dict | None:
    """The latest sharded run of `label_field`: its plan, chunks done/held/free, the workers holding the field
    now, and the reports of those that finished; None if the field never had one."""
    from .lease import describe

    key = f"{dataset._doc.id}/{label_field}"
    plan = _db()[PLANS].find_one({"_id": key})
    if plan is None:
        return None
    chunks = _db()[CHUNKS]
    run = {"plan": key, "run_id": plan["run_id"]}
    done = chunks.count_documents({**run, "done": True})
    held = chunks.count_documents({**run, "done": False, "holder": {"$ne": None}})
    samples_done = list(chunks.aggregate([{"$match": {**run, "done": True}},
                                          {"$group": {"_id": None, "n": {"$sum": "$size"}}}]))
    holding = describe(dataset, label_field)
    return {"dataset": dataset.name, "label_field": label_field, "run_id": plan["run_id"],
            "workers": plan["workers"], "samples": plan["samples"],
            "samples_in_done_chunks": samples_done[0]["n"] if samples_done else 0, "chunks": plan["chunks"],
            "chunks_done": done, "chunks_held": held, "chunks_free": plan["chunks"] - done - held,
            "created": plan["created"].isoformat(timespec="seconds"),
            "holders": holding["holders"] if holding and holding["run_id"] == plan["run_id"] else [],
            "finished": done == plan["chunks"], "summary": _summary(plan) if plan["reports"] else None}


def queue_shard_operations(operator_uri: str, request_params: dict, workers: int, label: str) -> list[str]:
    """Queue `workers` delegated operations of `operator_uri`, shard i of one new run each, with the request's view
    and parameters: each `fiftyone delegated launch` worker executes one. Returns their ids."""
    from fiftyone.operators.delegated import DelegatedOperationService
    from fiftyone.operators.executor import ExecutionContext

    service = DelegatedOperationService()
    run_id = f"delegated-{uuid.uuid4().hex[:12]}"
    request = {key: value for key, value in request_params.items() if key != "run_doc"}
    queued = []
    for index in range(workers):
        params = {**request.get("params", {}), "shard": [index, workers], "run_id": run_id}
        context = ExecutionContext(request_params={**request, "params": params, "delegated": True})
        operation = service.queue_operation(operator=operator_uri, label=f"{label} (worker {index}/{workers})",
                                            context=context.serialize())
        queued.append(str(operation.id))
    return queued
