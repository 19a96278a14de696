"""gIoU / cIoU over 10,000 items of 512x512 masks: the project's metric and FiftyOne evaluation versus plain loops.

    .venv/bin/python bench/evaluation.py                 # about 2 minutes here
    .venv/bin/python bench/evaluation.py --quick         # 1,000 items, 200 through FiftyOne

Items: a ground truth of 0 / 1 / 255 (a third of them with a band of ignored pixels), a prediction overlapping
it, some empty-vs-empty items, some empty or missing predictions. Under LISA's protocol (`plugin/metrics.py`):
1. In memory, `--items` items: the project's `score_item` + `summarize` versus a straightforward per-item numpy
   loop (logical and / or, sums), and a stacked variant (a chunk of items at once, counts along the item axis).
2. Through FiftyOne, `--fiftyone-items` samples with both masks stored in a real database (a temporary
   FIFTYONE_DATABASE_DIR): `sam_veteran.evaluate` (the evaluation run, reading raw mask values per chunk) versus a
   loop over ``iter_samples()`` scoring each sample with the per-item loop. (With another FiftyOne process
   running, FiftyOne attaches to its database service instead: it shares one between processes.)
Every implementation must produce the same per-item intersections and unions and the same gIoU and cIoU (the
script fails otherwise). The JSON summary is the last line printed.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np

from sam_veteran.plugin.metrics import score_item, summarize

SIDE = 512
CHUNK = 250


def shapes(count: int = 32, seed: int = 0) -> list[np.ndarray]:
    """Ellipses of varied size, centred, as bool masks."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[:SIDE, :SIDE] - SIDE / 2
    return [(xs / a) ** 2 + (ys / b) ** 2 <= 1 for a, b in rng.uniform(20, 200, (count, 2))]


def items(chunk: int, base: list[np.ndarray]) -> list[tuple[np.ndarray | None, np.ndarray]]:
    """The `chunk`-th block of (prediction, ground truth) pairs; the same pairs every time."""
    rng = np.random.default_rng(1000 + chunk)
    out = []
    for _ in range(CHUNK):
        kind = rng.random()
        target = np.roll(base[rng.integers(len(base))], tuple(rng.integers(-150, 150, 2)), axis=(0, 1))
        ground_truth = target.astype(np.uint8)
        if rng.random() < 0.33:  # an ignored band, as LISA's 255 regions
            y = int(rng.integers(0, SIDE - 40))
            ground_truth[y:y + 40] = 255
        if kind < 0.02:  # empty vs empty
            out.append((np.zeros((SIDE, SIDE), np.uint8), np.zeros((SIDE, SIDE), np.uint8)))
        elif kind < 0.03:  # missing prediction
            out.append((None, ground_truth))
        elif kind < 0.06:  # empty prediction
            out.append((np.zeros((SIDE, SIDE), np.uint8), ground_truth))
        else:
            shift = tuple(rng.integers(-25, 25, 2))
            out.append((np.roll(target, shift, axis=(0, 1)).astype(np.uint8), ground_truth))
    return out


def loop_item(prediction: np.ndarray | None, ground_truth: np.ndarray) -> tuple[int, int]:
    """The straightforward way: LISA's protocol written out for one item."""
    valid = ground_truth != 255
    predicted = (prediction > 0) & valid if prediction is not None else np.zeros_like(valid)
    target = ground_truth == 1
    return int(np.logical_and(predicted, target).sum()), int(np.logical_or(predicted, target).sum())


def loop_summary(pairs: list[tuple[int, int]]) -> dict:
    ious = [i / u if u else 1.0 for i, u in pairs]
    total_union = sum(u for _, u in pairs)
    return {"gIoU": float(np.mean(ious)), "cIoU": sum(i for i, _ in pairs) / total_union, "count": len(pairs)}


def stacked_counts(chunk: list[tuple[np.ndarray | None, np.ndarray]]) -> list[tuple[int, int]]:
    """A chunk of items at once: counts along the item axis."""
    predictions = np.stack([p if p is not None else np.zeros((SIDE, SIDE), np.uint8) for p, _ in chunk])
    ground_truths = np.stack([g for _, g in chunk])
    target = ground_truths == 1
    predicted = (predictions != 0) & (ground_truths != 255)
    inter = np.count_nonzero(predicted & target, axis=(1, 2))
    union = np.count_nonzero(predicted, axis=(1, 2)) + np.count_nonzero(target, axis=(1, 2)) - inter
    return list(zip(inter.tolist(), union.tolist()))


def bench_memory(count: int, base: list[np.ndarray]) -> dict:
    seconds = {"project": 0.0, "loop": 0.0, "stacked": 0.0}
    project, loop, stacked = [], [], []
    for chunk in range(count // CHUNK):
        pairs = items(chunk, base)
        started = time.perf_counter()
        project += [score_item(p, g) for p, g in pairs]
        seconds["project"] += time.perf_counter() - started
        started = time.perf_counter()
        loop += [loop_item(p, g) for p, g in pairs]
        seconds["loop"] += time.perf_counter() - started
        started = time.perf_counter()
        stacked += stacked_counts(pairs)
        seconds["stacked"] += time.perf_counter() - started
    started = time.perf_counter()
    project_summary = summarize(project)
    seconds["project"] += time.perf_counter() - started
    started = time.perf_counter()
    loop_result = loop_summary(loop)
    seconds["loop"] += time.perf_counter() - started
    assert [(s.intersection, s.union) for s in project] == loop == stacked, "per-item counts differ"
    assert project_summary == loop_result == loop_summary(stacked), (project_summary, loop_result)
    return {"items": len(loop), "metrics": project_summary,
            "seconds": {k: round(v, 3) for k, v in seconds.items()},
            "ms_per_item": {k: round(1000 * v / len(loop), 4) for k, v in seconds.items()},
            "loop_over_project": round(seconds["loop"] / seconds["project"], 2),
            "loop_over_stacked": round(seconds["loop"] / seconds["stacked"], 2)}


def bench_fiftyone(count: int, base: list[np.ndarray]) -> dict:
    import fiftyone as fo

    from sam_veteran.plugin.evaluation import evaluate

    dataset = fo.Dataset()
    started = time.perf_counter()
    for chunk in range(count // CHUNK):
        dataset.add_samples([fo.Sample(filepath=f"/bench/{chunk}-{i}.png", ground_truth=fo.Segmentation(mask=g),
                                       pred=fo.Segmentation(mask=p) if p is not None else None)
                             for i, (p, g) in enumerate(items(chunk, base))], progress=False)
    build = time.perf_counter() - started

    started = time.perf_counter()
    results = evaluate(dataset, "pred", gt_field="ground_truth", eval_key="eval")
    project_seconds = time.perf_counter() - started

    started = time.perf_counter()
    loop = []
    for sample in dataset.iter_samples(progress=False):
        loop.append(loop_item(sample.pred.mask if sample.pred is not None else None, sample.ground_truth.mask))
    loop_result = loop_summary(loop)
    loop_seconds = time.perf_counter() - started

    assert list(zip(results.intersections, results.unions)) == loop, "per-item counts differ"
    assert results.metrics() == loop_result, (results.metrics(), loop_result)
    dataset.delete()
    return {"items": count, "metrics": loop_result, "dataset_build_seconds": round(build, 2),
            "seconds": {"evaluate": round(project_seconds, 3), "iter_samples_loop": round(loop_seconds, 3)},
            "ms_per_item": {"evaluate": round(1000 * project_seconds / count, 3),
                            "iter_samples_loop": round(1000 * loop_seconds / count, 3)},
            "loop_over_evaluate": round(loop_seconds / project_seconds, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=10000)
    parser.add_argument("--fiftyone-items", type=int, default=2000)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    # Set before FiftyOne is imported; left in place afterwards: FiftyOne attaches every process on the machine
    # to one running database service, so other processes may be using a mongod started here, on this folder.
    os.environ["FIFTYONE_DATABASE_DIR"] = tempfile.mkdtemp(prefix="sam-veteran-bench-db-")
    os.environ["FIFTYONE_DO_NOT_TRACK"] = "true"
    if args.quick:
        args.items, args.fiftyone_items = 1000, 250
    base = shapes()
    summary = {"memory": bench_memory(args.items, base)}
    print(json.dumps(summary["memory"]), flush=True)
    summary["fiftyone"] = bench_fiftyone(args.fiftyone_items, base)
    m, f = summary["memory"], summary["fiftyone"]
    print("| implementation | items | seconds | ms/item | loop / this |\n|---|---|---|---|---|")
    print(f"| project: score_item + summarize | {m['items']} | {m['seconds']['project']} | "
          f"{m['ms_per_item']['project']} | {m['loop_over_project']} |")
    print(f"| per-item numpy loop | {m['items']} | {m['seconds']['loop']} | {m['ms_per_item']['loop']} | 1 |")
    print(f"| stacked chunks of {CHUNK} | {m['items']} | {m['seconds']['stacked']} | {m['ms_per_item']['stacked']} | "
          f"{m['loop_over_stacked']} |")
    print(f"| FiftyOne: sam_veteran.evaluate | {f['items']} | {f['seconds']['evaluate']} | "
          f"{f['ms_per_item']['evaluate']} | {f['loop_over_evaluate']} |")
    print(f"| FiftyOne: iter_samples + loop | {f['items']} | {f['seconds']['iter_samples_loop']} | "
          f"{f['ms_per_item']['iter_samples_loop']} | 1 |")
    print(f"identical: per-item counts and gIoU {m['metrics']['gIoU']:.6f} / cIoU {m['metrics']['cIoU']:.6f}")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
