"""The command line of the mini models' training: one stage at a time, each resumable."""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--stage", required=True, choices=["segmenter", "policy"], help="which model to train")
    parser.add_argument("--output", required=True, help="the stage's working folder (checkpoints, metrics)")
    parser.add_argument("--steps", type=int, help="optimiser steps (default: the stage's own)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--segmenter", help="policy stage: the mini segmenter checkpoint for refinement items")
    parser.add_argument("--refine-share", type=float, help="policy stage: share of refinement items (default 0)")


def run(args) -> int:
    if args.stage == "segmenter":
        from .segmenter import SegmenterTrainConfig, train_segmenter

        config = SegmenterTrainConfig(output=args.output, threads=args.threads)
        if args.steps:
            config.steps = args.steps
        print(json.dumps(train_segmenter(config)))
    elif args.stage == "policy":
        from .policy import PolicyTrainConfig, train_policy

        config = PolicyTrainConfig(output=args.output, threads=args.threads, segmenter=args.segmenter)
        if args.steps:
            config.steps = args.steps
        if args.refine_share is not None:
            config.refine_share = args.refine_share
        print(json.dumps(train_policy(config)))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sam_veteran.trainer.mini", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))
