"""`sam-veteran mini train`: rebuild the shipped mini models from nothing, one resumable stage at a time.

    sam-veteran mini train                       # every stage, in order, into runs/mini/, then ship
    sam-veteran mini train --stage segmenter     # one stage (resumes where a killed run stopped)
    sam-veteran mini train --stage policy --steps 9000
    sam-veteran mini train --stage grpo --variant no_auxiliary   # an ablation, into runs/mini/grpo-no_auxiliary

Each stage works in its own folder under `--work` (checkpoints, `metrics.jsonl`, `config.json`); `--ship` (the
default when every stage runs) copies the segmenter and the final policy (GRPO's, or the warm-up's when the policy
stage is shipped alone) into the package with their provenance (`ship.py`). The policy stage's refinement items
need the segmenter stage's result; the GRPO stage starts from the policy stage's.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

STAGES = ("segmenter", "policy", "grpo")
SHIPPED_AS = {"segmenter": "segmenter", "policy": "policy", "grpo": "policy"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--stage", choices=[*STAGES, "all"], default="all", help="which stage to run (default all)")
    parser.add_argument("--work", type=Path, default=Path("runs/mini"),
                        help="working folder; each stage uses a subfolder (default runs/mini)")
    parser.add_argument("--steps", type=int, help="optimiser steps of the stage (default: the stage's own)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--refine-share", type=float, default=0.35,
                        help="policy stage: share of refinement items (default 0.35)")
    parser.add_argument("--variant", default="full",
                        help="grpo stage: full (default), no_auxiliary, no_dynamic_sampling (the paper's ablations) "
                        "or lr0 (a control)")
    parser.add_argument("--ship", action=argparse.BooleanOptionalAction, default=None,
                        help="copy the results into the package (default: on with --stage all)")


def run(args) -> int:
    stages = STAGES if args.stage == "all" else (args.stage,)
    ship = args.ship if args.ship is not None else args.stage == "all"
    command = "sam-veteran mini train " + " ".join(sys.argv[sys.argv.index("train") + 1:] if "train" in sys.argv
                                                   else sys.argv[1:])
    for stage in stages:
        output = args.work / (stage if stage != "grpo" or args.variant == "full" else f"grpo-{args.variant}")
        if stage == "segmenter":
            from .segmenter import SegmenterTrainConfig, train_segmenter

            config = SegmenterTrainConfig(output=str(output), threads=args.threads)
            config.steps = args.steps or config.steps
            metrics = train_segmenter(config)
            result = output / "segmenter.safetensors"
        elif stage == "grpo":
            from ...plugin.agent.shipped import SHIPPED
            from .grpo import GrpoStageConfig, train_grpo

            segmenter = args.work / "segmenter" / "segmenter.safetensors"
            warmup = args.work / "policy" / "policy"
            if not warmup.is_dir():
                warmup = SHIPPED["mini"]["policy"]
                print(f"no warm-up stage in {args.work}: going on from the shipped mini policy ({warmup})")
            config = GrpoStageConfig(output=str(output), warmup=str(warmup),
                                     variant=args.variant, steps=args.steps,
                                     segmenter=str(segmenter) if segmenter.exists() else "mini")
            metrics = train_grpo(config)
            result = output / "policy"
        else:
            from .policy import PolicyTrainConfig, train_policy

            segmenter = args.work / "segmenter" / "segmenter.safetensors"
            config = PolicyTrainConfig(output=str(output), threads=args.threads, refine_share=args.refine_share,
                                       segmenter=str(segmenter) if segmenter.exists() else "mini")
            config.steps = args.steps or config.steps
            metrics = train_policy(config)
            result = output / "policy"
        print(json.dumps({"stage": stage, **metrics}))
        if ship and not (stage == "policy" and "grpo" in stages):
            from dataclasses import asdict

            from .ship import ship as ship_model

            print(f"shipped: {ship_model(SHIPPED_AS[stage], result, command, metrics, asdict(config))}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sam_veteran.trainer.mini", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run(parser.parse_args(argv))
