"""The FiftyOne write path: the project's bulk runner versus per-sample saves, and what `apply_model` adds.

    .venv/bin/python bench/write_path.py            # 12 minutes here under load (6 of them per-sample saves)
    .venv/bin/python bench/write_path.py --quick    # N = 200 and 1,000: 2-5 minutes

1. Writing the three label fields (``<field>_mask``, ``_steps``, ``_clicks``) of N = 1,000 and 10,000 samples
   (320x240 images, two masks and one click each, as a box-click-stop trace leaves them):
   - ``run_agent``: the project's runner (`plugin/inference.py`) itself, with an agent that returns ready traces
     at no cost, so what is timed is its loop: read the batch's values, load the images, build the labels, write;
   - ``per_sample_save``: the same batches of the same work, each sample assigned and ``sample.save()``d;
   - ``autosave`` (N = 1,000 only): the same, through FiftyOne's ``iter_samples(autosave=True)``;
   - ``run_agent_batch_64`` (N = 1,000 only): the runner with batches of 64 instead of its default 8;
   - ``no_writes``: the shared work alone (the batches' images loaded, their labels built), so each path's write
     time is its total minus this (for the per-sample paths that includes loading the sample objects to save).
   The stored labels of the paths are compared sample by sample on a subset.
2. The per-sample overhead of ``dataset.apply_model`` with `SamVeteranModel` (and of ``run_agent``) over calling
   the agent directly on the same images already in memory, with the tiny SAM and a free scripted policy
   (`agent_throughput.ReplayPolicy`), so the overhead is not hidden behind model time.

A real FiftyOne database in a temporary folder (FIFTYONE_DATABASE_DIR, used when no other FiftyOne process is
running: FiftyOne shares one database service between processes); every comparison runs side by side in this one
process. The JSON summary is the last line printed.
"""

from __future__ import annotations

import os
import tempfile

_TMP = tempfile.TemporaryDirectory(prefix="sam-veteran-bench-")
# Left in place afterwards: FiftyOne attaches every process on the machine to one running database service, so
# other processes may be using a mongod started here, on this folder.
os.environ["FIFTYONE_DATABASE_DIR"] = tempfile.mkdtemp(prefix="sam-veteran-bench-db-")
os.environ["FIFTYONE_DO_NOT_TRACK"] = "true"

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import fiftyone as fo  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from agent_throughput import ReplayPolicy  # noqa: E402

from sam_veteran.plugin.agent import Action, Agent, AgentConfig, EndReason, SamSegmenter, Step, Trace  # noqa: E402
from sam_veteran.plugin.agent.images import load_image  # noqa: E402
from sam_veteran.plugin.agent.tiny import write_tiny_models  # noqa: E402
from sam_veteran.plugin.inference import run_agent  # noqa: E402
from sam_veteran.plugin.labels import label_fields  # noqa: E402
from sam_veteran.plugin.model import SamVeteranModel, prepare_input, run_inputs  # noqa: E402

WIDTH, HEIGHT = 320, 240
BATCH = 8  # run_agent's default batch size


class ReadyTraces:
    """An agent that answers at once with a box-click-stop trace (two masks, one click) for each image's size."""

    policy = None  # no policy, so no ground truth to read (`SamVeteranModel.gt_field`)

    def __init__(self):
        ys, xs = np.mgrid[:HEIGHT, :WIDTH]
        self.first = ((xs - 150) / 90.0) ** 2 + ((ys - 110) / 60.0) ** 2 <= 1
        self.second = self.first | ((xs >= 200) & (xs < 260) & (ys >= 90) & (ys < 170))

    def run(self, items) -> list[Trace]:
        box = (50.0, 40.0, 270.0, 180.0)
        return [Trace(query=item.query, image_size=(WIDTH, HEIGHT), end_reason=EndReason.AGENT_STOPPED, steps=[
            Step(0, "box", Action.BOX, box=box, mask=self.first, score=0.8),
            Step(1, "click", Action.POSITIVE, box=box, positive=(230.0, 130.0), mask=self.second, score=0.9),
            Step(2, "stop", Action.STOP)]) for item in items]


def make_dataset(directory: Path, count: int, images: int, noise: bool) -> fo.Dataset:
    """`count` samples over `images` distinct 320x240 PNG files (the agent reads each sample's file); `noise`
    images are costly to decode, flat ones cost next to nothing (for the write comparison)."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(images):
        path = directory / f"{i:05d}.png"
        pixels = rng.integers(0, 255, (HEIGHT, WIDTH, 3), dtype=np.uint8) if noise else \
            np.full((HEIGHT, WIDTH, 3), rng.integers(0, 255, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(path)
        paths.append(str(path))
    dataset = fo.Dataset()
    dataset.add_samples([fo.Sample(filepath=paths[i % images], query=f"the object number {i}")
                         for i in range(count)])
    return dataset


def labels_stream(dataset: fo.Dataset, model: SamVeteranModel):
    """The work every path shares, in batches as run_agent does it: the images loaded and the labels built."""
    filepaths, queries = dataset.values(["filepath", "query"])
    for start in range(0, len(filepaths), BATCH):
        batch = zip(filepaths[start:start + BATCH], queries[start:start + BATCH])
        yield from run_inputs(model.agent, [prepare_input(path, query) for path, query in batch])


def timed(function) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def bench_writes(directory: Path, count: int, every_path: bool) -> dict:
    dataset = make_dataset(directory, count, images=64, noise=False)
    model = SamVeteranModel(agent=ReadyTraces())

    def no_writes():
        for _ in labels_stream(dataset, model):
            pass

    def per_sample_save():
        fields = label_fields("saved")
        for sample, label in zip(dataset.iter_samples(), labels_stream(dataset, model)):
            for key, field in fields.items():
                sample[field] = label[key]
            sample.save()

    def autosave():
        fields = label_fields("autosaved")
        for sample, label in zip(dataset.iter_samples(autosave=True), labels_stream(dataset, model)):
            for key, field in fields.items():
                sample[field] = label[key]

    seconds = {"no_writes": timed(no_writes),
               "run_agent": timed(lambda: run_agent(dataset, model, label_field="bulk", batch_size=BATCH)),
               "per_sample_save": timed(per_sample_save)}
    if every_path:
        seconds["autosave"] = timed(autosave)
        seconds["run_agent_batch_64"] = timed(lambda: run_agent(dataset, model, label_field="bulk64", batch_size=64))
    checked = _same_labels(dataset, ("bulk", "saved") + (("autosaved", "bulk64") if every_path else ()))
    dataset.delete()
    base = seconds["no_writes"]
    writes = {k: v - base for k, v in seconds.items() if k != "no_writes"}  # can come out <= 0 in noise
    return {"samples": count, "batch_size": BATCH, "seconds": {k: round(v, 2) for k, v in seconds.items()},
            "write_seconds": {k: round(v, 2) for k, v in writes.items()},
            "write_ms_per_sample": {k: round(1000 * v / count, 3) for k, v in writes.items()},
            "per_sample_save_over_run_agent": round(seconds["per_sample_save"] / seconds["run_agent"], 2),
            "per_sample_save_over_run_agent_writes_only": _ratio(writes["per_sample_save"], writes["run_agent"]),
            "over_per_sample_save_writes_only": {k: _ratio(writes["per_sample_save"], v) for k, v in writes.items()},
            "samples_compared": checked}


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 2) if a > 0 and b > 0 else None


def _same_labels(dataset: fo.Dataset, names: tuple[str, ...], count: int = 50) -> int:
    """Every path stored the same masks, step boxes and masks, and clicks (first `count` samples)."""
    for sample in dataset.limit(count):
        ref = {key: sample[field] for key, field in label_fields(names[0]).items()}
        for name in names[1:]:
            other = {key: sample[field] for key, field in label_fields(name).items()}
            assert np.array_equal(ref["mask"].mask, other["mask"].mask), (name, sample.id)
            assert ref["mask"].num_steps == other["mask"].num_steps == 2
            for a, b in zip(ref["steps"].detections, other["steps"].detections, strict=True):
                assert a.bounding_box == b.bounding_box and np.array_equal(a.mask, b.mask), (name, sample.id)
            assert [k.points for k in ref["clicks"].keypoints] == [k.points for k in other["clicks"].keypoints]
    return min(count, len(dataset))


def bench_apply_model(directory: Path, segmenter_path: Path, count: int) -> dict:
    """Per-sample overhead of apply_model and run_agent over the agent called directly on in-memory images."""
    dataset = make_dataset(directory, count, images=count, noise=True)
    segmenter = SamSegmenter.from_checkpoint(segmenter_path, device="cpu", encode_batch_size=BATCH)
    agent = lambda: Agent(ReplayPolicy(), segmenter, AgentConfig(max_steps=3))  # noqa: E731  fresh script each
    filepaths, queries = dataset.values(["filepath", "query"])
    items = [prepare_input(path, query).item for path, query in zip(filepaths, queries)]

    def direct(run_agent_on):
        for start in range(0, count, BATCH):
            run_agent_on.run(items[start:start + BATCH])

    def direct_reading(run_agent_on):
        for start in range(0, count, BATCH):
            run_agent_on.run([prepare_input(p, q).item for p, q in zip(filepaths[start:start + BATCH],
                                                                       queries[start:start + BATCH])])

    direct(agent())  # warm-up
    seconds = {
        "agent_direct": timed(lambda: direct(agent())),
        "agent_direct_reading_files": timed(lambda: direct_reading(agent())),
        "run_agent": timed(lambda: run_agent(dataset, SamVeteranModel(agent=agent()), label_field="run",
                                             batch_size=BATCH)),
        "apply_model": timed(lambda: dataset.apply_model(SamVeteranModel(agent=agent()), label_field="applied",
                                                         prompt_field="query", batch_size=BATCH)),
    }
    assert dataset.count("applied_mask") == dataset.count("run_mask") == count
    dataset.delete()
    base = seconds["agent_direct"]
    return {"samples": count, "batch_size": BATCH, "image": f"{WIDTH}x{HEIGHT}",
            "seconds": {k: round(v, 3) for k, v in seconds.items()},
            "agent_ms_per_sample": round(1000 * base / count, 2),
            "overhead_ms_per_sample": {k: round(1000 * (v - base) / count, 2) for k, v in seconds.items()
                                       if k != "agent_direct"},
            "over_agent_direct": {k: round(v / base, 3) for k, v in seconds.items() if k != "agent_direct"}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)  # a shared 2-core machine: two threads under contention make small ops ~50x slower
    tmp = Path(_TMP.name)
    tiny = write_tiny_models(tmp / "tiny", families=())
    summary = {"writes": [], "apply_model": None}
    for count in ((200, 1000) if args.quick else (1000, 10000)):
        folder = tmp / f"writes-{count}"
        folder.mkdir()
        summary["writes"].append(bench_writes(folder, count, every_path=count <= 1000))
        print(json.dumps(summary["writes"][-1]), flush=True)
    folder = tmp / "apply"
    folder.mkdir()
    summary["apply_model"] = bench_apply_model(folder, tiny["segmenter"], 32 if args.quick else 96)

    print("| N | path | seconds | write ms/sample | per-sample save writes / these writes |\n|---|---|---|---|---|")
    for w in summary["writes"]:
        for path, seconds in w["seconds"].items():
            print(f"| {w['samples']} | {path} | {seconds} | {w['write_ms_per_sample'].get(path, '-')} | "
                  f"{w['over_per_sample_save_writes_only'].get(path, '-')} |")
    a = summary["apply_model"]
    print(f"\n| path ({a['samples']} samples, batch {a['batch_size']}) | seconds | overhead ms/sample | x agent |"
          "\n|---|---|---|---|")
    print(f"| agent direct (images in memory) | {a['seconds']['agent_direct']} | - | 1 |")
    for key in ("agent_direct_reading_files", "run_agent", "apply_model"):
        print(f"| {key} | {a['seconds'][key]} | {a['overhead_ms_per_sample'][key]} | {a['over_agent_direct'][key]} |")
    print(json.dumps(summary))
    _TMP.cleanup()


if __name__ == "__main__":
    main()
