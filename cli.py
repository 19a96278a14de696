"""The `sam-veteran` command. Each subcommand is a thin layer over the same functions the SDK exposes."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

TINY_MAX_NEW_TOKENS = 64
SEGMENTER_HELP = ("SAM checkpoint path or vit_h/vit_l/vit_b, or a SAM 2 folder or hub id (facebook/sam2.1-hiera-large) "
                  "(default vit_h)")


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
    parser.add_argument("--segmenter", help=SEGMENTER_HELP)
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
        elif not Path(segmenter).exists():
            say(f"The segmenter {segmenter} comes from the Hugging Face Hub into its cache unless already there "
                "(SAM 2 hiera-large: about 0.9 GB).")
    directory = args.dir or cache_dir() / "demo"
    if args.json:  # stdout carries the JSON line alone: no FiftyOne progress bars or info logs (set before import)
        os.environ.setdefault("FIFTYONE_SHOW_PROGRESS_BARS", "false")
        os.environ.setdefault("FIFTYONE_LOGGING_LEVEL", "ERROR")
    dataset, summary = run_demo(policy, segmenter, directory, num_samples=args.samples, max_steps=args.max_steps,
                                batch_size=args.batch_size, device=args.device, **policy_kwargs)
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"{summary['samples']} samples in dataset '{summary['dataset']}'")
        print(f"gIoU {summary['gIoU']:.3f}  cIoU {summary['cIoU']:.3f}  masks per sample "
              f"{summary['mean_masks_per_sample']:.2f}")
        print("why traces ended: " + ", ".join(f"{k} {v}" for k, v in summary["end_reasons"].items()))
        for point, stop in zip(summary["step_curve"], summary["stop_rates"]):
            print(f"  after step {point['step']}: gIoU {point['gIoU']:.3f}  cIoU {point['cIoU']:.3f}  "
                  f"agent stopped {stop['cumulative_share']:.0%} so far")
        print(f"stored as evaluation '{summary['eval_key']}' (LISA protocol); in the App open the panel "
              "'SAM-Veteran evaluation' (+ beside the Samples tab) for the curves and the worst samples")
        print(f"seconds: {summary['seconds']}")
    if args.app or (not args.no_app and not args.json and sys.stdin.isatty()
                    and input("Open the FiftyOne App on the results? [y/N] ").strip().lower() == "y"):
        import fiftyone as fo

        fo.launch_app(dataset).wait()
    return 0


def add_import(subparsers) -> None:
    parser = subparsers.add_parser("import", help="import ReasonSeg or a RefCOCO-family split as a FiftyOne dataset")
    formats = parser.add_subparsers(dest="format", required=True)
    reasonseg = formats.add_parser("reasonseg", help="LISA's ReasonSeg folders (image + JSON pairs)")
    reasonseg.add_argument("directory", type=Path, help="a split folder, or the root holding train/val/test")
    reasonseg.add_argument("--split", help="only this split folder of the root")
    refcoco = formats.add_parser("refcoco", help="RefCOCO, RefCOCO+, RefCOCOg (REFER layout) or gRefCOCO")
    refcoco.add_argument("directory", type=Path, help="the REFER data root (holding refcocog/, grefcoco/, ...)")
    refcoco.add_argument("--dataset", default="refcocog", choices=["refcoco", "refcoco+", "refcocog", "grefcoco"])
    refcoco.add_argument("--split-by", help="unc, umd or google (default: umd for refcocog, unc otherwise)")
    refcoco.add_argument("--split", default="val", help="train, val, test, testA, testB or 'all' (default val)")
    refcoco.add_argument("--images-dir", type=Path,
                         help="COCO train2014 images (default ROOT/images/mscoco/images/train2014)")
    for sub in (reasonseg, refcoco):
        sub.add_argument("--name", help="dataset name (default: derived from the format and split)")
        sub.add_argument("--first-text-only", action="store_true", help="one item per image/ref: its first text")
        sub.add_argument("--overwrite", action="store_true", help="replace a dataset of the same name")
    parser.set_defaults(handler=run_import)


def run_import(args) -> int:
    from .plugin.datasets import import_reasonseg, import_refcoco

    options = {"first_text_only": args.first_text_only, "overwrite": args.overwrite, "persistent": True}
    if args.format == "reasonseg":
        name = args.name or f"reasonseg-{args.split or args.directory.resolve().name}"
        dataset = import_reasonseg(args.directory, name=name, split=args.split, **options)
    else:
        split = None if args.split == "all" else args.split
        name = args.name or f"{args.dataset}-{args.split}"
        dataset = import_refcoco(args.directory, dataset=args.dataset, split_by=args.split_by, split=split,
                                 images_dir=args.images_dir, name=name, **options)
    skipped = dataset.info["import"]["skipped"]
    print(f"imported {len(dataset)} items into dataset '{dataset.name}' (tags: {', '.join(dataset.distinct('tags'))})")
    for entry in skipped:
        print(f"skipped {entry['file']}: {entry['reason']}")
    return 0


def add_eval(subparsers) -> None:
    from .plugin.metrics import CONVENTIONS

    parser = subparsers.add_parser("eval", help="gIoU/cIoU of a prediction field, stored as a FiftyOne evaluation")
    parser.add_argument("dataset", help="FiftyOne dataset name")
    parser.add_argument("pred_field", help="a Segmentation field, or an agent label field such as 'veteran'")
    parser.add_argument("--gt-field", default="ground_truth")
    parser.add_argument("--eval-key", default="eval")
    parser.add_argument("--protocol", default="lisa", choices=list(CONVENTIONS))
    parser.add_argument("--json", action="store_true", help="print the full report as one JSON line")
    parser.set_defaults(handler=run_eval)


def run_eval(args) -> int:
    import fiftyone as fo

    from .plugin.evaluation import evaluate

    if not fo.dataset_exists(args.dataset):
        raise SystemExit(f"no FiftyOne dataset named {args.dataset!r}")
    results = evaluate(fo.load_dataset(args.dataset), args.pred_field, gt_field=args.gt_field,
                       eval_key=args.eval_key, protocol=args.protocol)
    report = results.report()
    if args.json:
        print(json.dumps(report))
        return 0
    metrics = report["metrics"]
    print(f"{args.dataset} / {args.pred_field} ({args.protocol}): gIoU {metrics['gIoU']:.4f}  "
          f"cIoU {metrics['cIoU']:.4f}  over {metrics['count']} items; stored as evaluation '{args.eval_key}'")
    for name, split in report["by_query_type"].items():
        print(f"  {name}: gIoU {split['gIoU']:.4f}  cIoU {split['cIoU']:.4f}  ({split['count']} items)")
    for point, stop in zip(report["step_curve"], report["stop_rates"]):
        print(f"  after step {point['step']}: gIoU {point['gIoU']:.4f}  cIoU {point['cIoU']:.4f}  "
              f"refined {point['refined']}  agent stopped {stop['cumulative_share']:.1%} so far")
    return 0


def add_train(subparsers) -> None:
    from .trainer.cli import add_arguments

    parser = subparsers.add_parser("train", help="multi-task GRPO training of the policy on a FiftyOne view")
    add_arguments(parser)
    parser.set_defaults(handler=train)


def train(args) -> int:
    from .trainer.cli import run

    return run(args)


def add_export(subparsers) -> None:
    parser = subparsers.add_parser("export", help="export a dataset or a view of it as ReasonSeg folders or REFER files")
    formats = parser.add_subparsers(dest="format", required=True)
    reasonseg = formats.add_parser("reasonseg", help="LISA's ReasonSeg folders (image + JSON polygons per split)")
    refer = formats.add_parser("refer", help="the REFER layout: refs(...).p + instances.json (RLE) + images")
    refer.add_argument("--benchmark", default="refcocog", choices=["refcoco", "refcoco+", "refcocog", "grefcoco"],
                       help="the dataset folder and refs format (grefcoco allows empty ground truths)")
    refer.add_argument("--split-by", help="unc, umd or google (default: umd for refcocog, unc otherwise)")
    for sub in (reasonseg, refer):
        add_view_arguments(sub, "export")
        sub.add_argument("export_dir", type=Path, help="a new or empty folder")
        sub.add_argument("--gt-field", default="ground_truth")
        sub.add_argument("--query-field", default="query")
        sub.add_argument("--split", help="put every sample in this split (default: each sample's split tag)")
        sub.add_argument("--overwrite", action="store_true", help="replace a previous export in EXPORT_DIR")
    parser.set_defaults(handler=run_export)


def run_export(args) -> int:
    from .plugin.datasets.exporters import export_reasonseg, export_refer

    view = load_view(args)
    options = {"gt_field": args.gt_field, "query_field": args.query_field, "split": args.split,
               "overwrite": args.overwrite}
    if args.format == "reasonseg":
        summary = export_reasonseg(view, args.export_dir, **options)
    else:
        summary = export_refer(view, args.export_dir, dataset=args.benchmark, split_by=args.split_by, **options)
    print(f"exported {summary['items']} items ({summary['images']} images, splits: {', '.join(summary['splits'])}) "
          f"as {summary['format']} into {summary['export_dir']}")
    if summary.get("ignore_dropped"):
        print(f"{summary['ignore_dropped']} samples had ignore pixels: REFER has no ignore label, they are background")
    return 0


def add_view_arguments(parser, verb: str) -> None:
    """The dataset and view selection shared by the commands that work on a view."""
    parser.add_argument("dataset", help="FiftyOne dataset name")
    parser.add_argument("--saved-view", help=f"{verb} this saved view of the dataset")
    parser.add_argument("--tags", nargs="+", help=f"{verb} only the samples with any of these tags")


def load_view(args):
    """The view that `add_view_arguments` describes; exits with a message when the dataset does not exist."""
    import fiftyone as fo

    if not fo.dataset_exists(args.dataset):
        raise SystemExit(f"no FiftyOne dataset named {args.dataset!r}")
    dataset = fo.load_dataset(args.dataset)
    view = dataset.load_saved_view(args.saved_view) if args.saved_view else dataset.view()
    return view.match_tags(args.tags) if args.tags else view


def add_run(subparsers) -> None:
    parser = subparsers.add_parser("run", help="run the agent on a dataset or a view of it (resumable, batched)")
    add_view_arguments(parser, "run on")
    parser.add_argument("--limit", type=int, help="run on the first N samples of the view")
    parser.add_argument("--tiny", action="store_true", help="use the local tiny models: no network, random answers")
    parser.add_argument("--policy", help="policy hub id or folder (default Qwen/Qwen2.5-VL-7B-Instruct)")
    parser.add_argument("--segmenter", help=SEGMENTER_HELP)
    parser.add_argument("--label-field", default="veteran", help="writes LABEL_mask, LABEL_steps, LABEL_clicks")
    parser.add_argument("--prompt-field", default="query", help="the sample field holding each query")
    parser.add_argument("--family", help="the policy's prompts and answer format: qwen2_5_vl, qwen2_vl, qwen3_vl, "
                                         "seg_zero, vision_reasoner (default: a known hub id's, else its model type)")
    parser.add_argument("--max-steps", type=int, help="refinement steps (default: the family's, 3; 0 for peers)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", help="cuda, cpu, ... (default: cuda when available)")
    parser.add_argument("--overwrite", action="store_true", help="run again on samples that already have results")
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON line")
    parser.set_defaults(handler=run_agent_command)


def run_agent_command(args) -> int:
    from .plugin.agent import DEFAULT_POLICY
    from .plugin.agent.segmenter import DEFAULT_SEGMENTER
    from .plugin.agent.prompts import get_family
    from .plugin.inference import run_agent

    policy_kwargs = {"family": get_family(args.family)} if args.family else {}
    view = load_view(args)
    if args.limit is not None:
        view = view.limit(args.limit)
    if args.tiny:
        policy, segmenter = tiny_model_paths()
        policy_kwargs["max_new_tokens"] = TINY_MAX_NEW_TOKENS
    else:
        policy, segmenter = args.policy or DEFAULT_POLICY, args.segmenter or DEFAULT_SEGMENTER
    say = (lambda *a: print(*a, file=sys.stderr)) if args.json else print
    report = lambda p: say(f"{p.done}/{p.to_run} samples written ({p.failed} failed)")  # noqa: E731
    summary = run_agent(view, policy=policy, segmenter=segmenter, max_steps=args.max_steps, device=args.device,
                        label_field=args.label_field, prompt_field=args.prompt_field, batch_size=args.batch_size,
                        overwrite=args.overwrite, progress=report, **policy_kwargs)
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"{summary['done']} samples run ({summary['failed']} failed, their reasons in "
              f"{args.label_field}_mask.error), {summary['skipped']} already had results; "
              f"{summary['seconds']:.1f} s")
    return 0


COMMANDS = [add_demo, add_tiny_models, add_import, add_eval, add_train, add_export, add_run]


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
