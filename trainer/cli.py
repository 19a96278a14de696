"""The training command line, shared by `sam-veteran train` and `python -m sam_veteran.trainer`.

Only argparse here: building the parser imports nothing heavy.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

TINY_CONFIG = Path(__file__).parent / "configs" / "tiny.yaml"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="a YAML training config (see trainer/configs/)")
    parser.add_argument("--tiny", action="store_true",
                        help="tiny local models and a generated dataset, on the CPU: offline, about a minute")
    parser.add_argument("--output-dir", help="where checkpoints, the final model and metrics go")
    parser.add_argument("--max-steps", type=int, help="stop after this many optimiser steps")
    parser.add_argument("--resume", nargs="?", const="latest",
                        help="resume from a checkpoint folder (default: the latest in the output dir)")
    parser.add_argument("--overwrite", action="store_true",
                        help="start afresh in an output dir that holds another run (its files are removed)")
    parser.add_argument("--dataset", help="FiftyOne dataset to train on (overrides data.dataset)")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON line")


def config_from_args(args):
    from .config import apply_overrides, load_config

    if args.config:
        config = load_config(args.config)
    elif args.tiny:
        config = load_config(TINY_CONFIG)
    else:
        raise SystemExit("give --config <yaml> (see trainer/configs/) or --tiny")
    return apply_overrides(config, {"tiny": args.tiny or None, "output_dir": args.output_dir,
                                    "max_steps": args.max_steps, "resume_from_checkpoint": args.resume,
                                    "overwrite_output_dir": args.overwrite or None, "data.dataset": args.dataset})


def run(args) -> int:
    from .train import set_offline_defaults, train

    config = config_from_args(args)
    if config.tiny:
        set_offline_defaults()
    result = train(config)
    from accelerate import PartialState

    if not PartialState().is_main_process:
        return 0
    summary = {"output_dir": str(result.output_dir), "final_model": str(result.final_model),
               "metrics_log": str(result.metrics_log), "global_step": result.global_step,
               "records": result.num_records}
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"trained {result.global_step} steps on {result.num_records} task items")
        print(f"final model: {result.final_model}  (SamVeteranModel(policy=...) loads it)")
        print(f"metrics: {result.metrics_log}  and TensorBoard logs under {result.output_dir / 'runs'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sam_veteran.trainer", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))
