"""Scaling one sharded run over N worker processes on one MongoDB, by simulation: is the database the limit?

    .venv/bin/python bench/scale_out.py            # N = 1, 2, 4, 8; 8-10 minutes here under load
    .venv/bin/python bench/scale_out.py --quick    # N = 1, 2 on 256 samples; a smoke check

Each worker is a real `run_agent(..., shard=(i, N), run_id=...)` process (claiming chunks from the database,
writing the three label fields of every batch) whose agent stands in for a GPU: it sleeps `--batch-seconds` per
batch and returns ready traces (a box mask and a refined mask of 320x240, one click), so what is measured is the
runner and the database, not a model. The same 8 worker processes serve every N (the first N of them take part in
round N, started together once all are up), on fresh label fields of one dataset of `--samples` samples in a
private `mongod` (a real server on a local port, as a cluster would share one).

Per N: throughput (samples/s, first claim to last write over all workers) against the ideal N x batch/sleep;
the database's share, seen by the workers: seconds per sample in the label writes (`set_values` of the three
fields) and in the chunk bookkeeping (claim, hold check, progress, finish); and, seen by the server, the summed
latency of all operations it executed (`serverStatus` opLatencies) per sample. The last is the server's work per
sample: one mongod with C cores does at most about C / (that) samples per second, which, divided by one GPU's
rate, is how many GPUs one server feeds (RESULTS.md works it out). The JSON summary is the last line printed.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROUNDS = (1, 2, 4, 8)
WIDTH, HEIGHT = 320, 240


def start_mongod(directory: Path) -> tuple[subprocess.Popen, str]:
    mongod = Path(importlib.util.find_spec("fiftyone").submodule_search_locations[0]) / "db" / "bin" / "mongod"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen([str(mongod), "--dbpath", str(directory), "--port", str(port), "--bind_ip",
                                "127.0.0.1", "--nounixsocket", "--logpath", str(directory / "mongod.log")],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return process, f"mongodb://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("mongod did not start")


class SleepingReadyTraces:
    """An agent standing in for the GPU: sleeps a fixed time per batch, then returns a box-click-stop trace (two
    320x240 masks, one click) for each item."""

    policy = None  # no policy that reads the ground truth

    def __init__(self, batch_seconds: float):
        import numpy as np

        self.batch_seconds = batch_seconds
        ys, xs = np.mgrid[:HEIGHT, :WIDTH]
        self.first = ((xs - 150) / 90.0) ** 2 + ((ys - 110) / 60.0) ** 2 <= 1
        self.second = self.first | ((xs >= 200) & (xs < 260) & (ys >= 90) & (ys < 170))

    def run(self, items):
        from sam_veteran.plugin.agent import Action, EndReason, Step, Trace

        time.sleep(self.batch_seconds)
        box = (50.0, 40.0, 270.0, 180.0)
        return [Trace(query=item.query, image_size=(WIDTH, HEIGHT), end_reason=EndReason.AGENT_STOPPED, steps=[
            Step(0, "box", Action.BOX, box=box, mask=self.first, score=0.8),
            Step(1, "click", Action.POSITIVE, box=box, positive=(230.0, 130.0), mask=self.second, score=0.9),
            Step(2, "stop", Action.STOP)]) for item in items]


class Clock:
    """Adds up the seconds spent in wrapped functions, by group."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    def wrap(self, owner, name: str, group: str) -> None:
        inner = getattr(owner, name)

        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                self.seconds[group] = self.seconds.get(group, 0.0) + time.perf_counter() - started

        setattr(owner, name, timed)


def worker(index: int, folder: Path, dataset_name: str, rounds: list[int], batch_size: int, batch_seconds: float,
           chunk_batches: int) -> None:
    import fiftyone as fo

    from sam_veteran.plugin import inference
    from sam_veteran.plugin.model import SamVeteranModel
    from sam_veteran.plugin.sharding import ChunkQueue

    clock = Clock()
    clock.wrap(inference, "_write", "label_writes")
    for name in ("claim", "holds", "advance", "finish", "run_done"):
        clock.wrap(ChunkQueue, name, "chunk_bookkeeping")
    dataset = fo.load_dataset(dataset_name)
    model = SamVeteranModel(agent=SleepingReadyTraces(batch_seconds))
    (folder / f"ready-{index}").touch()
    for count in rounds:
        if index >= count:
            continue
        while not (folder / f"go-{count}").exists():
            time.sleep(0.01)
        clock.seconds.clear()
        started = time.time()
        summary = inference.run_agent(dataset, model, label_field=f"n{count}", batch_size=batch_size,
                                      shard=(index, count), run_id=f"bench-{count}",
                                      chunk_size=chunk_batches * batch_size)
        ended = time.time()
        result = {"index": index, "started": started, "ended": ended, "done": summary["done"], **clock.seconds}
        (folder / f"result-{count}-{index}.json").write_text(json.dumps(result))


def server_latency_us(client) -> float:
    """The summed latency (microseconds) of every read, write and command the server has executed."""
    latencies = client.admin.command("serverStatus")["opLatencies"]
    return float(sum(latencies[kind]["latency"] for kind in ("reads", "writes", "commands")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--samples", type=int, default=768)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--batch-seconds", type=float, default=0.2, help="the stand-in GPU time per batch")
    parser.add_argument("--chunk-batches", type=int, default=4)
    parser.add_argument("--out", type=Path, help="also write the JSON summary here")
    parser.add_argument("--worker", nargs=7, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        index, folder, name, rounds, batch_size, batch_seconds, chunk_batches = args.worker
        worker(int(index), Path(folder), name, [int(n) for n in rounds.split(",")], int(batch_size),
               float(batch_seconds), int(chunk_batches))
        return

    rounds = [1, 2] if args.quick else list(ROUNDS)
    samples = 256 if args.quick else args.samples
    folder = Path(tempfile.mkdtemp(prefix="sam-veteran-scale-out-"))
    (folder / "db").mkdir()
    database, uri = start_mongod(folder / "db")
    env = {**os.environ, "FIFTYONE_DATABASE_URI": uri, "FIFTYONE_DATABASE_VALIDATION": "false",
           "FIFTYONE_DO_NOT_TRACK": "true", "FIFTYONE_SHOW_PROGRESS_BARS": "false", "OMP_NUM_THREADS": "1"}
    os.environ.update(env)
    import fiftyone as fo
    import numpy as np
    import pymongo
    from PIL import Image

    images = folder / "images"
    images.mkdir()
    paths = []
    for i in range(16):  # flat images: cheap to decode, so the runner's own work is the labels and the writes
        path = images / f"{i:02d}.png"
        Image.fromarray(np.full((HEIGHT, WIDTH, 3), 40 + 12 * i, np.uint8)).save(path)
        paths.append(str(path))
    dataset = fo.Dataset("scale-out", persistent=True, overwrite=True)
    dataset.add_samples([fo.Sample(filepath=paths[i % 16], query=f"the object number {i}") for i in range(samples)])
    client = pymongo.MongoClient(uri)

    workers = [subprocess.Popen([sys.executable, __file__, "--worker", str(i), str(folder), dataset.name,
                                 ",".join(map(str, rounds)), str(args.batch_size), str(args.batch_seconds),
                                 str(args.chunk_batches)], env=env) for i in range(max(rounds))]
    try:
        while len(list(folder.glob("ready-*"))) < len(workers):
            assert all(w.poll() is None for w in workers), "a worker exited before it was ready"
            time.sleep(0.2)
        table = []
        for count in rounds:
            server_before = server_latency_us(client)
            (folder / f"go-{count}").touch()
            while len(list(folder.glob(f"result-{count}-*.json"))) < count:
                assert all(w.poll() is None for w in workers[:count]), "a worker exited during a round"
                time.sleep(0.05)
            server_us = server_latency_us(client) - server_before
            results = [json.loads((folder / f"result-{count}-{i}.json").read_text()) for i in range(count)]
            wall = max(r["ended"] for r in results) - min(r["started"] for r in results)
            done = sum(r["done"] for r in results)
            assert done == samples, f"round {count}: {done} samples written of {samples}"
            ideal = count * args.batch_size / args.batch_seconds
            row = {"workers": count, "samples": done, "seconds": round(wall, 2),
                   "samples_per_s": round(done / wall, 1), "ideal_samples_per_s": round(ideal, 1),
                   "efficiency": round(done / wall / ideal, 3),
                   "label_write_ms_per_sample": round(1e3 * sum(r.get("label_writes", 0) for r in results) / done, 3),
                   "chunk_bookkeeping_ms_per_sample":
                       round(1e3 * sum(r.get("chunk_bookkeeping", 0) for r in results) / done, 3),
                   "server_ms_per_sample": round(server_us / 1e3 / done, 3),
                   "samples_per_worker": [r["done"] for r in results]}
            table.append(row)
            print(f"N={count}: {row['samples_per_s']:7.1f} samples/s (ideal {ideal:.0f}, efficiency "
                  f"{row['efficiency']:.0%}); per sample: label writes {row['label_write_ms_per_sample']:.2f} ms, "
                  f"chunk bookkeeping {row['chunk_bookkeeping_ms_per_sample']:.2f} ms (as the workers see them), "
                  f"server latency {row['server_ms_per_sample']:.2f} ms; per worker {row['samples_per_worker']}",
                  flush=True)
    finally:
        for w in workers:  # done after their last round; after a failure, still waiting for a round
            if w.poll() is None:
                w.kill()
        dataset.delete()
        database.terminate()
        database.wait(timeout=30)
    summary = {"samples": samples, "batch_size": args.batch_size, "batch_seconds": args.batch_seconds,
               "chunk_size": args.chunk_batches * args.batch_size, "cpu_cores": os.cpu_count(), "rounds": table}
    if args.out:
        args.out.write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
