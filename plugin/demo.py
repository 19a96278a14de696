"""`sam-veteran demo`: a small dataset of generated scenes, the agent run on it, the metrics, the App.

The scenes are drawn here (coloured shapes on textured backgrounds, image sizes deliberately not square), each
with a referring query ("the red circle") and its exact ground-truth mask, so the demo needs no download beyond
the models, and none at all with ``--tiny``.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .defaults import DEFAULT_EVAL_KEY, DEFAULT_LABEL_FIELD, DEFAULT_MAX_STEPS, DEFAULT_PROMPT_FIELD
from .labels import AgentFields

COLORS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (235, 200, 30)}
SHAPES = ("circle", "square", "triangle")
SIZES = ((320, 240), (240, 320), (400, 300), (256, 256))
DEMO_DATASET = "sam-veteran-demo"


@dataclass
class Scene:
    image: np.ndarray
    query: str
    mask: np.ndarray  # uint8, 1 = target


def make_scene(rng: np.random.Generator, size: tuple[int, int]) -> Scene:
    """Two or three distinct shapes on a noisy background; the query names one of them by colour and shape."""
    width, height = size
    background = rng.integers(90, 170, size=3)
    pixels = np.clip(background + rng.normal(0, 12, (height, width, 3)), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    kinds = [(c, s) for c in COLORS for s in SHAPES]
    chosen = [kinds[i] for i in rng.choice(len(kinds), size=int(rng.integers(2, 4)), replace=False)]
    masks = []
    for color, shape in chosen:
        layer = Image.new("L", size, 0)
        radius = int(rng.integers(min(size) // 10, min(size) // 5))
        cx, cy = int(rng.integers(radius, width - radius)), int(rng.integers(radius, height - radius))
        draw = ImageDraw.Draw(layer)
        if shape == "circle":
            draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=255)
        elif shape == "square":
            draw.rectangle([cx - radius, cy - radius, cx + radius, cy + radius], fill=255)
        else:
            draw.polygon([(cx, cy - radius), (cx - radius, cy + radius), (cx + radius, cy + radius)], fill=255)
        image.paste(Image.new("RGB", size, COLORS[color]), mask=layer)
        new = np.asarray(layer) > 0
        masks = [m & ~new for m in masks] + [new]
    target = int(rng.integers(len(chosen)))
    color, shape = chosen[target]
    return Scene(np.asarray(image), f"the {color} {shape}", masks[target].astype(np.uint8))


def build_demo_dataset(directory: str | Path, num_samples: int = 8, name: str | None = DEMO_DATASET, seed: int = 0,
                       persistent: bool = True):
    """Write the scenes as PNG files under `directory` and load them into a FiftyOne dataset (replacing `name`;
    ``None``: a new generated name).

    Persistent by default, so the demo's dataset is still there to open in the App (`fo.load_dataset(name)`)
    afterwards; a run that only needs it while it lasts (a tiny training run) passes ``persistent=False``, and
    FiftyOne deletes it when no process uses it any more.
    """
    import fiftyone as fo

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    if name is not None and fo.dataset_exists(name):
        fo.delete_dataset(name)
    dataset = fo.Dataset(name, persistent=persistent)
    samples = []
    for i in range(num_samples):
        scene = make_scene(rng, SIZES[i % len(SIZES)])
        path = directory / f"scene_{i:03d}.png"
        Image.fromarray(scene.image).save(path)
        samples.append(fo.Sample(filepath=str(path), query=scene.query,
                                 ground_truth=fo.Segmentation(mask=scene.mask), tags=["demo"]))
    dataset.add_samples(samples)
    dataset.compute_metadata()
    return dataset


def run_demo(policy: str, segmenter: str, directory: str | Path, num_samples: int = 8,
             max_steps: int = DEFAULT_MAX_STEPS, batch_size: int = 4, device: str | None = None,
             name: str = DEMO_DATASET, **policy_kwargs) -> tuple[object, dict]:
    """Build the dataset, run the agent on it, evaluate it (LISA's protocol, evaluation key ``eval``, the one the
    evaluation panel opens); returns (dataset, summary).

    The models load first and the run goes into a new dataset that replaces `name` only once it has succeeded:
    a failed run (no network, a wrong checkpoint) leaves the previous demo as it was.
    """
    import fiftyone as fo

    from .evaluation import evaluate
    from .model import SamVeteranModel

    started = time.perf_counter()
    model = SamVeteranModel(policy=policy, segmenter=segmenter, max_steps=max_steps, device=device, **policy_kwargs)
    loaded = time.perf_counter()
    dataset = build_demo_dataset(directory, num_samples, name=None, persistent=False)
    try:
        dataset.apply_model(model, label_field=DEFAULT_LABEL_FIELD, prompt_field=DEFAULT_PROMPT_FIELD,
                            batch_size=batch_size)
        ran = time.perf_counter()
        results = evaluate(dataset, DEFAULT_LABEL_FIELD, eval_key=DEFAULT_EVAL_KEY)
    except BaseException:
        dataset.delete()
        raise
    if fo.dataset_exists(name):
        fo.delete_dataset(name)
    dataset.name, dataset.persistent = name, True
    reasons = Counter(r or "no_result" for r in dataset.values(AgentFields(DEFAULT_LABEL_FIELD).end_reason))
    summary = {
        "dataset": dataset.name, "samples": len(dataset), "policy": str(policy), "segmenter": str(segmenter),
        **{k: v for k, v in results.metrics().items() if k != "count"},
        "end_reasons": dict(reasons), "mean_masks_per_sample": float(np.mean(results.num_steps or [0])),
        "eval_key": DEFAULT_EVAL_KEY, "step_curve": results.step_curve(), "stop_rates": results.stop_rates(),
        "seconds": {"load": round(loaded - started, 2), "agent": round(ran - loaded, 2),
                    "total": round(time.perf_counter() - started, 2)},
    }
    return dataset, summary
