"""Agent throughput on one GPU with full-size random-weight models, against pure `generate` of the same policy.

The policy is the Qwen2.5-VL-7B architecture (8.29B parameters, bf16; the config is `train_step.py`'s, written in
code, nothing downloaded) with the agent's own locally trained tokenizer (`plugin/agent/tiny.py`), and the
segmenter SAM vit_h (random weights, `segmenter.build_sam`). Random weights never answer in the format, so every
policy call runs the real model for exactly `--new-tokens` tokens and its text is then replaced by a fixed script
(box, one click, stop: `agent_throughput.ReplayPolicy`): each sample costs three full `generate` steps, two SAM
decodes and one SAM encode, as a real three-step trace does.

For each batch size the agent runs `agent.run` on that many 640x480 images; every batch of processor inputs the
policy built is kept, and the same `model.generate` calls are then timed again alone. The agent's samples/s over
pure generate's samples/s is the share of the GPU time the agent keeps for the policy; the rest is split into
the processor (chat template, image patches), SAM encode, SAM decode and everything else (overlay rendering,
parsing, bookkeeping). Peak GPU memory is measured per batch size. The GRPO training step is measured by
`train_step.py` beside this script.

    python bench/gpu/agent.py --out bench/results/agent_h200.json   # H200: about 5 minutes
    python bench/gpu/agent.py --dry-run                             # CPU, tiny models, seconds

On a machine without this package installed: ``ln -s $PWD /tmp/pkg/sam_veteran`` and ``PYTHONPATH=/tmp/pkg``
(plus a directory holding segment-anything, which is pure Python).
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

from agent_throughput import ReplayPolicy  # noqa: E402  the fixed box / click / stop script
from train_step import build_config, build_model  # noqa: E402  the Qwen2.5-VL-7B architecture

from sam_veteran.plugin.agent import Agent, AgentConfig, AgentInput, SamSegmenter, TransformersPolicy  # noqa: E402
from sam_veteran.plugin.agent.segmenters import build_sam  # noqa: E402
from sam_veteran.plugin.agent.tiny import CHAT_TEMPLATE, SPECIAL_TOKENS, build_tokenizer  # noqa: E402


class Clock:
    """Adds up the seconds spent in chosen methods (patched on the instance), waiting for the GPU at both ends."""

    def __init__(self, device: torch.device):
        self.device = device
        self.seconds: dict[str, float] = defaultdict(float)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def watch(self, name: str, owner, method: str, keep: list | None = None) -> None:
        inner = getattr(owner, method)

        def call(*args, **kwargs):
            self.sync()
            started = time.perf_counter()
            try:
                result = inner(*args, **kwargs)
                if keep is not None:
                    keep.append(result)
                return result
            finally:
                self.sync()
                self.seconds[name] += time.perf_counter() - started

        setattr(owner, method, call)


class ScriptedTexts:
    """The real policy generates (full cost); its random text is replaced by `ReplayPolicy`'s box / click / stop."""

    def __init__(self, policy: TransformersPolicy):
        self.policy, self.family, self.script = policy, policy.family, ReplayPolicy()

    def generate(self, requests, sample: bool = False) -> list[str]:
        self.policy.generate(requests, sample)
        return self.script.generate(requests, sample)


def build_processor(side: int):
    """Qwen2.5-VL's processor around the agent's tokenizer, with images of exactly side x side pixels."""
    from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessor
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    pixels = side * side
    return Qwen2_5_VLProcessor(image_processor=Qwen2VLImageProcessor(patch_size=14, merge_size=2, min_pixels=pixels,
                                                                     max_pixels=pixels),
                               tokenizer=build_tokenizer(), chat_template=CHAT_TEMPLATE,
                               video_processor=Qwen2VLVideoProcessor(patch_size=14, merge_size=2))


def build_policy(args, device, dtype) -> TransformersPolicy:
    """The policy forced to `new_tokens` tokens per answer, never sampling ids outside the agent's tokenizer."""
    processor = build_processor(args.image_side)
    config = build_config(processor, tiny=args.dry_run)
    torch.manual_seed(0)
    model = build_model(config, device, dtype)
    tokenizer = processor.tokenizer
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS}
    vision = [ids[t] for t in ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>",
                               "<|vision_pad|>")]
    generation = model.generation_config
    generation.suppress_tokens = vision + list(range(len(tokenizer), config.text_config.vocab_size))
    generation.eos_token_id, generation.pad_token_id = ids["<|im_end|>"], ids["<|endoftext|>"]
    generation.bos_token_id = ids["<|endoftext|>"]
    generation.min_new_tokens = args.new_tokens
    return TransformersPolicy(model, processor, max_new_tokens=args.new_tokens, batch_size=max(args.batch_sizes))


def images(count: int, seed: int) -> list[AgentInput]:
    rng = np.random.default_rng(seed)
    return [AgentInput(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8), f"the object number {i}")
            for i in range(count)]


def measure(policy: TransformersPolicy, segmenter: SamSegmenter, batch_size: int, rounds: int, args,
            device: torch.device) -> dict:
    """One batch size: the agent's wall time and its parts, then the same generate calls alone. An untimed batch
    first: the first call at a new shape costs more (kernel choice, allocator growth), a long run pays it once."""
    config = AgentConfig(max_steps=3, input_size=(args.image_side,) * 2)
    Agent(ScriptedTexts(policy), segmenter, config).run(images(batch_size, seed=batch_size + 1000))
    clock = Clock(device)
    kept: list = []
    model_generate, policy_encode = policy.model.generate, policy.encode
    segmenter_encode, segmenter_segment = segmenter.encode, segmenter.segment
    clock.watch("generate", policy.model, "generate")
    clock.watch("processor", policy, "encode", keep=kept)
    clock.watch("sam_encode", segmenter, "encode")
    clock.watch("sam_segment", segmenter, "segment")
    agent = Agent(ScriptedTexts(policy), segmenter, config)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    items = images(batch_size * rounds, seed=batch_size)
    clock.sync()
    started = time.perf_counter()
    traces = []
    for start in range(0, len(items), batch_size):
        traces += agent.run(items[start:start + batch_size])
    clock.sync()
    wall = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    # restore the unwrapped methods (instance attributes shadow the class's)
    del policy.model.generate, policy.encode, segmenter.encode, segmenter.segment
    assert (policy.model.generate, policy.encode) == (model_generate, policy_encode)
    assert (segmenter.encode, segmenter.segment) == (segmenter_encode, segmenter_segment)

    pure = Clock(device)
    pure.watch("generate", policy.model, "generate")
    for inputs in kept:
        policy.model.generate(**inputs, max_new_tokens=args.new_tokens, do_sample=False)
    del policy.model.generate
    kept.clear()

    samples = len(items)
    parts = {name: round(seconds, 3) for name, seconds in clock.seconds.items()}
    parts["other"] = round(wall - sum(clock.seconds.values()), 3)
    agent_rate = samples / wall
    generate_rate = samples / pure.seconds["generate"]
    result = {
        "batch_size": batch_size, "samples": samples,
        "policy_calls_per_sample": 3, "masks_per_sample": float(np.mean([t.num_steps for t in traces])),
        "agent_samples_per_s": round(agent_rate, 3), "generate_samples_per_s": round(generate_rate, 3),
        "agent_over_generate": round(agent_rate / generate_rate, 3),
        "generate_tokens_per_s": round(samples * 3 * args.new_tokens / pure.seconds["generate"], 1),
        "agent_seconds": round(wall, 3), "agent_seconds_by_part": parts,
        "pure_generate_seconds": round(pure.seconds["generate"], 3),
    }
    if peak is not None:
        result["peak_memory_gib"] = round(peak, 2)
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-sizes", type=lambda s: [int(v) for v in s.split(",")], default=[1, 8, 32])
    parser.add_argument("--new-tokens", type=int, default=128, help="tokens generated per policy call")
    parser.add_argument("--image-side", type=int, default=840, help="the policy's view (840: 900 image tokens)")
    parser.add_argument("--rounds", type=int, default=1, help="timed agent batches per batch size")
    parser.add_argument("--dry-run", action="store_true", help="tiny models on the CPU: checks the code path")
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    if args.dry_run:
        device, dtype, sam_type = torch.device("cpu"), torch.float32, "tiny"
        args.batch_sizes, args.new_tokens, args.image_side = [1, 2], min(args.new_tokens, 4), 56
    elif torch.cuda.is_available():
        device, dtype, sam_type = torch.device("cuda"), torch.bfloat16, "vit_h"
    else:
        raise SystemExit("no GPU: run with --dry-run to check the code path on the CPU")

    started = time.perf_counter()
    policy = build_policy(args, device, dtype)
    torch.manual_seed(0)
    segmenter = SamSegmenter(build_sam(sam_type), device=device, encode_batch_size=8)
    weights = torch.cuda.memory_allocated(device) / 2**30 if device.type == "cuda" else None
    built = time.perf_counter() - started

    summary = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "policy": "Qwen2.5-VL-7B architecture" if not args.dry_run else "tiny Qwen2.5-VL",
        "segmenter": sam_type, "dtype": str(dtype).replace("torch.", ""),
        "policy_parameters": sum(p.numel() for p in policy.model.parameters()),
        "image_tokens": (args.image_side // 28) ** 2, "new_tokens": args.new_tokens,
        "torch": torch.__version__, "build_seconds": round(built, 1), "runs": [],
    }
    if weights is not None:
        summary["weights_memory_gib"] = round(weights, 2)
    for batch_size in args.batch_sizes:
        summary["runs"].append(measure(policy, segmenter, batch_size, args.rounds, args, device))
        print(json.dumps(summary["runs"][-1]), flush=True)
        if args.out:  # written after every batch size: a run cut short keeps what it measured
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(summary, indent=2) + "\n")

    print("| batch | agent samples/s | generate samples/s | agent / generate | generate | processor | SAM encode "
          "| SAM decode | other | peak GiB |\n|---|---|---|---|---|---|---|---|---|---|")
    for run in summary["runs"]:
        parts = run["agent_seconds_by_part"]
        share = {k: f"{v / run['agent_seconds']:.0%}" for k, v in parts.items()}
        print(f"| {run['batch_size']} | {run['agent_samples_per_s']} | {run['generate_samples_per_s']} | "
              f"{run['agent_over_generate']} | {share.get('generate')} | {share.get('processor')} | "
              f"{share.get('sam_encode')} | {share.get('sam_segment')} | {share.get('other')} | "
              f"{run.get('peak_memory_gib', '-')} |")
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
