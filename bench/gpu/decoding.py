"""Eager decoding against the static-cache compiled path, side by side in one run, on one GPU.

The policy is `agent.py`'s: the Qwen2.5-VL-7B architecture (random weights, bf16, built from the config in code),
forced to exactly `--new-tokens` tokens a call; SAM vit_h (random weights) beside it. For each decoding
(``eager``, ``static``) and batch size (1, 8, 32) it measures, on the same inputs:

- pure generation: the first call at the shape (compilation and CUDA-graph capture on the static path) timed
  apart, then `--rounds` calls per path, the paths interleaved: tokens/s of the best call (and the median) and
  the roofline ratio, achieved tokens/s over the bandwidth-bound
  tokens/s (batch x measured copy bandwidth / bytes of the weights a decoding step reads);
- the agent (box, one click, stop: three policy calls, two SAM decodes per sample, `agent.ScriptedTexts`):
  samples/s against pure generation of the same inputs, with the time split into generate / processor / SAM
  encode / SAM decode / token decode / rendering / other, with the SAM encode overlapped with step 0 (the
  default) and, once per batch size, not;
- the prefill's share of generation and the vision encoder's share of the prefill: what reusing the image's
  encoding or a KV prefix across steps could save at most (`bench/README.md`).

    python bench/gpu/decoding.py --out bench/results/decoding_h200.json   # H200, about 6-9 minutes
    python bench/gpu/decoding.py --dry-run                                # CPU, tiny config, under a minute

The CPU benchmark `bench/decoding.py` runs the same measurements on the local tiny models. Needs torch,
transformers and segment-anything (pure Python: put a copy on PYTHONPATH, see `bench/README.md`), nothing else.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from agent import Clock, ScriptedTexts, build_policy, images  # noqa: E402  the GPU agent benchmark's pieces

from sam_veteran.plugin.agent import Agent, AgentConfig, SamSegmenter, TransformersPolicy, loop  # noqa: E402
from sam_veteran.plugin.agent.segmenters import build_sam  # noqa: E402


def copy_bandwidth(device: torch.device, megabytes: int = 1024, repeats: int = 5) -> float:
    """Bytes per second a device-to-device copy moves (read plus write), the best of `repeats`."""
    source = torch.empty(megabytes * 2**20, dtype=torch.uint8, device=device)
    target = torch.empty_like(source)
    best = float("inf")
    for _ in range(repeats + 1):  # the first copy warms up
        sync(device)
        started = time.perf_counter()
        target.copy_(source)
        sync(device)
        best = min(best, time.perf_counter() - started)
    return 2 * source.numel() / best


def step_weight_bytes(model) -> int:
    """Bytes of the weights one decoding step reads: everything but the vision tower (run once, in the prefill)."""
    visual = {id(p) for name, p in model.named_parameters() if ".visual." in f".{name}"}
    return sum(p.numel() * p.element_size() for p in model.parameters() if id(p) not in visual)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StreamClock(Clock):
    """`agent.Clock` waiting for the calling thread's own CUDA stream only: the SAM encode overlapped with step 0
    runs on a stream of its own, and a device-wide wait would tie the two threads' timings together."""

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()


class ForwardSplit:
    """Seconds of the model's prefill forwards (more than one new token) and of its vision tower, by hooks."""

    def __init__(self, model, device: torch.device):
        self.device, self.seconds, self._started = device, defaultdict(float), {}
        self.handles = [model.register_forward_pre_hook(self._enter("forward"), with_kwargs=True),
                        model.register_forward_hook(self._leave("forward"), with_kwargs=True)]
        visual = getattr(getattr(model, "model", model), "visual", None)
        if visual is not None:
            self.handles += [visual.register_forward_pre_hook(self._enter("vision"), with_kwargs=True),
                             visual.register_forward_hook(self._leave("vision"), with_kwargs=True)]

    def _enter(self, name):
        def hook(module, args, kwargs):
            ids = kwargs.get("input_ids")
            if name == "vision" or (ids is not None and ids.shape[1] > 1):
                sync(self.device)
                self._started[name] = time.perf_counter()
        return hook

    def _leave(self, name):
        def hook(module, args, kwargs, output):
            if name in self._started:
                sync(self.device)
                self.seconds["prefill" if name == "forward" else name] += time.perf_counter() - self._started.pop(name)
        return hook

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def policy_for(base: TransformersPolicy, decoding: str, compile_backend: str | None = "inductor") -> TransformersPolicy:
    """The same model and processor behind another decoding path."""
    return TransformersPolicy(base.model, base.processor, family=base.family, max_new_tokens=base.max_new_tokens,
                              batch_size=base.batch_size, decoding=decoding, compile_backend=compile_backend)


def timed(policy: TransformersPolicy, requests, device) -> float:
    sync(device)
    started = time.perf_counter()
    answers = policy.generate_ids(requests)
    sync(device)
    assert all(len(a) == policy.max_new_tokens for a in answers), "the policy must be forced to new_tokens tokens"
    return time.perf_counter() - started


def measure_generation(policies: dict, requests, rounds: int, device) -> dict[str, dict]:
    """Each path's first call at this shape apart (compilation lands there), then `rounds` calls per path,
    interleaved so that the machine's load drifts over every path alike; then one call under `ForwardSplit`."""
    first = {name: timed(policy, requests, device) for name, policy in policies.items()}
    times: dict[str, list[float]] = {name: [] for name in policies}
    for _ in range(rounds):
        for name, policy in policies.items():
            times[name].append(timed(policy, requests, device))
    out = {}
    for name, policy in policies.items():
        split = ForwardSplit(policy.model, device)
        seconds = timed(policy, requests, device)
        split.remove()
        vision = split.seconds["vision"]  # transformers 5 encodes the images before the first forward, not in it
        prefill = split.seconds["prefill"] + vision
        tokens = len(requests) * policy.max_new_tokens
        out[name] = {"first_call_seconds": round(first[name], 3), "seconds": round(sum(times[name]), 3),
                     "tokens_per_s": round(tokens / min(times[name]), 1),  # the best call: load only slows
                     "median_tokens_per_s": round(tokens / float(np.median(times[name])), 1),
                     "prefill_share": round(prefill / seconds, 3),
                     "vision_share_of_prefill": round(vision / prefill, 3)}
    return out


def measure_agent(policy: TransformersPolicy, segmenter: SamSegmenter, batch_size: int, rounds: int, side: int,
                  device, overlap: bool = True) -> dict:
    """The agent on `rounds` batches, its time split by part, against pure generation of the same inputs."""
    config = AgentConfig(max_steps=3, input_size=(side, side), overlap_encode=overlap)
    Agent(ScriptedTexts(policy), segmenter, config).run(images(batch_size, seed=batch_size + 1000))  # warm-up
    clock, kept, render = StreamClock(device), [], loop.policy_view
    clock.watch("generate", policy.model, "generate")
    clock.watch("processor", policy, "encode", keep=kept)
    clock.watch("sam_encode", segmenter, "encode")
    clock.watch("sam_decode", segmenter, "segment")
    clock.watch("token_decode", policy.processor, "batch_decode")
    clock.watch("rendering", loop, "policy_view")
    agent = Agent(ScriptedTexts(policy), segmenter, config)
    items = images(batch_size * rounds, seed=batch_size)
    sync(device)
    started = time.perf_counter()
    for start in range(0, len(items), batch_size):
        agent.run(items[start:start + batch_size])
    sync(device)
    wall = time.perf_counter() - started
    for owner, name in ((policy.model, "generate"), (policy, "encode"), (segmenter, "encode"),
                        (segmenter, "segment"), (policy.processor, "batch_decode")):
        delattr(owner, name)
    loop.policy_view = render
    pure = StreamClock(device)
    pure.watch("generate", policy.model, "generate")
    for inputs in kept:
        options = policy.static_options(inputs["input_ids"].shape[1]) if policy.decoding == "static" else {}
        policy.model.generate(**inputs, max_new_tokens=policy.max_new_tokens, do_sample=False, **options)
    del policy.model.generate
    parts = {name: round(seconds, 3) for name, seconds in clock.seconds.items()}
    inside = sum(v for k, v in clock.seconds.items() if not (overlap and k == "sam_encode"))
    parts["other"] = round(wall - inside, 3)
    agent_rate, generate_rate = len(items) / wall, len(items) / pure.seconds["generate"]
    return {"overlap_encode": overlap, "samples": len(items), "agent_samples_per_s": round(agent_rate, 3),
            "generate_samples_per_s": round(generate_rate, 3), "agent_over_generate": round(agent_rate / generate_rate, 3),
            "agent_seconds": round(wall, 3), "agent_seconds_by_part": parts}


def run_batch(policies: dict, segmenter, batch_size: int, args, device, roofline_step: float) -> list[dict]:
    """Every decoding path at one batch size, on the same requests."""
    from sam_veteran.plugin.agent import PolicyRequest
    from sam_veteran.plugin.agent.overlay import policy_view

    base = next(iter(policies.values()))
    requests = [PolicyRequest(policy_view(item.image, (args.image_side,) * 2), base.family.grounding_prompt(item.query))
                for item in images(batch_size, seed=batch_size + 7)]
    generation = measure_generation(policies, requests, args.rounds, device)
    rows = []
    for name, policy in policies.items():
        row = {"decoding": name, "batch_size": batch_size, **generation[name]}
        row["roofline_tokens_per_s"] = round(batch_size * roofline_step, 1)
        row["roofline_ratio"] = round(row["tokens_per_s"] / row["roofline_tokens_per_s"], 4)
        row["agent"] = measure_agent(policy, segmenter, batch_size, args.agent_rounds, args.image_side, device)
        if name == "eager":
            row["agent_sequential_encode"] = measure_agent(policy, segmenter, batch_size, args.agent_rounds,
                                                           args.image_side, device, overlap=False)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def table(runs: list[dict]) -> str:
    lines = ["| decoding | batch | first call s | tokens/s | x eager | roofline | agent samples/s | agent / generate "
             "| generate | processor | SAM enc | SAM dec | tok dec | render | other |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    eager = {r["batch_size"]: r["tokens_per_s"] for r in runs if r["decoding"] == "eager"}
    for r in runs:
        a = r["agent"]
        share = {k: f"{v / a['agent_seconds']:.0%}" for k, v in a["agent_seconds_by_part"].items()}
        lines.append(f"| {r['decoding']} | {r['batch_size']} | {r['first_call_seconds']} | {r['tokens_per_s']} | "
                     f"{r['tokens_per_s'] / eager[r['batch_size']]:.2f} | {r['roofline_ratio']:.2%} | "
                     f"{a['agent_samples_per_s']} | {a['agent_over_generate']} | {share['generate']} | "
                     f"{share['processor']} | {share['sam_encode']} | {share['sam_decode']} | "
                     f"{share['token_decode']} | {share['rendering']} | {share['other']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-sizes", type=lambda s: [int(v) for v in s.split(",")],
                        help="default 1,8,32 (1,2 with --dry-run)")
    parser.add_argument("--decodings", type=lambda s: s.split(","), default=["eager", "static"])
    parser.add_argument("--new-tokens", type=int, default=128, help="tokens generated per policy call")
    parser.add_argument("--image-side", type=int, default=840, help="the policy's view (840: 900 image tokens)")
    parser.add_argument("--rounds", type=int, default=2, help="timed generate calls per shape")
    parser.add_argument("--agent-rounds", type=int, default=1, help="timed agent batches per batch size")
    parser.add_argument("--sam-dtype", default="bfloat16", choices=["float32", "bfloat16"],
                        help="SAM's image encoder dtype")
    parser.add_argument("--compile-backend", help="torch.compile backend of the static path, 'none' for the static "
                                                  "cache uncompiled (default: inductor; none with --dry-run)")
    parser.add_argument("--dry-run", action="store_true", help="tiny models on the CPU: checks the code path")
    parser.add_argument("--out", type=Path, help="also write the results as JSON here (after every batch size)")
    args = parser.parse_args(argv)
    if args.dry_run:
        device, dtype, sam_type, backend = torch.device("cpu"), torch.float32, "tiny", "none"
        args.batch_sizes, args.new_tokens, args.image_side = args.batch_sizes or [1, 2], min(args.new_tokens, 4), 56
    elif torch.cuda.is_available():
        device, dtype, sam_type, backend = torch.device("cuda"), torch.bfloat16, "vit_h", "inductor"
    else:
        raise SystemExit("no GPU: run with --dry-run to check the code path on the CPU")

    backend = args.compile_backend or backend
    args.batch_sizes = args.batch_sizes or [1, 8, 32]
    started = time.perf_counter()
    args.batch_sizes = sorted(args.batch_sizes)
    base = build_policy(args, device, dtype)
    policies = {name: policy_for(base, name, None if backend == "none" else backend) for name in args.decodings}
    torch.manual_seed(0)
    segmenter = SamSegmenter(build_sam(sam_type), device=device, encode_batch_size=8,
                             encoder_dtype=getattr(torch, args.sam_dtype))
    bandwidth = copy_bandwidth(device, megabytes=64 if args.dry_run else 1024)
    weight_bytes = step_weight_bytes(base.model)
    summary = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "policy": "tiny Qwen2.5-VL" if args.dry_run else "Qwen2.5-VL-7B architecture", "segmenter": sam_type,
        "sam_encoder_dtype": args.sam_dtype, "dtype": str(dtype).replace("torch.", ""),
        "torch": torch.__version__, "transformers": __import__("transformers").__version__,
        "compile_backend": backend, "new_tokens": args.new_tokens, "image_tokens": (args.image_side // 28) ** 2,
        "step_weight_bytes": weight_bytes, "copy_bandwidth_gb_per_s": round(bandwidth / 1e9, 1),
        "build_seconds": round(time.perf_counter() - started, 1), "runs": [],
    }
    for batch_size in args.batch_sizes:
        summary["runs"] += run_batch(policies, segmenter, batch_size, args, device, bandwidth / weight_bytes)
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(table(summary["runs"]))
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
