"""SAM off the critical path: the image encoder in bf16 (masks against fp32's), and the encode overlapped with the
policy's step 0 (the same masks as the sequential loop)."""

import threading

import numpy as np
import pytest
import torch

from sam_veteran.plugin.agent import Agent, AgentConfig, AgentInput, SamSegmenter
from sam_veteran.plugin.agent.segmenters import build_sam
from sam_veteran.plugin.agent.shipped import shipped_path
from sam_veteran.plugin.scenes import make_scenes

from scripted import ScriptedPolicy, box_answer, click_answer


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 1.0


def segmenters(kind: str) -> tuple[SamSegmenter, SamSegmenter]:
    if kind == "mini":
        path = shipped_path("mini", "segmenter")
        return (SamSegmenter.from_checkpoint(path, device="cpu"),
                SamSegmenter.from_checkpoint(path, device="cpu", encoder_dtype=torch.bfloat16))
    torch.manual_seed(0)
    sam = build_sam("tiny")
    state = sam.state_dict()
    twin = build_sam("tiny")
    twin.load_state_dict(state)
    return SamSegmenter(sam, device="cpu"), SamSegmenter(twin, device="cpu", encoder_dtype=torch.bfloat16)


@pytest.mark.parametrize("kind", ["tiny", "mini"])
def test_bf16_encoder_masks_agree_with_fp32(kind):
    """Box prompts from the ground truth of generated scenes: IoU between the bf16 and fp32 masks (0.994 tiny,
    0.999 mini when measured on 16 scenes; `bench/decoding.py` reports it)."""
    fp32, bf16 = segmenters(kind)
    scenes = make_scenes("test", 4)
    ious = []
    for scene, a, b in zip(scenes, fp32.encode([s.image for s in scenes]), bf16.encode([s.image for s in scenes])):
        assert b.features.dtype == torch.float32  # the decoder gets fp32 features either way
        ys, xs = np.nonzero(scene.mask)
        box = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        ious.append(iou(fp32.segment(a, box).mask, bf16.segment(b, box).mask))
    assert bf16.sam.image_encoder.patch_embed.proj.weight.dtype == torch.bfloat16
    assert min(ious) > 0.98, ious
    assert not all(i == 1.0 for i in ious)  # bf16 really ran: some pixels differ


def scripted() -> ScriptedPolicy:
    return ScriptedPolicy(lambda query, step, sampled: (box_answer([20, 24, 120, 140]) if step == 0 else
                                                        click_answer(positive=[80, 80]) if step == 1 else
                                                        click_answer()))


def test_overlapped_encode_gives_the_sequential_masks():
    segmenter = segmenters("tiny")[0]
    rng = np.random.default_rng(1)
    items = [AgentInput(rng.integers(0, 255, (90 + 10 * i, 120, 3), dtype=np.uint8), f"object {i}") for i in range(3)]
    runs = {}
    for overlap in (False, True):
        agent = Agent(scripted(), segmenter, AgentConfig(overlap_encode=overlap, input_size=(168, 168)))
        runs[overlap] = agent.run(items)
    for a, b in zip(runs[False], runs[True]):
        assert len(a.mask_steps) == len(b.mask_steps) == 2
        assert all(np.array_equal(x.mask, y.mask) for x, y in zip(a.mask_steps, b.mask_steps))
        assert a.end_reason == b.end_reason


class WaitingSegmenter(SamSegmenter):
    """Encodes only once the policy has started generating step 0 (or after a timeout): proof of the overlap."""

    def __init__(self, sam, started: threading.Event):
        super().__init__(sam, device="cpu")
        self.started, self.saw_generation, self.thread = started, False, None

    def encode(self, images):
        self.thread = threading.get_ident()
        self.saw_generation = self.started.wait(timeout=2)
        return super().encode(images)


class SignallingPolicy(ScriptedPolicy):
    def __init__(self, started: threading.Event):
        super().__init__(scripted().answers)
        self.started = started

    def generate(self, requests, sample=False):
        self.started.set()
        return super().generate(requests, sample)


@pytest.mark.parametrize("overlap", [True, False])
def test_the_encode_runs_while_the_policy_generates_step_0(overlap):
    torch.manual_seed(0)
    started = threading.Event()
    segmenter = WaitingSegmenter(build_sam("tiny"), started)
    agent = Agent(SignallingPolicy(started), segmenter, AgentConfig(overlap_encode=overlap, max_steps=1))
    trace = agent.run([AgentInput(np.zeros((64, 64, 3), np.uint8), "the thing")])[0]
    assert trace.mask_steps
    assert segmenter.saw_generation is overlap  # sequential: the encode had finished before step 0 began
    assert (segmenter.thread != threading.get_ident()) is overlap
