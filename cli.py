"""The `sam-veteran` command. Each subcommand is a thin layer over the same functions the SDK exposes.

A mistake (a missing dataset or field, a folder that exists, a model that cannot be downloaded) is reported as one
line and a hint, exit code 2; `--debug` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import sys
from pathlib import Path

from .plugin.agent.prompts import family_names
from .plugin.defaults import (DECODINGS, DEFAULT_BATCH_SIZE, DEFAULT_DECODING, DEFAULT_EVAL_KEY, DEFAULT_GT_FIELD,
                              DEFAULT_LABEL_FIELD, DEFAULT_MAX_STEPS, DEFAULT_POLICY, DEFAULT_PROMPT_FIELD,
                              DEFAULT_SEGMENTER, DEMO_MODELS,
                              REFER_DATASETS, SEGMENTER_HELP, TINY_FAMILIES, TINY_MAX_NEW_TOKENS, cache_dir)

PROG = "sam-veteran"
PLUGIN_DIRNAME = "sam-veteran"
USER_ERRORS = (ValueError, OSError, pickle.UnpicklingError)  # bad input or environment, not a bug
# The SDK's messages name its Python arguments; on the command line they are flags.
PYTHON_TO_FLAGS = (("pass overwrite=True", "pass --overwrite"), ("pass split=", "pass --split SPLIT"),
                   ("(pass images_dir)", "(pass --images-dir)"), ("label_field=", "--label-field "),
                   ("pass prompt_field='<query field>' to", "pass --prompt-field FIELD to"))


class CommandError(Exception):
    """A mistake on the command line: the message, and a hint at what to do instead."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


# --- shared options ---------------------------------------------------------------------------------------------


def common_options() -> argparse.ArgumentParser:
    """Options every command takes (after the command's name)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    parser.add_argument("--database-uri", metavar="URI",
                        help="the MongoDB FiftyOne uses (default: FIFTYONE_DATABASE_URI, else FiftyOne's own "
                             "local service; see `sam-veteran info`)")
    return parser


class DeprecatedAlias(argparse.Action):
    """An old option name kept for one release: it stores into the new option and says so on stderr."""

    def __init__(self, option_strings, dest, new: str, **kwargs) -> None:
        self.new = new
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        print(f"{PROG}: {option_string} is deprecated, use {self.new} (the old name goes in the next release)",
              file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_subparser(subparsers, name: str, **kwargs) -> argparse.ArgumentParser:
    return subparsers.add_parser(name, parents=[common_options()], **kwargs)


def add_view_arguments(parser, verb: str) -> None:
    """The dataset and view selection shared by the commands that work on a view."""
    parser.add_argument("dataset", help="FiftyOne dataset name")
    parser.add_argument("--saved-view", help=f"{verb} this saved view of the dataset")
    parser.add_argument("--tags", nargs="+", help=f"{verb} only the samples with any of these tags")


def add_model_arguments(parser) -> None:
    parser.add_argument("--tiny", action="store_true", help="use the local tiny models: no network, random answers")
    parser.add_argument("--policy", help=f"policy hub id or folder, 'mini' (shipped) or 'oracle' (the simulated user, "
                                         f"reads the ground truth) (default {DEFAULT_POLICY})")
    parser.add_argument("--segmenter", help=f"{SEGMENTER_HELP}, or 'mini' (shipped) (default {DEFAULT_SEGMENTER})")
    parser.add_argument("--family", choices=family_names(),
                        help="the policy's prompts and answer format (default: a known hub id's, else its model type)")
    parser.add_argument("--max-steps", type=int,
                        help=f"refinement steps (clicks) the agent may take after its box (default: the family's, "
                             f"{DEFAULT_MAX_STEPS}; 0 for the peers' seg_zero and vision_reasoner)")
    parser.add_argument("--device", help="cuda, cpu, ... (default: cuda when available)")
    parser.add_argument("--decoding", choices=DECODINGS, default=DEFAULT_DECODING,
                        help=f"how the policy generates: eager, or static (a static KV cache with the decoding step "
                             f"compiled; the first batch of each shape compiles) (default {DEFAULT_DECODING})")


def load_dataset(name: str):
    import fiftyone as fo

    if not fo.dataset_exists(name):
        raise CommandError(f"no FiftyOne dataset named {name!r} in {database_description()}",
                           "`fiftyone datasets list` lists the datasets there; --database-uri picks another database")
    return fo.load_dataset(name)


def load_view(args):
    """The view that `add_view_arguments` describes."""
    dataset = load_dataset(args.dataset)
    if args.saved_view and not dataset.has_saved_view(args.saved_view):
        raise CommandError(f"dataset {args.dataset!r} has no saved view {args.saved_view!r}",
                           f"its saved views: {', '.join(dataset.list_saved_views()) or 'none'}")
    view = dataset.load_saved_view(args.saved_view) if args.saved_view else dataset.view()
    return view.match_tags(args.tags) if args.tags else view


def models(args, say) -> tuple[str, str, dict]:
    """(policy, segmenter, policy kwargs) for --tiny or the given/default models; says up front what will be
    downloaded and where, and fails at once when it cannot be."""
    from .plugin.agent.tiny import tiny_model_paths

    family = {"family": args.family} if getattr(args, "family", None) else {}
    family["decoding"] = getattr(args, "decoding", DEFAULT_DECODING)
    if args.tiny:
        policy, segmenter = tiny_model_paths()
        return policy, segmenter, {"max_new_tokens": TINY_MAX_NEW_TOKENS, **family}
    from .plugin import downloads

    policy, segmenter = args.policy or DEFAULT_POLICY, args.segmenter or DEFAULT_SEGMENTER
    needed = downloads.needed(policy, segmenter)
    for download in needed:
        say(f"This run downloads {download.describe()}.")
    try:
        downloads.check(needed)
    except downloads.DownloadUnavailable as exc:
        raise CommandError(str(exc), "--tiny runs the local tiny models offline; --policy and --segmenter take "
                                     "local checkpoints") from exc
    return policy, segmenter, family


def stderr_say(*parts) -> None:
    print(*parts, file=sys.stderr)


def seconds(value: float) -> str:
    return f"{value:.1f} s"


# --- commands ---------------------------------------------------------------------------------------------------


def add_demo(subparsers) -> None:
    parser = add_subparser(subparsers, "demo", help="build a small dataset, run the agent, evaluate, open the App")
    add_model_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print the summary as JSON only")
    parser.add_argument("--samples", type=int, default=8, help="how many scenes to generate (default 8)")
    parser.add_argument("--batch-size", type=int, default=4, help="samples the agent runs at once (default 4)")
    parser.add_argument("--dir", type=Path, help="where to write the demo images (default: the cache)")
    parser.add_argument("--real", action="store_true",
                        help=f"run the real models ({DEFAULT_POLICY} and SAM {DEFAULT_SEGMENTER}, downloaded once) "
                             "instead of the shipped mini ones")
    app = parser.add_mutually_exclusive_group()
    app.add_argument("--app", action="store_true", help="open the FiftyOne App when done, without asking")
    app.add_argument("--no-app", action="store_true", help="never open the App")
    parser.set_defaults(handler=demo)


def demo(args) -> int:
    from .plugin.demo import run_demo

    say = stderr_say if args.json else print
    if args.tiny and args.real:
        raise CommandError("--tiny and --real exclude each other", "--tiny: random machinery models; --real: the "
                                                                   "downloaded ones; neither: the shipped mini ones")
    if args.tiny:
        say("Using the tiny random-weight policy (its answers are noise: the agent's numbers test the machinery) "
            "with the shipped mini segmenter, which the simulated user beside it drives for real.")
    elif not args.real:
        args.policy, args.segmenter = args.policy or DEMO_MODELS[0], args.segmenter or DEMO_MODELS[1]
        if (args.policy, args.segmenter) == DEMO_MODELS:
            say("Using the shipped mini policy and mini segmenter, trained here on generated scenes (they know only "
                "such scenes); --real runs the released models.")
    policy, segmenter, policy_kwargs = models(args, say)
    if args.tiny and not args.segmenter:
        segmenter = "mini"
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
        for point, stop in zip(summary["step_curve"], summary["stop_rates"]):
            print(f"  after step {point['step']}: gIoU {point['gIoU']:.3f}  cIoU {point['cIoU']:.3f}  "
                  f"agent stopped {stop['cumulative_share']:.0%} so far")
        user = summary["simulated_user"]
        noc = user["noc"] or {}
        print(f"simulated user (the ground truth's box, then the protocol's clicks) with the same segmenter: gIoU "
              f"{user['gIoU']:.3f}  cIoU {user['cIoU']:.3f}  " + "  ".join(f"{k} {v:.2f}" for k, v in noc.items()))
        print(f"stored as evaluations '{summary['eval_key']}' and '{user['eval_key']}' (LISA protocol); in the App "
              "open the panel "
              "'SAM-Veteran: Evaluation' (+ beside the Samples tab) for the curves and the worst samples")
        took = summary["seconds"]
        print(f"took {seconds(took['total'])} (loading the models {seconds(took['load'])}, "
              f"the agent {seconds(took['agent'])})")
    if args.app or (not args.no_app and not args.json and sys.stdin.isatty()
                    and input("Open the FiftyOne App on the results? [y/N] ").strip().lower() == "y"):
        import fiftyone as fo

        fo.launch_app(dataset).wait()
    return 0


def add_tiny_models(subparsers) -> None:
    from .plugin.agent.prompts import FAMILIES

    parser = add_subparser(subparsers, "tiny-models", help="write tiny random-weight models (no download) into DIR")
    parser.add_argument("directory", type=Path, metavar="DIR", help="the folder to write them into (created)")
    parser.add_argument("--family", action="append", choices=list(FAMILIES),
                        help=f"policy families to write, repeatable (default: {' and '.join(TINY_FAMILIES)})")
    parser.set_defaults(handler=tiny_models)


def tiny_models(args) -> int:
    from .plugin.agent.tiny import write_tiny_models

    paths = write_tiny_models(args.directory, families=tuple(args.family or TINY_FAMILIES))
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0


def add_import(subparsers) -> None:
    parser = subparsers.add_parser("import", help="import ReasonSeg or a RefCOCO-family split as a FiftyOne dataset")
    formats = parser.add_subparsers(dest="format", required=True, metavar="FORMAT")
    reasonseg = add_subparser(formats, "reasonseg", help="LISA's ReasonSeg folders (image + JSON pairs)")
    reasonseg.add_argument("directory", type=Path, help="a split folder, or the root holding train/val/test")
    reasonseg.add_argument("--split", help="only this split folder of the root")
    refcoco = add_subparser(formats, "refcoco", help="RefCOCO, RefCOCO+, RefCOCOg (REFER layout) or gRefCOCO")
    refcoco.add_argument("directory", type=Path, help="the REFER data root (holding refcocog/, grefcoco/, ...)")
    refcoco.add_argument("--benchmark", default="refcocog", choices=REFER_DATASETS,
                         help="which benchmark folder of the root to read (default refcocog)")
    refcoco.add_argument("--dataset", dest="benchmark", choices=REFER_DATASETS, action=DeprecatedAlias,
                         new="--benchmark", help=argparse.SUPPRESS)
    refcoco.add_argument("--split-by", help="unc, umd or google (default: umd for refcocog, unc otherwise)")
    refcoco.add_argument("--split", default="val", help="train, val, test, testA, testB or 'all' (default val)")
    refcoco.add_argument("--images-dir", type=Path,
                         help="COCO train2014 images (default ROOT/images/mscoco/images/train2014)")
    for sub in (reasonseg, refcoco):
        sub.add_argument("--name", help="dataset name (default: derived from the format and split)")
        sub.add_argument("--first-text-only", action="store_true", help="one item per image/ref: its first text")
        sub.add_argument("--overwrite", action="store_true", help="replace a dataset of the same name")
        sub.set_defaults(handler=run_import)


def run_import(args) -> int:
    from .plugin.datasets import import_reasonseg, import_refcoco

    options = {"first_text_only": args.first_text_only, "overwrite": args.overwrite, "persistent": True}
    if args.format == "reasonseg":
        name = args.name or f"reasonseg-{args.split or args.directory.resolve().name}"
        dataset = import_reasonseg(args.directory, name=name, split=args.split, **options)
    else:
        split = None if args.split == "all" else args.split
        name = args.name or f"{args.benchmark}-{args.split}"
        dataset = import_refcoco(args.directory, dataset=args.benchmark, split_by=args.split_by, split=split,
                                 images_dir=args.images_dir, name=name, **options)
    skipped = dataset.info["import"]["skipped"]
    print(f"imported {len(dataset)} items into dataset '{dataset.name}' (tags: {', '.join(dataset.distinct('tags'))})")
    for entry in skipped:
        print(f"skipped {entry['file']}: {entry['reason']}")
    return 0


def add_eval(subparsers) -> None:
    from .plugin.metrics import CONVENTIONS, DEFAULT_CONVENTION

    parser = add_subparser(subparsers, "eval", help="gIoU/cIoU of a prediction field, stored as a FiftyOne evaluation")
    parser.add_argument("dataset", help="FiftyOne dataset name")
    parser.add_argument("pred_field", help=f"a Segmentation field, or an agent label field such as "
                                           f"'{DEFAULT_LABEL_FIELD}'")
    parser.add_argument("--gt-field", default=DEFAULT_GT_FIELD,
                        help=f"the ground-truth Segmentation field: 0 background, 1 target, 255 ignore "
                             f"(default {DEFAULT_GT_FIELD})")
    parser.add_argument("--eval-key", default=DEFAULT_EVAL_KEY,
                        help=f"the name the evaluation is stored under; replaces one of that name "
                             f"(default {DEFAULT_EVAL_KEY})")
    parser.add_argument("--protocol", default=DEFAULT_CONVENTION, choices=list(CONVENTIONS),
                        help=f"how ignore pixels and empty masks count (default {DEFAULT_CONVENTION}, LISA's)")
    parser.add_argument("--json", action="store_true", help="print the full report as one JSON line")
    parser.set_defaults(handler=run_eval)


def run_eval(args) -> int:
    from .plugin.evaluation import evaluate

    results = evaluate(load_dataset(args.dataset), args.pred_field, gt_field=args.gt_field,
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

    parser = add_subparser(subparsers, "train", help="multi-task GRPO training of the policy on a FiftyOne view")
    add_arguments(parser)
    parser.set_defaults(handler=train)


def train(args) -> int:
    from .trainer.cli import run

    return run(args)


def add_export(subparsers) -> None:
    parser = subparsers.add_parser("export", help="export a dataset or a view of it as ReasonSeg folders or REFER files")
    formats = parser.add_subparsers(dest="format", required=True, metavar="FORMAT")
    reasonseg = add_subparser(formats, "reasonseg", help="LISA's ReasonSeg folders (image + JSON polygons per split)")
    refer = add_subparser(formats, "refer", help="the REFER layout: refs(...).p + instances.json (RLE) + images")
    refer.add_argument("--benchmark", default="refcocog", choices=REFER_DATASETS,
                       help="the benchmark folder and refs format; grefcoco allows empty ground truths "
                            "(default refcocog)")
    refer.add_argument("--split-by", help="unc, umd or google (default: umd for refcocog, unc otherwise)")
    for sub in (reasonseg, refer):
        add_view_arguments(sub, "export")
        sub.add_argument("export_dir", type=Path, help="a new or empty folder")
        sub.add_argument("--gt-field", default=DEFAULT_GT_FIELD,
                         help=f"the ground-truth Segmentation field (default {DEFAULT_GT_FIELD})")
        sub.add_argument("--prompt-field", default=DEFAULT_PROMPT_FIELD,
                         help=f"the sample field holding each query (default {DEFAULT_PROMPT_FIELD})")
        sub.add_argument("--query-field", dest="prompt_field", action=DeprecatedAlias, new="--prompt-field",
                         help=argparse.SUPPRESS)
        sub.add_argument("--split", help="put every sample in this split (default: each sample's split tag)")
        sub.add_argument("--overwrite", action="store_true", help="replace a previous export in EXPORT_DIR")
        sub.set_defaults(handler=run_export)


def run_export(args) -> int:
    from .plugin.datasets.exporters import export_reasonseg, export_refer

    view = load_view(args)
    options = {"gt_field": args.gt_field, "query_field": args.prompt_field, "split": args.split,
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


def add_run(subparsers) -> None:
    parser = add_subparser(subparsers, "run", help="run the agent on a dataset or a view of it (resumable, batched)")
    add_view_arguments(parser, "run on")
    parser.add_argument("--limit", type=int, help="run on the first N samples of the view")
    add_model_arguments(parser)
    parser.add_argument("--label-field", default=DEFAULT_LABEL_FIELD,
                        help=f"writes LABEL_mask, LABEL_steps, LABEL_clicks (default {DEFAULT_LABEL_FIELD})")
    parser.add_argument("--prompt-field", default=DEFAULT_PROMPT_FIELD,
                        help=f"the sample field holding each query (default {DEFAULT_PROMPT_FIELD})")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                        help=f"samples the agent runs at once; each batch is written when done "
                             f"(default {DEFAULT_BATCH_SIZE})")
    parser.add_argument("--overwrite", action="store_true", help="run again on samples that already have results")
    parser.add_argument("--gt-field", default=DEFAULT_GT_FIELD,
                        help=f"the ground truth that --policy oracle (the simulated user) reads (default "
                             f"{DEFAULT_GT_FIELD})")
    parser.add_argument("--shard", metavar="auto|I/N",
                        help="run as worker I (from 0) of N of one run, the workers claiming chunks of the view from "
                             "the database; auto reads RANK/WORLD_SIZE/LOCAL_RANK (torchrun, accelerate) or "
                             "SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID and uses the GPU of the local rank "
                             "(docs/scale-out.md)")
    parser.add_argument("--run-id", help="the id every worker of a sharded run shares (default: torchrun's "
                                         "--rdzv-id, else SLURM's job and step)")
    parser.add_argument("--chunk-size", type=int, help="samples per claimed chunk (default: 4 batches)")
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON line")
    parser.set_defaults(handler=run_agent_command)


def shard_options(args) -> tuple[tuple[int, int] | None, str | None, str | None]:
    """(shard, run id, device) for `run`: --shard auto reads the launcher's environment and picks the GPU of the
    local rank (modulo the GPUs visible, so one GPU per task under CUDA_VISIBLE_DEVICES works too)."""
    from .plugin.sharding import from_environment, launcher_run_id, parse_shard

    if args.shard is None:
        return None, args.run_id, args.device
    local_rank = None
    if args.shard == "auto":
        found = from_environment(os.environ)
        if found is None:
            raise CommandError("--shard auto found no launcher: neither RANK and WORLD_SIZE (torchrun, accelerate) "
                               "nor SLURM_PROCID and SLURM_NTASKS are set",
                               "start the workers with torchrun or srun, or pass --shard INDEX/COUNT")
        index, count, local_rank = found
    else:
        index, count = parse_shard(args.shard)
    run_id = args.run_id or launcher_run_id(os.environ)
    if run_id is None:
        raise CommandError(f"worker {index}/{count} needs a run id that all the run's workers share",
                           "pass --run-id ID, the same on every worker (or torchrun --rdzv-id ID)")
    device = args.device
    if device is None and local_rank is not None:
        import torch

        device = f"cuda:{local_rank % torch.cuda.device_count()}" if torch.cuda.is_available() else None
    return (index, count), run_id, device


def print_shard_summary(summary: dict, label_field: str) -> None:
    print(f"worker {summary['shard']}: wrote {summary['done']} samples ({summary['failed']} could not be run), "
          f"{summary['skipped']} already had results, in {seconds(summary['seconds'])}; the run has "
          f"{summary['run_done']} of {summary['run_samples']} samples in finished chunks")
    final = summary.get("final")
    if final:
        print(f"run {final['run_id']} on '{label_field}' ({final['reported']} of {final['workers']} workers "
              f"reported): {final['done']} samples written, {final['failed']} could not be run, "
              f"{final['skipped']} already had results, of {final['samples']}; the slowest worker took "
              f"{seconds(final['seconds'])}")


def run_agent_command(args) -> int:
    from .plugin.inference import run_agent
    from .plugin.labels import AgentFields, has_results

    view = load_view(args)
    if args.limit is not None:
        view = view.limit(args.limit)
    say = stderr_say if args.json else print
    shard, run_id, device = shard_options(args)
    pending = view.count() if args.overwrite else view.match(~has_results(args.label_field)).count()
    if pending:
        policy, segmenter, policy_kwargs = models(args, say)
    else:  # nothing to run: no model is loaded, so nothing needs downloading
        policy, segmenter, policy_kwargs = args.policy or DEFAULT_POLICY, args.segmenter or DEFAULT_SEGMENTER, {}

    said = []

    def report(progress) -> None:
        if progress.to_run and progress.done and said[-1:] != [progress.done]:
            say(f"{progress.done}/{progress.to_run} samples written ({progress.failed} could not be run)")
            said.append(progress.done)

    summary = run_agent(view, policy=policy, segmenter=segmenter, max_steps=args.max_steps, device=device,
                        label_field=args.label_field, prompt_field=args.prompt_field, batch_size=args.batch_size,
                        overwrite=args.overwrite, gt_field=args.gt_field, progress=report, shard=shard,
                        run_id=run_id, chunk_size=args.chunk_size, **policy_kwargs)
    if shard is not None:
        if args.json:
            print(json.dumps(summary))
        else:
            print_shard_summary(summary, args.label_field)
        return 0
    run = AgentFields(args.label_field)
    summary["end_reasons"] = ({reason: n for reason, n in sorted(view.count_values(run.end_reason).items()) if reason}
                              if view.has_field(run.mask) else {})
    if args.json:
        print(json.dumps(summary))
        return 0
    if not summary["to_run"]:
        print(f"nothing to run: all {summary['total']} samples of the view already have results in "
              f"'{args.label_field}' (--overwrite runs them again)")
    else:
        print(f"ran the agent on {summary['done']} samples in {seconds(summary['seconds'])}; "
              f"{summary['skipped']} already had results")
    if summary["end_reasons"]:
        print("why the traces of the view ended: "
              + ", ".join(f"{reason} {n}" for reason, n in summary["end_reasons"].items()))
    if summary["failed"]:
        print(f"{summary['failed']} samples could not be run (invalid_input): the reason is in "
              f"{run.mask}.error; a re-run retries them")
    return 0


def add_run_status(subparsers) -> None:
    parser = add_subparser(subparsers, "run-status",
                           help="where the latest sharded run of a label field stands: chunks, workers, summaries")
    parser.add_argument("dataset", help="FiftyOne dataset name")
    parser.add_argument("label_field", nargs="?", default=DEFAULT_LABEL_FIELD,
                        help=f"the run's label field (default {DEFAULT_LABEL_FIELD})")
    parser.add_argument("--json", action="store_true", help="print the status as one JSON line")
    parser.set_defaults(handler=run_status)


def run_status(args) -> int:
    from .plugin.sharding import run_status as status_of

    status = status_of(load_dataset(args.dataset), args.label_field)
    if status is None:
        raise CommandError(f"label field {args.label_field!r} of {args.dataset!r} has had no sharded run",
                           "`sam-veteran run --shard ...` starts one")
    if args.json:
        print(json.dumps(status))
        return 0
    state = "finished" if status["finished"] else (f"running: {status['chunks_held']} chunks held, "
                                                   f"{status['chunks_free']} free")
    print(f"run {status['run_id']} on '{args.label_field}' of '{args.dataset}' ({status['workers']} workers, started "
          f"{status['created']} UTC): {status['chunks_done']} of {status['chunks']} chunks done "
          f"({status['samples_in_done_chunks']} of {status['samples']} samples), {state}")
    for holder in status["holders"]:
        print(f"  holding the field: process {holder['pid']} on {holder['host']}, heartbeat "
              f"{holder['heartbeat_age_s']:.0f} s ago ({'alive' if holder['alive'] else 'dead'})")
    for report in (status["summary"] or {}).get("per_worker", []):
        print(f"  worker {report['shard']} finished: wrote {report['done']} samples ({report['failed']} could not "
              f"be run), {report['skipped']} already had results, in {seconds(report['seconds'])}")
    return 0


def add_info(subparsers) -> None:
    parser = add_subparser(subparsers, "info", help="say which database, plugins folder and caches are used")
    parser.set_defaults(handler=info)


def database_description() -> str:
    import fiftyone as fo

    if fo.config.database_uri:
        return f"the database at {fo.config.database_uri}"
    return f"FiftyOne's local database service (data in {fo.config.database_dir})"


def info(args) -> int:
    import fiftyone as fo
    from huggingface_hub.constants import HF_HUB_CACHE

    plugin = Path(fo.config.plugins_dir or "") / PLUGIN_DIRNAME
    installed = plugin.resolve() == package_root() if plugin.exists() else False
    print(f"package: {package_root()}")
    print(f"database: {database_description()}")
    if not fo.config.database_uri:
        print("  a service already running on this machine is used as it is, whoever started it; "
              "--database-uri or FIFTYONE_DATABASE_URI picks a database of your own")
    print(f"plugins folder: {fo.config.plugins_dir} (the plugin is "
          f"{'installed' if installed else 'not installed: sam-veteran install-plugin'})")
    print(f"SAM checkpoints, demo images, tiny models: {cache_dir()} (SAM_VETERAN_CACHE)")
    print(f"Hugging Face models: {HF_HUB_CACHE} (HF_HOME)")
    return 0


def add_install_plugin(subparsers) -> None:
    parser = add_subparser(subparsers, "install-plugin",
                           help="link this package into FiftyOne's plugins folder, so the App lists its operators")
    parser.add_argument("--plugins-dir", type=Path, help="FiftyOne's plugins folder (default: fo.config.plugins_dir)")
    parser.set_defaults(handler=install_plugin)


def package_root() -> Path:
    """The folder holding this package's fiftyone.yml: the repository root, or the installed package."""
    return Path(__file__).resolve().parent


def install_plugin(args) -> int:
    import fiftyone as fo

    plugins = args.plugins_dir or (Path(fo.config.plugins_dir) if fo.config.plugins_dir else None)
    if plugins is None:
        raise CommandError("FiftyOne has no plugins folder configured", "pass --plugins-dir or set "
                                                                         "FIFTYONE_PLUGINS_DIR")
    target = plugins / PLUGIN_DIRNAME
    if target.is_symlink() and target.resolve() == package_root():
        print(f"already installed: {target} -> {package_root()}")
        return 0
    if target.exists() or target.is_symlink():
        raise CommandError(f"{target} exists and is not a link to {package_root()}",
                           "remove it yourself (it may be another copy of the plugin), then run this again")
    plugins.mkdir(parents=True, exist_ok=True)  # a fresh FiftyOne has no plugins folder yet
    target.symlink_to(package_root(), target_is_directory=True)
    print(f"installed: {target} -> {package_root()}; the App lists the operators as @sam-veteran/fiftyone "
          "(restart an App that is already running)")
    return 0


def add_mini(subparsers) -> None:
    from .trainer.mini.cli import add_arguments

    parser = add_subparser(subparsers, "mini", help="the shipped mini models (trained here on generated scenes)")
    actions = parser.add_subparsers(dest="mini_command", required=True, metavar="ACTION")
    train_parser = actions.add_parser("train", help="rebuild them from nothing, one resumable stage at a time")
    add_arguments(train_parser)
    train_parser.set_defaults(handler=mini_train)


def mini_train(args) -> int:
    from .trainer.mini.cli import run

    return run(args)


COMMANDS = [add_demo, add_run, add_run_status, add_eval, add_import, add_export, add_train, add_mini, add_tiny_models,
            add_install_plugin, add_info]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(subparsers)
    return parser


# --- running ----------------------------------------------------------------------------------------------------


def configure_environment(args) -> None:
    """Before FiftyOne and transformers load: the database asked for, and no noise on every command (the
    bundled mongod 6.0's "oldest supported version" notice, progress bars in output that is not a terminal, info
    logs around a JSON line). Each is a default: a variable already set in the environment wins."""
    if args.database_uri:
        os.environ["FIFTYONE_DATABASE_URI"] = args.database_uri
    os.environ.setdefault("FIFTYONE_DATABASE_VALIDATION", "false")
    as_json = getattr(args, "json", False)
    if as_json or not (sys.stdout.isatty() and sys.stderr.isatty()):
        os.environ.setdefault("FIFTYONE_SHOW_PROGRESS_BARS", "false")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers' bars too
    if as_json:
        os.environ.setdefault("FIFTYONE_LOGGING_LEVEL", "ERROR")
    if "fiftyone" in sys.modules:  # already loaded (a caller in the same process): set what still matters
        import fiftyone as fo

        if os.environ.get("FIFTYONE_SHOW_PROGRESS_BARS") == "false":
            fo.config.show_progress_bars = False


def error_message(exc: BaseException) -> str:
    message = str(exc) or type(exc).__name__
    for python, flag in PYTHON_TO_FLAGS:
        message = message.replace(python, flag)
    return message


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_environment(args)
    command = f"{PROG} {args.command}" + (f" {args.format}" if getattr(args, "format", None) else "")
    try:
        try:
            return args.handler(args)
        except SystemExit as exc:  # a message from a layer below (the trainer's argument checks)
            if isinstance(exc.code, str):
                raise CommandError(exc.code) from exc
            raise
    except (CommandError, *USER_ERRORS) as exc:
        if args.debug:
            raise
        first, *details = error_message(exc).splitlines()
        print(f"{command}: error: {first}", file=sys.stderr)
        for line in details:
            print(line, file=sys.stderr)
        hint = getattr(exc, "hint", None) or f"`{command} --help` lists the options"
        print(f"hint: {hint}; --debug shows the traceback", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
