"""Train the mini segmenter: the real segment-anything `Sam` ("mini" architecture, image size 256) on the scenes.

SAM's own interactive training protocol (SAM paper, appendix), shortened to what the agent needs (its first
prompt is always a box): each mask is an interactive session of `clicks` + 2 decoder passes. The first pass
prompts with the ground-truth box or a jittered one (noise with a standard deviation of 10% of the box side, at
most 20 px); each next pass adds a click drawn uniformly from the error region of the model's own previous
prediction (positive on a miss, negative on a false positive); the last pass adds no click, so the model learns
to refine from its own mask. The previous pass's low-resolution logits are always fed back as the mask prompt.
Loss: focal and dice, 20:1, plus a mean-squared error between the IoU head and the actual IoU.

Everything happens in SAM's input frame (the longest side resized to 256, padded): the same transform
`SamSegmenter` applies at inference. The checkpoint in `output/state.pt` holds model, optimiser and step, so a
killed run resumes where it stopped; `output/segmenter.safetensors` loads with `SamSegmenter.from_checkpoint`.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from segment_anything.utils.transforms import ResizeLongestSide

from ...plugin.agent.clicks import next_click
from ...plugin.agent.segmenters import SamSegmenter, build_sam
from ...plugin.scenes import make_scene
from ..rewards import mask_box, mask_iou

PIXEL_MEAN = torch.tensor([123.675, 116.28, 103.53]).view(1, 3, 1, 1)
PIXEL_STD = torch.tensor([58.395, 57.12, 57.375]).view(1, 3, 1, 1)


@dataclass
class SegmenterTrainConfig:
    output: str
    steps: int = 2000
    batch_size: int = 16
    learning_rate: float = 1e-3
    weight_decay: float = 0.05
    warmup_steps: int = 50
    clicks: int = 3  # clicks per session; each session has clicks + 2 decoder passes
    pool_size: int = 3000  # training scenes, drawn once and cached
    jitter: float = 0.1  # box noise std as a fraction of the side (SAM: 10%, at most 20 px)
    max_jitter: float = 20.0
    save_every: int = 100
    eval_scenes: int = 64
    seed: int = 0
    threads: int = 1


class ScenePool:
    """Training scenes as SAM sees them: resized (longest side 256), zero-padded, with the resized target mask."""

    def __init__(self, images: np.ndarray, masks: np.ndarray, sizes: np.ndarray, scales: np.ndarray) -> None:
        self.images, self.masks, self.sizes, self.scales = images, masks, sizes, scales

    @classmethod
    def build(cls, count: int, image_size: int = 256, split: str = "train") -> "ScenePool":
        transform = ResizeLongestSide(image_size)
        images = np.zeros((count, image_size, image_size, 3), dtype=np.uint8)
        masks = np.zeros((count, image_size, image_size), dtype=bool)
        sizes = np.zeros((count, 2), dtype=np.int64)  # (height, width) after resizing
        scales = np.zeros(count, dtype=np.float32)
        for i in range(count):
            scene = make_scene(split, i)
            resized = transform.apply_image(scene.image)
            h, w = resized.shape[:2]
            images[i, :h, :w] = resized
            mask = torch.from_numpy(scene.mask.astype(np.float32))[None, None]
            masks[i, :h, :w] = F.interpolate(mask, (h, w), mode="bilinear", align_corners=False)[0, 0].numpy() > 0.5
            sizes[i] = (h, w)
            scales[i] = h / scene.image.shape[0]
        return cls(images, masks, sizes, scales)

    @classmethod
    def cached(cls, path: Path, count: int) -> "ScenePool":
        if path.exists():
            with np.load(path) as data:
                if len(data["images"]) == count:
                    return cls(data["images"], data["masks"], data["sizes"], data["scales"])
        pool = cls.build(count)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, images=pool.images, masks=pool.masks, sizes=pool.sizes, scales=pool.scales)
        os.replace(tmp, path)
        return pool


def decode_batch(sam, features: torch.Tensor, sparse: torch.Tensor, dense: torch.Tensor):
    """`MaskDecoder.predict_masks` for B images with one prompt each (the library's version pairs one image with
    B prompts); single-mask output, as the agent asks for. Returns (low-res logits (B, 1, h, w), iou (B, 1))."""
    decoder = sam.mask_decoder
    tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
    tokens = torch.cat((tokens.unsqueeze(0).expand(sparse.size(0), -1, -1), sparse), dim=1)
    src = features + dense
    pos = sam.prompt_encoder.get_dense_pe().expand(src.size(0), -1, -1, -1)
    b, c, h, w = src.shape
    hs, src = decoder.transformer(src, pos, tokens)
    upscaled = decoder.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))
    hyper = decoder.output_hypernetworks_mlps[0](hs[:, 1, :])
    bu, cu, hu, wu = upscaled.shape
    masks = (hyper.unsqueeze(1) @ upscaled.view(bu, cu, hu * wu)).view(bu, 1, hu, wu)
    return masks, decoder.iou_prediction_head(hs[:, 0, :])[:, :1]


def _focal(logits, target, valid, gamma: float = 2.0):
    """Focal loss without the class weight: SAM's alpha of 0.25 (for a pre-trained encoder) makes a model trained
    from scratch collapse to empty masks on objects this small (seen here: IoU 0 after 150 steps)."""
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = prob * target + (1 - prob) * (1 - target)
    loss = ce * (1 - p_t) ** gamma
    return (loss * valid).sum(dim=(1, 2, 3)) / valid.sum(dim=(1, 2, 3))


def _dice(logits, target, valid):
    prob = logits.sigmoid() * valid
    num = 2 * (prob * target).sum(dim=(1, 2, 3)) + 1
    return 1 - num / (prob.sum(dim=(1, 2, 3)) + (target * valid).sum(dim=(1, 2, 3)) + 1)


def _jitter_box(box, scale: float, config: SegmenterTrainConfig, rng, limit: tuple[int, int]):
    x1, y1, x2, y2 = box
    side = np.array([x2 - x1, y2 - y1, x2 - x1, y2 - y1])
    noise = np.clip(rng.normal(0, config.jitter, 4) * side, -config.max_jitter * scale, config.max_jitter * scale)
    x1, y1, x2, y2 = np.asarray(box) + noise
    x1, x2 = sorted((x1, x2))
    y1, y2 = sorted((y1, y2))
    h, w = limit
    return [float(np.clip(x1, 0, w - 1)), float(np.clip(y1, 0, h - 1)), float(np.clip(max(x2, x1 + 1), 1, w)),
            float(np.clip(max(y2, y1 + 1), 1, h))]


def _sample_click(pred: np.ndarray, gt: np.ndarray, valid: np.ndarray, rng) -> tuple[tuple[float, float], int]:
    """A click drawn uniformly from the error region (SAM's training protocol); inside the object if none."""
    error = (pred ^ gt) & valid
    ys, xs = np.nonzero(error if error.any() else gt)
    i = int(rng.integers(len(xs)))
    return (xs[i] + 0.5, ys[i] + 0.5), int(gt[ys[i], xs[i]])


def train_step(sam, pool: ScenePool, indices: np.ndarray, config: SegmenterTrainConfig, rng) -> dict[str, float]:
    """One interactive session per scene of the batch; returns the mean losses and the first/last pass IoUs."""
    size = sam.image_encoder.img_size
    images = torch.from_numpy(pool.images[indices]).permute(0, 3, 1, 2).float()
    valid = torch.zeros((len(indices), 1, size, size))
    for row, (h, w) in enumerate(pool.sizes[indices]):
        valid[row, :, :h, :w] = 1
    images = (images - PIXEL_MEAN) / PIXEL_STD * valid
    gt = torch.from_numpy(pool.masks[indices]).float()[:, None]
    features = sam.image_encoder(images)
    boxes = []
    for row, index in enumerate(indices):
        box = list(mask_box(pool.masks[index]))
        if rng.random() < 0.5:
            box = _jitter_box(box, float(pool.scales[index]), config, rng, tuple(pool.sizes[index]))
        boxes.append(box)
    boxes = torch.tensor(boxes, dtype=torch.float32)
    points = np.zeros((len(indices), 0, 2), dtype=np.float32)
    labels = np.zeros((len(indices), 0), dtype=np.int64)
    logits = None
    total, ious = 0.0, []
    passes = config.clicks + 2
    for step in range(passes):
        point_prompt = None
        if points.shape[1]:
            point_prompt = (torch.from_numpy(points), torch.from_numpy(labels))
        sparse, dense = sam.prompt_encoder(points=point_prompt, boxes=boxes, masks=logits)
        low_res, iou_pred = decode_batch(sam, features, sparse, dense)
        full = F.interpolate(low_res, (size, size), mode="bilinear", align_corners=False)
        pred = (full.detach() > 0) & (valid > 0)
        inter = (pred & (gt > 0)).sum(dim=(1, 2, 3)).float()
        union = (pred | (gt > 0)).sum(dim=(1, 2, 3)).float().clamp(min=1)
        actual = inter / union
        loss = 20 * _focal(full, gt, valid) + _dice(full, gt, valid) + (iou_pred[:, 0] - actual) ** 2
        total = total + loss.mean()
        ious.append(float(actual.mean()))
        logits = low_res.detach()
        if step < config.clicks:
            new_points, new_labels = [], []
            pred_np, gt_np, valid_np = pred[:, 0].numpy(), gt[:, 0].numpy() > 0, valid[:, 0].numpy() > 0
            for row in range(len(indices)):
                xy, label = _sample_click(pred_np[row], gt_np[row], valid_np[row], rng)
                new_points.append(xy)
                new_labels.append(label)
            points = np.concatenate([points, np.asarray(new_points, dtype=np.float32)[:, None]], axis=1)
            labels = np.concatenate([labels, np.asarray(new_labels, dtype=np.int64)[:, None]], axis=1)
    return {"loss": total / passes, "iou_first": ious[0], "iou_last": ious[-1]}


def evaluate_segmenter(segmenter: SamSegmenter, count: int = 64, split: str = "test", seed: int = 0
                       ) -> dict[str, float]:
    """Mask IoU on `count` scenes of `split` through the inference path: from the ground-truth box, from a
    jittered box, and after 1 and 3 clicks of the simulated user (`clicks.next_click`) from the GT box."""
    rng = np.random.default_rng(seed)
    results: dict[str, list[float]] = {"gt_box": [], "jittered_box": [], "click_1": [], "click_3": []}
    for i in range(count):
        scene = make_scene(split, i)
        gt = scene.mask > 0
        embedding = segmenter.encode([scene.image])[0]
        box = mask_box(gt)
        side = np.array([box[2] - box[0], box[3] - box[1]] * 2)
        noisy = np.asarray(box) + np.clip(rng.normal(0, 0.1, 4) * side, -20, 20)
        noisy = [min(noisy[0], noisy[2]), min(noisy[1], noisy[3]), max(noisy[0], noisy[2]), max(noisy[1], noisy[3])]
        results["jittered_box"].append(mask_iou(segmenter.segment(embedding, noisy).mask, gt))
        result = segmenter.segment(embedding, box)
        results["gt_box"].append(mask_iou(result.mask, gt))
        points, labels = [], []
        for click in range(1, 4):
            picked = next_click(result.mask, gt)
            if picked is not None:
                points.append(picked[0])
                labels.append(int(picked[1]))
                result = segmenter.segment(embedding, box, points, labels, result.logits)
            if click in (1, 3):
                results[f"click_{click}"].append(mask_iou(result.mask, gt))
    return {key: float(np.mean(values)) for key, values in results.items()}


def train_segmenter(config: SegmenterTrainConfig) -> dict[str, float]:
    """Train (or resume) the mini segmenter; returns the final evaluation. Progress goes to metrics.jsonl."""
    from safetensors.torch import save_file

    torch.set_num_threads(config.threads)
    output = Path(config.output)
    output.mkdir(parents=True, exist_ok=True)
    started = time.time()
    pool = ScenePool.cached(output / "pool.npz", config.pool_size)
    torch.manual_seed(config.seed)
    sam = build_sam("mini").train()
    optimizer = torch.optim.AdamW(sam.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    step, elapsed = 0, 0.0
    state_path = output / "state.pt"
    if state_path.exists():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        sam.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step, elapsed = int(state["step"]), float(state["elapsed"])
    (output / "config.json").write_text(json.dumps(asdict(config), indent=1))

    def schedule(s: int) -> float:
        if s < config.warmup_steps:
            return (s + 1) / config.warmup_steps
        return 0.5 * (1 + math.cos(math.pi * (s - config.warmup_steps) / max(1, config.steps - config.warmup_steps)))

    def save() -> None:
        tmp = state_path.with_suffix(".tmp")
        torch.save({"model": sam.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                    "elapsed": elapsed + time.time() - started}, tmp)
        os.replace(tmp, state_path)
        weights = output / "segmenter.safetensors"
        save_file({k: v.contiguous() for k, v in sam.state_dict().items()}, str(weights.with_suffix(".tmp")))
        os.replace(weights.with_suffix(".tmp"), weights)

    log = (output / "metrics.jsonl").open("a")
    while step < config.steps:
        rng = np.random.default_rng([config.seed, step])
        for group in optimizer.param_groups:
            group["lr"] = config.learning_rate * schedule(step)
        indices = rng.choice(len(pool.images), size=config.batch_size, replace=False)
        tick = time.time()
        stats = train_step(sam, pool, indices, config, rng)
        optimizer.zero_grad()
        stats["loss"].backward()
        torch.nn.utils.clip_grad_norm_(sam.parameters(), 1.0)
        optimizer.step()
        step += 1
        log.write(json.dumps({"step": step, "loss": float(stats["loss"].detach()), "iou_first": stats["iou_first"],
                              "iou_last": stats["iou_last"], "seconds": round(time.time() - tick, 3)}) + "\n")
        log.flush()
        if step % config.save_every == 0 or step == config.steps:
            save()
    sam.eval()
    metrics = evaluate_segmenter(SamSegmenter(sam, device="cpu"), config.eval_scenes)
    metrics["train_seconds"] = round(elapsed + time.time() - started, 1)
    log.write(json.dumps({"step": step, "eval": metrics}) + "\n")
    log.close()
    return metrics
