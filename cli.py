"""The `sam-veteran` command. Each subcommand is a thin layer over the same functions the SDK exposes."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

TINY_MAX_NEW_TOKENS = 64


def cache_dir() -> Path:
    """Where the demo's images and the tiny models live: ``$SAM_VETERAN_CACHE`` or ``~/.cache/sam_veteran``."""
    return Path(os.environ.get("SAM_VETERAN_CACHE", Path.home() / ".cache" / "sam_veteran"))


def tiny_model_paths(directory: Path | None = None) -> tuple[str, str]:
    """(policy folder, segmenter checkpoint) of the tiny models, written on first use."""
    from .plugin.agent.tiny import TINY_POLICY_DIRNAME, TINY_SEGMENTER_FILENAME, write_tiny_models

    directory = directory or cache_dir() / "tiny"
    policy = directory / TINY_POLICY_DIRNAME.format(family="qwen2_5_vl")
    segmenter = directory / TINY_SEGMENTER_FILENAME
    if not (policy / "config.json").exists() or not segmenter.exists():
        write_tiny_models(directory)
    return str(policy), str(segmenter)


def add_tiny_models(subparsers) -> None:
    parser = subparsers.add_parser("tiny-models", help="write tiny random-weight models (no download) into DIR")
    parser.add_argument("directory", type=Path)
    parser.add_argument("--family", action="append", choices=["qwen2_5_vl", "qwen2_vl", "qwen3_vl"],
                        help="policy families to write (default: qwen2_5_vl and qwen3_vl)")
    parser.set_defaults(handler=tiny_models)


def tiny_models(args) -> int:
    from .plugin.agent.tiny import write_tiny_models

    paths = write_tiny_models(args.directory, families=tuple(args.family or ("qwen2_5_vl", "qwen3_vl")))
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0


def add_demo(subparsers) -> None:
    parser = subparsers.add_parser("demo", help="build a small dataset, run the agent, evaluate, open the App")
    parser.add_argument("--tiny", action="store_true", help="use the local tiny models: no network, random answers")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON only")
    parser.add_argument("--policy", help="policy hub id or folder (default Qwen/Qwen2.5-VL-7B-Instruct)")
    parser.add_argument("--segmenter", help="SAM checkpoint path or vit_h/vit_l/vit_b (default vit_h)")
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--max-steps", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--device", help="cuda, cpu, ... (default: cuda when available)")
    parser.add_argument("--dir", type=Path, help="where to write the demo images (default: the cache)")
    app = parser.add_mutually_exclusive_group()
    app.add_argument("--app", action="store_true", help="open the FiftyOne App when done, without asking")
    app.add_argument("--no-app", action="store_true", help="never open the App")
    parser.set_defaults(handler=demo)


def demo(args) -> int:
    from .plugin.agent import DEFAULT_POLICY
    from .plugin.agent.segmenter import CHECKPOINT_URLS, DEFAULT_SEGMENTER
    from .plugin.demo import run_demo

    say = (lambda *a: print(*a, file=sys.stderr)) if args.json else print
    policy_kwargs = {}
    if args.tiny:
        policy, segmenter = tiny_model_paths()
        policy_kwargs["max_new_tokens"] = TINY_MAX_NEW_TOKENS
        say("Using the tiny random-weight models: their answers are noise, the numbers below test the machinery.")
    else:
        policy, segmenter = args.policy or DEFAULT_POLICY, args.segmenter or DEFAULT_SEGMENTER
        if not Path(policy).exists():
            say(f"The policy {policy} comes from the Hugging Face Hub into its cache "
                f"(HF_HOME, default ~/.cache/huggingface) unless already there: about 16 GB for the 7B model.")
        if segmenter in CHECKPOINT_URLS:
            say(f"The segmenter {segmenter} comes from {CHECKPOINT_URLS[segmenter]} into {cache_dir()} "
                "unless already there (vit_h: 2.4 GB).")
    directory = args.dir or cache_dir() / "demo"
    dataset, summary = run_demo(policy, segmenter, directory, num_samples=args.samples, max_steps=args.max_steps,
                                batch_size=args.batch_size, device=args.device, **policy_kwargs)
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"{summary['samples']} samples in dataset '{summary['dataset']}'")
        print(f"gIoU {summary['gIoU']:.3f}  cIoU {summary['cIoU']:.3f}  masks per sample "
              f"{summary['mean_masks_per_sample']:.2f}")
        print("why traces ended: " + ", ".join(f"{k} {v}" for k, v in summary["end_reasons"].items()))
        print(f"seconds: {summary['seconds']}")
    if args.app or (not args.no_app and not args.json and sys.stdin.isatty()
                    and input("Open the FiftyOne App on the results? [y/N] ").strip().lower() == "y"):
        import fiftyone as fo

        dataset.persistent = True
        fo.launch_app(dataset).wait()
    return 0


COMMANDS = [add_demo, add_tiny_models]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sam-veteran", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
