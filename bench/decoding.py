"""Decoding paths on the CPU with the tiny models, side by side in one run: eager `generate`, the static KV cache
uncompiled, and the static cache with the decoding step compiled by inductor; plus what SAM in bf16, the encode
overlapped with step 0, and prefix reuse across steps would give.

    .venv/bin/python bench/decoding.py            # 5-15 minutes here (inductor compiles each batch shape once)
    .venv/bin/python bench/decoding.py --quick    # batch 1 and 8, no inductor: a smoke check

Per path and batch size (1, 8, 16), with the tiny Qwen2.5-VL forced to exactly `--new-tokens` tokens a call and
the tiny SAM (`gpu/decoding.py`'s measurements, on this machine):

- generation: the first call at the shape apart (that is where compilation lands), then tokens/s, x eager, and the
  roofline ratio (tokens/s over batch x copy bandwidth / bytes of the weights a step reads);
- the agent (box, one click, stop): samples/s, against pure generation of the same inputs, and the time split
  (generate / processor / SAM encode / SAM decode / token decode / rendering / other); for eager also with the
  SAM encode run before step 0 instead of beside it.

Then: mask IoU between the bf16 and fp32 SAM image encoders (tiny and the shipped mini segmenter; 16 generated
scenes, box prompts) and their encode times; and, for every prompt family at its real view size (840x840 = 900
image tokens; mini 168x168), the share of a step's prompt tokens that repeats the previous step's prompt from
its start (what a KV-prefix cache could skip), with the upper bound of what that saves. The JSON summary is the
last line printed and is written to `bench/results/decoding_cpu.json`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from argparse import Namespace
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE / "gpu"), str(HERE)]

from agent import build_processor  # noqa: E402  Qwen2.5-VL's processor at an exact view size
from decoding import copy_bandwidth, run_batch, step_weight_bytes, table  # noqa: E402

from sam_veteran.plugin.agent import FAMILIES, PolicyRequest, SamSegmenter, TransformersPolicy  # noqa: E402
from sam_veteran.plugin.agent.overlay import policy_view  # noqa: E402
from sam_veteran.plugin.agent.policy import messages  # noqa: E402
from sam_veteran.plugin.agent.segmenters import build_sam  # noqa: E402
from sam_veteran.plugin.agent.shipped import shipped_path  # noqa: E402
from sam_veteran.plugin.agent.tiny import build_tiny_policy  # noqa: E402
from sam_veteran.plugin.scenes import make_scenes  # noqa: E402


def tiny_policies(new_tokens: int, batch_size: int, compiled: bool) -> dict[str, TransformersPolicy]:
    """The tiny Qwen2.5-VL behind each path, one model shared; forced to exactly `new_tokens` tokens a call."""
    model, processor = build_tiny_policy("qwen2_5_vl")
    model.generation_config.min_new_tokens = new_tokens
    common = dict(max_new_tokens=new_tokens, batch_size=batch_size)
    policies = {"eager": TransformersPolicy(model, processor, **common),
                "static_uncompiled": TransformersPolicy(model, processor, decoding="static", compile_backend=None,
                                                        **common)}
    if compiled:
        policies["static"] = TransformersPolicy(model, processor, decoding="static", **common)
    return policies


def sam_bf16_agreement(count: int = 16) -> dict:
    """Masks from the bf16 and fp32 image encoders on the same box prompts: IoU, and encode seconds."""
    scenes = make_scenes("test", count)
    out = {}
    for kind in ("tiny", "mini"):
        pair = []
        for dtype in (torch.float32, torch.bfloat16):
            if kind == "mini":
                pair.append(SamSegmenter.from_checkpoint(shipped_path("mini", "segmenter"), device="cpu",
                                                         encoder_dtype=dtype))
            else:
                torch.manual_seed(0)
                pair.append(SamSegmenter(build_sam("tiny"), device="cpu", encoder_dtype=dtype))
        embeddings, seconds = [], []
        for segmenter in pair:
            started = time.perf_counter()
            embeddings.append(segmenter.encode([s.image for s in scenes]))
            seconds.append(time.perf_counter() - started)
        ious = []
        for i, scene in enumerate(scenes):
            ys, xs = np.nonzero(scene.mask)
            box = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
            a, b = (segmenter.segment(e[i], box).mask for segmenter, e in zip(pair, embeddings))
            union = (a | b).sum()
            ious.append(float((a & b).sum() / union) if union else 1.0)
        out[kind] = {"mean_iou": round(float(np.mean(ious)), 4), "min_iou": round(float(np.min(ious)), 4),
                     "fp32_encode_s": round(seconds[0], 3), "bf16_encode_s": round(seconds[1], 3)}
    return out


def shared_prefix(family_name: str) -> dict:
    """For one family at its real view size: the share of step k+1's prompt tokens whose KV entries equal step
    k's (the same tokens from the start, up to the first image token whose pixels changed), grounding -> first
    refinement and refinement -> refinement, and whether two refinement views (masks differing) are identical."""
    family = FAMILIES[family_name]
    side = family.input_size[0]
    processor = build_processor(side)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)
    masks = [np.zeros((480, 640), bool) for _ in range(2)]
    masks[0][100:300, 200:400] = True
    masks[1][120:320, 200:420] = True
    view = policy_view(image, family.input_size)
    views = [view] + [policy_view(image, family.input_size, m, resized=view) for m in masks]
    prompts = [family.grounding_prompt("the cup"), family.refine_prompt("the cup"), family.refine_prompt("the cup")]
    texts = [processor.apply_chat_template(messages(PolicyRequest(v, p), family), add_generation_prompt=True,
                                           tokenize=False) for v, p in zip(views, prompts)]
    ids = [processor(text=[t], images=[v], return_tensors="pt")["input_ids"][0].tolist() for t, v in zip(texts, views)]

    image_pad = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")

    def common(a, b, same_view: bool):
        """Equal ids from the start; image tokens share one id, so they count only when the pixels are equal."""
        n = 0
        while n < min(len(a), len(b)) and a[n] == b[n] and (same_view or b[n] != image_pad):
            n += 1
        return n

    same = [np.array_equal(np.asarray(views[i]), np.asarray(views[i + 1])) for i in range(2)]

    return {"prompt_tokens": len(ids[1]), "image_tokens": (side // 28) ** 2,
            "grounding_to_refine_shared": round(common(ids[0], ids[1], same[0]) / len(ids[1]), 3),
            "refine_to_refine_shared": round(common(ids[1], ids[2], same[1]) / len(ids[2]), 3),
            "views_identical": same[1]}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="batch 1 and 8, no inductor compilation")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "decoding_cpu.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # see bench/README.md: two threads on the shared 2-core machine drown every ratio
    batch_sizes = [1, 8] if args.quick else [1, 8, 16]
    run_args = Namespace(new_tokens=args.new_tokens, image_side=224, rounds=5, agent_rounds=3)
    started = time.perf_counter()
    policies = tiny_policies(args.new_tokens, max(batch_sizes), compiled=not args.quick)
    torch.manual_seed(0)
    segmenter = SamSegmenter(build_sam("tiny"), device="cpu", encode_batch_size=8)
    device = torch.device("cpu")
    bandwidth = copy_bandwidth(device, megabytes=256)
    weight_bytes = step_weight_bytes(policies["eager"].model)
    summary = {"device": "cpu (2 shared cores, one torch thread)", "policy": "tiny Qwen2.5-VL", "segmenter": "tiny",
               "torch": torch.__version__, "transformers": __import__("transformers").__version__,
               "new_tokens": args.new_tokens, "step_weight_bytes": weight_bytes,
               "copy_bandwidth_gb_per_s": round(bandwidth / 1e9, 1), "runs": []}
    for batch_size in batch_sizes:
        summary["runs"] += run_batch(policies, segmenter, batch_size, run_args, device, bandwidth / weight_bytes)
    summary["sam_bf16_vs_fp32"] = sam_bf16_agreement()
    summary["prefix_reuse"] = {name: shared_prefix(name) for name in FAMILIES}
    summary["seconds"] = round(time.perf_counter() - started, 1)
    print(table(summary["runs"]))
    print("SAM bf16 vs fp32:", json.dumps(summary["sam_bf16_vs_fp32"]))
    print("shared prompt prefix between steps:", json.dumps(summary["prefix_reuse"]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
