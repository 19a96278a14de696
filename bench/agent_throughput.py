"""Agent throughput on the CPU: batched versus one sample at a time, where the time goes, and what a refinement
step costs next to step 0 with the real vit_b segmenter architecture (random weights).

    .venv/bin/python bench/agent_throughput.py            # 1.5-3.5 minutes here
    .venv/bin/python bench/agent_throughput.py --quick    # smaller, for a smoke check

Every comparison is measured side by side in this one run; the JSON summary is the last line printed.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from sam_veteran.plugin.agent import Agent, AgentConfig, AgentInput, FAMILIES, SamSegmenter, TransformersPolicy, loop
from sam_veteran.plugin.agent.segmenters import build_sam
from sam_veteran.plugin.agent.tiny import write_tiny_models


class Timed:
    """Wraps a policy or segmenter and adds up the seconds spent inside its model calls (in all and per method);
    `last` keeps each method's latest result."""

    def __init__(self, inner, methods: tuple[str, ...]):
        self.inner, self.seconds, self.calls = inner, 0.0, {m: 0 for m in methods}
        self.method_seconds, self.last = {m: 0.0 for m in methods}, {}
        for name in methods:
            setattr(self, name, self._timed(name))

    def _timed(self, name):
        method = getattr(self.inner, name)

        def call(*args, **kwargs):
            started = time.perf_counter()
            try:
                self.last[name] = method(*args, **kwargs)
                return self.last[name]
            finally:
                self.seconds += time.perf_counter() - started
                self.method_seconds[name] += time.perf_counter() - started
                self.calls[name] += 1
        return call

    def __getattr__(self, name):
        return getattr(self.inner, name)


class ReplayPolicy:
    """Answers a box, then one click, then stop: three policy steps per sample at no model cost. Coordinates are
    pixels of the view the policy is shown (the family's convention), so any input size works."""

    family = FAMILIES["qwen2_5_vl"]
    stop = '<answer>{"positive_point": null, "negative_point": null}</answer>'

    def __init__(self):
        self.refinements: Counter[str] = Counter()

    def generate(self, requests, sample=False):
        answers = []
        for request in requests:
            width, height = request.image.size
            if "positive_point" not in request.prompt:
                box = [round(width * 0.12), round(height * 0.12), round(width * 0.71), round(height * 0.71)]
                answers.append(f'<answer>{{"bbox_2d": {box}}}</answer>')
                continue
            query = request.prompt.split('"')[1]
            self.refinements[query] += 1
            click = [round(width * 0.36), round(height * 0.36)]
            answers.append(f'<answer>{{"positive_point": {click}, "negative_point": null}}</answer>'
                           if self.refinements[query] == 1 else self.stop)
        return answers


def images(count: int, seed: int = 0) -> list[AgentInput]:
    rng = np.random.default_rng(seed)
    return [AgentInput(rng.integers(0, 255, (240, 320, 3), dtype=np.uint8), f"the object number {i}")
            for i in range(count)]


def throughput(agent: Agent, items: list[AgentInput], batch_size: int) -> tuple[float, list]:
    started = time.perf_counter()
    traces = []
    for start in range(0, len(items), batch_size):
        traces += agent.run(items[start:start + batch_size])
    return len(items) / (time.perf_counter() - started), traces


def bench_tiny(tiny: dict, count: int) -> dict:
    """Samples/s of the tiny real policy + tiny SAM at batch 1/4/16, and the share of time outside the models.

    The random policy's answers are never readable: each sample costs a greedy answer and a sampled retry, then
    ends with a parse failure (no SAM decode). Batching amortises exactly those two generate calls."""
    policy = Timed(TransformersPolicy.from_pretrained(tiny["policy-qwen2_5_vl"], device="cpu", max_new_tokens=32,
                                                      batch_size=16), ("generate",))
    segmenter = Timed(SamSegmenter.from_checkpoint(tiny["segmenter"], device="cpu", encode_batch_size=16),
                      ("encode", "segment"))
    processor = Timed(policy.inner, ("encode",))  # chat template + image patches, inside the policy's time
    policy.inner.encode = processor.encode
    agent = Agent(policy, segmenter, AgentConfig(input_size=(224, 224)))
    items = images(count)
    agent.run(items[:2])  # warm-up
    out = {}
    for batch_size in (1, 4, 16, 16, 4, 1):  # each twice, in both orders; the faster run counts (shared machine)
        policy.seconds = segmenter.seconds = processor.seconds = 0.0
        started = time.perf_counter()
        rate, traces = throughput(agent, items, batch_size)
        wall = time.perf_counter() - started
        if rate > out.get(f"batch_{batch_size}", {}).get("samples_per_s", 0):
            out[f"batch_{batch_size}"] = {
                "samples_per_s": round(rate, 2),
                "outside_models_share": round(1 - (policy.seconds + segmenter.seconds) / wall, 3),
                "processor_share": round(processor.seconds / wall, 3),
                "end_reasons": dict(Counter(t.end_reason.value for t in traces))}
    out["batch_16_over_batch_1"] = round(out["batch_16"]["samples_per_s"] / out["batch_1"]["samples_per_s"], 2)
    return out


def bench_replay_orchestration(tiny: dict, count: int) -> dict:
    """Three policy steps per sample with a free policy: what the loop itself (overlay, parsing, SAM) costs, and
    how much of it is rendering the policy's 840x840 view (`policy_view`, timed where the loop calls it)."""
    segmenter = Timed(SamSegmenter.from_checkpoint(tiny["segmenter"], device="cpu", encode_batch_size=16),
                      ("encode", "segment"))
    rendering = Timed(loop, ("policy_view",))
    agent = Agent(ReplayPolicy(), segmenter)
    items = images(count, seed=1)
    original, loop.policy_view = loop.policy_view, rendering.policy_view
    try:
        started = time.perf_counter()
        traces = agent.run(items)
        wall = time.perf_counter() - started
    finally:
        loop.policy_view = original
    steps = sum(len(t.steps) for t in traces)
    return {"samples": count, "steps_per_sample": float(np.mean([len(t.steps) for t in traces])),
            "seconds": round(wall, 3), "segmenter_share": round(segmenter.seconds / wall, 3),
            "orchestration_ms_per_step": round(1000 * (wall - segmenter.seconds) / steps, 2),
            "rendering_ms_per_step": round(1000 * rendering.seconds / steps, 2)}


def bench_vit_b(repeats: int) -> dict:
    """Step 0 (encoder + decoder) versus a refinement step (decoder only, with a click and the previous logits)
    with the real vit_b architecture, inside one agent run (box, click, stop) on one image: how many images the
    encoder sees while the agent makes two masks, then both decodes repeated on the run's own embedding."""
    torch.manual_seed(0)
    segmenter = SamSegmenter(build_sam("vit_b"), device="cpu", encode_batch_size=1)
    encoded: list[int] = []
    segmenter.sam.image_encoder.register_forward_hook(lambda module, args, output: encoded.append(len(output)))
    timed = Timed(segmenter, ("encode", "segment"))
    (trace,) = Agent(ReplayPolicy(), timed).run(images(1, seed=2))
    encode_s = timed.method_seconds["encode"]
    (embedding,), box = timed.last["encode"], trace.steps[0].box
    decode, refine = [], []
    for _ in range(repeats):
        started = time.perf_counter()
        first = segmenter.segment(embedding, box)
        decode.append(time.perf_counter() - started)
        started = time.perf_counter()
        segmenter.segment(embedding, box, [trace.steps[1].positive], [1], first.logits)
        refine.append(time.perf_counter() - started)
    step0, refine_s = encode_s + float(np.median(decode)), float(np.median(refine))
    return {"encode_s": round(encode_s, 3), "step0_s": round(step0, 3), "refine_step_s": round(refine_s, 4),
            "refine_over_step0": round(refine_s / step0, 4), "agent_masks": trace.num_steps,
            "images_through_encoder_in_agent_run": sum(encoded)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)  # a shared 2-core machine: two threads under contention make small ops ~50x slower
    with tempfile.TemporaryDirectory() as tmp:
        tiny = write_tiny_models(Path(tmp), families=("qwen2_5_vl",))
        summary = {
            "tiny": bench_tiny(tiny, 16),
            "replay_orchestration": bench_replay_orchestration(tiny, 8 if args.quick else 32),
            "vit_b": bench_vit_b(3 if args.quick else 10),
        }
    t, v = summary["tiny"], summary["vit_b"]
    print("| measure | value |\n|---|---|")
    for b in (1, 4, 16):
        print(f"| tiny, batch {b}: samples/s (outside-model share; processor share) | "
              f"{t[f'batch_{b}']['samples_per_s']} ({t[f'batch_{b}']['outside_models_share']}; "
              f"{t[f'batch_{b}']['processor_share']}) |")
    print(f"| tiny: batch 16 / batch 1 | {t['batch_16_over_batch_1']}x |")
    print(f"| vit_b: step 0 / refinement step (s) | {v['step0_s']} / {v['refine_step_s']} |")
    print(f"| vit_b: refinement cost as share of step 0 | {v['refine_over_step0']} |")
    print(f"| vit_b: images through the encoder while the agent made {v['agent_masks']} masks of one image | "
          f"{v['images_through_encoder_in_agent_run']} |")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
