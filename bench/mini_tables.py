"""The paper's tables in miniature: agents on the scene world's test split, scored with LISA's protocol.

Each row is one command, e.g.

    python bench/mini_tables.py --row sam_gt_box
    python bench/mini_tables.py --row oracle_clicks
    python bench/mini_tables.py --row policy --policy mini --max-steps 0 --name "mini, box only"
    python bench/mini_tables.py --row policy --policy mini --max-steps 3 --name "mini, refinement"

Rows append to `bench/results/mini_tables.jsonl` (one JSON object each: the command, gIoU, cIoU, stop rates
after each step, mean masks per sample, the split by query kind, and for the simulated user IoU after 1/3/5
clicks and NoC@85/90). The agent core runs directly (the same `Agent` as `apply_model`), with the metrics of
`plugin/metrics.py`; the scenes are drawn by `plugin/scenes.py` (test split: includes held-out colour/shape pairs).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

from sam_veteran.plugin.agent import Agent, AgentConfig, AgentInput
from sam_veteran.plugin.agent.oracle import OraclePolicy
from sam_veteran.plugin.agent.policy import load_policy
from sam_veteran.plugin.agent.segmenters import load_segmenter
from sam_veteran.plugin.metrics import NOC_CAP, NOC_THRESHOLDS, mean_clicks_to_reach, score_item, summarize
from sam_veteran.plugin.scenes import QUERY_KINDS, make_scenes

RESULTS = Path(__file__).parent / "results" / "mini_tables.jsonl"


def score_traces(traces, scenes) -> dict:
    """gIoU/cIoU, per-step stop rates (cumulative share stopped by the agent after seeing step k's mask), mean
    masks per sample, the split by query kind and the held-out pairs."""
    scores = [score_item(t.mask, s.mask) for t, s in zip(traces, scenes)]
    out = {k: round(v, 4) if isinstance(v, float) else v for k, v in summarize(scores).items()}
    depth = max((t.num_steps for t in traces), default=0)
    stopped = [0] * depth
    for trace in traces:
        if trace.stopped_by_agent:
            stopped[trace.num_steps - 1] += 1
    out["stop_rate_after_step"] = [round(float(np.sum(stopped[: k + 1])) / len(traces), 4) for k in range(depth)]
    out["masks_per_sample"] = round(float(np.mean([t.num_steps for t in traces])), 3)
    step0 = [score_item(t.mask_steps[0].mask if t.mask_steps else None, s.mask) for t, s in zip(traces, scenes)]
    out["gIoU_step0"] = round(summarize(step0)["gIoU"], 4)
    out["by_kind"] = {kind: round(summarize([sc for sc, s in zip(scores, scenes) if s.kind == kind])["gIoU"], 4)
                      for kind in QUERY_KINDS}
    out["held_out_gIoU"] = round(summarize([sc for sc, s in zip(scores, scenes) if s.held_out])["gIoU"], 4)
    out["end_reasons"] = {r: sum(t.end_reason.value == r for t in traces) for r in
                          sorted({t.end_reason.value for t in traces})}
    return out


def click_curve(traces, scenes) -> dict:
    """The simulated user's IoU after 1, 3 and 5 clicks and NoC@85/90 (one click per step, capped at 20)."""
    items, after = [], {1: [], 3: [], 5: []}
    for trace, scene in zip(traces, scenes):
        ious = [score_item(step.mask, scene.mask).iou for step in trace.mask_steps]
        clicks = list(range(len(ious)))
        items.append((ious, clicks))
        for k in after:
            after[k].append(ious[min(k, len(ious) - 1)] if ious else 0.0)
    return {"iou_after_clicks": {k: round(float(np.mean(v)), 4) for k, v in after.items()},
            **{f"NoC@{round(t * 100)}": round(mean_clicks_to_reach(items, t), 2) for t in NOC_THRESHOLDS}}


def run_row(args) -> dict:
    torch.set_num_threads(args.threads)
    scenes = make_scenes("test", args.scenes)
    segmenter = load_segmenter(args.segmenter, device="cpu")
    if args.row == "sam_gt_box":
        agent = Agent(OraclePolicy(), segmenter, AgentConfig(max_steps=0))
    elif args.row == "oracle_clicks":
        agent = Agent(OraclePolicy(stop_iou=None), segmenter, AgentConfig(max_steps=NOC_CAP))
    else:
        agent = Agent(load_policy(args.policy, device="cpu", batch_size=args.batch_size), segmenter,
                      AgentConfig(max_steps=args.max_steps))
    started = time.perf_counter()
    traces = []
    for start in range(0, len(scenes), args.batch_size):
        chunk = scenes[start : start + args.batch_size]
        traces += agent.run([AgentInput(s.image, s.query, s.mask) for s in chunk])
    row = {"name": args.name or args.row, "command": "python bench/mini_tables.py " + shlex.join(sys.argv[1:]),
           "scenes": len(scenes), "segmenter": str(args.segmenter), **score_traces(traces, scenes),
           "seconds": round(time.perf_counter() - started, 1)}
    if args.row == "oracle_clicks":
        row.update(click_curve(traces, scenes))
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--row", required=True, choices=["sam_gt_box", "oracle_clicks", "policy"])
    parser.add_argument("--policy", default="mini", help="policy for --row policy (default: the shipped mini)")
    parser.add_argument("--segmenter", default="mini")
    parser.add_argument("--max-steps", type=int, default=3)
    parser.add_argument("--scenes", type=int, default=200, help="test scenes (default 200)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--name", help="the row's name in the table")
    parser.add_argument("--no-save", action="store_true", help="print only; do not append to the results file")
    args = parser.parse_args(argv)
    row = run_row(args)
    print(json.dumps(row))
    if not args.no_save:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        with RESULTS.open("a") as f:
            f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
