"""The bulk runner: the agent over a dataset or view, resumable and loss-free.

    summary = sam_veteran.run_agent(dataset, policy="Qwen/Qwen2.5-VL-7B-Instruct", segmenter="vit_h")

Each batch's labels are written (one bulk `set_values` per field) as soon as the batch finishes, so an
interrupted run keeps every finished batch. The mask field is written last: `has_results` looks at it, so a run
killed between two writes leaves samples that a re-run redoes, never a mask without its steps and clicks. Two
runs writing different label fields of one dataset at once both keep their fields: FiftyOne saves the dataset's
whole field list when a field is added, so each run re-declares its own fields on a reloaded schema, before its
first batch, after its last one and at most every `REDECLARE_SECONDS` between (a reload costs tens of
milliseconds: after every batch of 8 it cost as much as writing the labels, `bench/write_path.py`).
Two runs on the same label field would interleave their labels: a run holds a lease on its field (`lease.py`),
and a second run is refused while the first is alive; a killed run's lease is taken over by the next one.
Everything that would stop a run part-way is checked first, before any model is loaded: the query field, label
fields of another type, the lease.
A re-run skips samples that already have results (`has_results`) unless `overwrite=True`, and retries those
recorded as failures. A sample whose image cannot be read, whose query
is missing, or on which the agent raises gets `failure_labels` with the reason; the run goes on.
`iter_run_agent` is the same run as a generator of `RunProgress`, for progress bars and operators.
With ``shard=(index, count)`` and a `run_id` shared by the workers, this process is one worker of a run spread over
many (torchrun, SLURM, delegated operations): the workers claim chunks of the view from the database
(`sharding.py`) and write the same label fields, each sample once.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Callable, Iterator

import fiftyone as fo

from .agent import EndReason
from .defaults import (DEFAULT_BATCH_SIZE, DEFAULT_DECODING, DEFAULT_GT_FIELD, DEFAULT_LABEL_FIELD, DEFAULT_POLICY,
                       DEFAULT_PROMPT_FIELD, DEFAULT_SEGMENTER)
from .labels import LABEL_TYPES, has_results, label_fields
from .lease import RunLease
from .model import SamVeteranModel, prepare_input, run_inputs
from .sharding import CHUNK_BATCHES, ChunkQueue, check_shard

REDECLARE_SECONDS = 5.0


@dataclass
class RunProgress:
    """Where a run stands after a batch; the last one yielded is the run's summary."""

    total: int  # samples in the view
    skipped: int  # already had results
    to_run: int
    done: int = 0  # of to_run, written
    failed: int = 0  # of done, recorded as failures
    seconds: float = 0.0

    @property
    def fraction(self) -> float:
        return self.done / self.to_run if self.to_run else 1.0

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class ShardProgress(RunProgress):
    """A sharded worker's progress: its own counts (of the chunks it claimed), the run's, and from worker 0 at the
    end the whole run's summary (`final`)."""

    shard: str = "0/1"
    run_samples: int = 0  # in the run's plan
    run_done: int = 0  # in chunks done, by any worker
    final: dict | None = None

    @property
    def fraction(self) -> float:
        return self.run_done / self.run_samples if self.run_samples else 1.0


def iter_run_agent(samples, model: SamVeteranModel | None = None, *, policy: str = DEFAULT_POLICY,
                   segmenter: str = DEFAULT_SEGMENTER, max_steps: int | None = None, device: str | None = None,
                   label_field: str = DEFAULT_LABEL_FIELD, prompt_field: str = DEFAULT_PROMPT_FIELD,
                   batch_size: int = DEFAULT_BATCH_SIZE, overwrite: bool = False, run_id: str | None = None,
                   gt_field: str = DEFAULT_GT_FIELD, decoding: str = DEFAULT_DECODING,
                   shard: tuple[int, int] | None = None, chunk_size: int | None = None,
                   **policy_kwargs) -> Iterator[RunProgress]:
    """Run the agent batch by batch, writing each batch when it finishes; yields progress after each batch.

    `model` is used when given; otherwise one is loaded from `policy` and `segmenter` (only if a sample needs it),
    with `policy_kwargs` such as ``family="seg_zero"``; `max_steps` None is the family's default. Worker processes
    of one run share its lease by passing the same `run_id`. ``policy="oracle"`` (the simulated user) reads each
    sample's ground truth from `gt_field`. `decoding` is how the policy generates (``"eager"`` or ``"static"``,
    `defaults.DECODINGS`); an unknown value is refused before anything runs. ``shard=(index, count)`` runs this
    process as worker `index` of `count` of the run `run_id` (required then): chunks of `chunk_size` samples
    (default `CHUNK_BATCHES` batches) claimed from the database; yields `ShardProgress`.
    """
    from .agent.policy import check_decoding

    check_decoding(decoding)
    started = time.perf_counter()
    if samples.get_field(prompt_field) is None:
        raise ValueError(f"the samples have no query field '{prompt_field}' (fields: "
                         f"{', '.join(samples.get_field_schema())})")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    dataset = samples._dataset
    fields = label_fields(label_field)
    _check_label_fields(dataset, fields)
    if shard is not None:
        check_shard(shard)
        if run_id is None:
            raise ValueError(f"worker {shard[0]} of {shard[1]} needs the run_id its workers share")
    with RunLease(dataset, label_field, run_id) as lease:
        options = dict(policy=policy, segmenter=segmenter, max_steps=max_steps, device=device,
                       prompt_field=prompt_field, batch_size=batch_size, overwrite=overwrite, gt_field=gt_field,
                       decoding=decoding, **policy_kwargs)
        if shard is None:
            yield from _run(samples, model, lease, label_field, started, **options)
        else:
            queue = ChunkQueue(samples, lease, shard, chunk_size or CHUNK_BATCHES * batch_size, overwrite)
            yield from _run_shard(samples, model, lease, queue, label_field, started, **options)


def _run(samples, model, lease: RunLease, label_field: str, started: float, *, policy, segmenter, max_steps,
         device, prompt_field, batch_size, overwrite, gt_field, decoding, **policy_kwargs) -> Iterator[RunProgress]:
    """The run itself, once checked and holding the field's lease."""
    dataset = samples._dataset
    fields = label_fields(label_field)
    todo = samples if overwrite else samples.match(~has_results(label_field))
    ids, filepaths, queries = todo.values(["id", "filepath", prompt_field])
    total = samples.count("id")  # counted, not estimated: an unclean database restart leaves the estimate stale
    progress = RunProgress(total=total, skipped=total - len(ids), to_run=len(ids))
    if ids and model is None:
        model = SamVeteranModel(policy=policy, segmenter=segmenter, max_steps=max_steps, device=device,
                                gt_field=gt_field, decoding=decoding, **policy_kwargs)
    if ids:
        _declare_fields(dataset, fields)
    declared = time.perf_counter()
    for start in range(0, len(ids), batch_size):
        batch = slice(start, start + batch_size)
        labels = _labels(dataset, model, ids[batch], filepaths[batch], queries[batch], prompt_field)
        lease.check()
        _write(dataset, fields, ids[batch], labels)
        if start + batch_size >= len(ids) or time.perf_counter() - declared >= REDECLARE_SECONDS:
            _declare_fields(dataset, fields)
            declared = time.perf_counter()
        _count(progress, labels, started)
        yield progress
    if not ids:
        progress.seconds = round(time.perf_counter() - started, 3)
        yield progress


def _run_shard(samples, model, lease: RunLease, queue: ChunkQueue, label_field: str, started: float, *, policy,
               segmenter, max_steps, device, prompt_field, batch_size, overwrite, gt_field,
               **policy_kwargs) -> Iterator[ShardProgress]:
    """One worker of a sharded run: chunk after chunk from `queue` until the run's chunks are all done; worker 0
    then waits for the others' reports and adds the run's summary."""
    dataset = samples._dataset
    fields = label_fields(label_field)
    progress = ShardProgress(total=queue.samples, skipped=0, to_run=0, shard=f"{queue.index}/{queue.count}",
                             run_samples=queue.samples, run_done=queue.run_done())
    if queue.pending():
        if model is None:
            model = SamVeteranModel(policy=policy, segmenter=segmenter, max_steps=max_steps, device=device,
                                    gt_field=gt_field, **policy_kwargs)
        _declare_fields(dataset, fields)
    declared = time.perf_counter()
    for chunk in queue.claims():
        todo = dataset.select(chunk.ids[chunk.written:], ordered=True)
        todo = todo if overwrite else todo.match(~has_results(label_field))
        ids, filepaths, queries = todo.values(["id", "filepath", prompt_field])
        progress.skipped += len(chunk.ids) - chunk.written - len(ids)
        progress.to_run += len(ids)
        position = {sample_id: i + 1 for i, sample_id in enumerate(chunk.ids)}
        for start in range(0, len(ids), batch_size):
            batch = slice(start, start + batch_size)
            labels = _labels(dataset, model, ids[batch], filepaths[batch], queries[batch], prompt_field)
            lease.check()
            if not queue.holds(chunk):  # this worker stalled and a peer took the chunk over: it writes these
                break
            _write(dataset, fields, ids[batch], labels)
            queue.advance(chunk, position[ids[batch][-1]])
            if time.perf_counter() - declared >= REDECLARE_SECONDS:
                _declare_fields(dataset, fields)
                declared = time.perf_counter()
            _count(progress, labels, started)
            yield progress
        else:
            queue.finish(chunk)
            progress.run_done = queue.run_done()
    if progress.done:
        _declare_fields(dataset, fields)
    progress.run_done = queue.run_done()
    progress.seconds = round(time.perf_counter() - started, 3)
    queue.report(progress.as_dict())
    if queue.index == 0:
        progress.final = queue.final_summary()
    yield progress


def _labels(dataset, model: SamVeteranModel, ids, filepaths, queries, prompt_field: str) -> list[dict]:
    """The agent's labels for one batch (the ground truth read for a policy that reads it)."""
    reads_truth = model.gt_field
    if reads_truth and dataset.get_field(reads_truth) is None:
        raise ValueError(f"the samples have no ground-truth field '{reads_truth}', which the simulated user "
                         "(policy='oracle') reads: pass gt_field='<field>'")
    truths = dataset.select(ids, ordered=True).values(reads_truth) if reads_truth else [None] * len(ids)
    inputs = [prepare_input(path, query, prompt_field, ground_truth=truth, gt_field=reads_truth)
              for path, query, truth in zip(filepaths, queries, truths)]
    return run_inputs(model.agent, inputs)


def _write(dataset, fields: dict[str, str], ids, labels: list[dict]) -> None:
    for key in ("steps", "clicks", "mask"):  # the mask, which marks a sample done, last
        dataset.set_values(fields[key], dict(zip(ids, (label[key] for label in labels))), key_field="id")


def _count(progress: RunProgress, labels: list[dict], started: float) -> None:
    progress.done += len(labels)
    progress.failed += sum(label["mask"].end_reason == EndReason.INVALID_INPUT.value for label in labels)
    progress.seconds = round(time.perf_counter() - started, 3)


def _check_label_fields(dataset, fields: dict[str, str]) -> None:
    """Refuse label fields that exist with another type: every write of the run would fail on them."""
    for key, field in fields.items():
        found = dataset.get_field(field)
        expected = LABEL_TYPES[key]
        if found is not None and getattr(found, "document_type", None) is not expected:
            kind = getattr(found, "document_type", None) or type(found)
            raise ValueError(f"the field {field!r} of {dataset.name!r} holds {kind.__name__} values, not "
                             f"{expected.__name__}: the agent's {key} labels cannot go there. Choose another "
                             f"label_field, or delete or rename {field!r}")


def _declare_fields(dataset, fields: dict[str, str]) -> None:
    """Declare the label fields that the schema lacks, after reloading it: another process adding its own fields
    saves its copy of the field list over ours, which drops fields we added after it loaded the dataset."""
    dataset.reload()
    for key, field in fields.items():
        if not dataset.has_sample_field(field):
            dataset.add_sample_field(field, fo.EmbeddedDocumentField, embedded_doc_type=LABEL_TYPES[key])


def run_agent(samples, model: SamVeteranModel | None = None, *, progress: Callable[[RunProgress], None] | None = None,
              **kwargs) -> dict:
    """`iter_run_agent` to the end; returns the summary (total, skipped, to_run, done, failed, seconds)."""
    last = None
    for last in iter_run_agent(samples, model, **kwargs):
        if progress is not None:
            progress(last)
    return last.as_dict()
