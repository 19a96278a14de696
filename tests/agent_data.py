"""Small FiftyOne datasets of real image files for the agent's FiftyOne tests, and a scripted policy for them."""

from pathlib import Path

import fiftyone as fo
import numpy as np
from PIL import Image

from scripted import ScriptedPolicy, box_answer, click_answer

SIZES = [(200, 100), (120, 160), (90, 90), (300, 150)]  # (width, height): mostly not square
BOX = [84, 84, 420, 420]  # in the 840x840 policy input: relative (0.1, 0.1, 0.4, 0.4) of any image
CLICK = [420, 210]  # relative (0.5, 0.25)


def write_images(directory: Path, count: int, seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        width, height = SIZES[i % len(SIZES)]
        path = directory / f"{i:03d}.png"
        Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def make_dataset(directory: Path, count: int, name: str | None = None) -> fo.Dataset:
    """`count` samples with queries "object <i>" and images of the sizes above, in order."""
    dataset = fo.Dataset(name)
    dataset.add_samples([fo.Sample(filepath=str(path), query=f"object {i}")
                         for i, path in enumerate(write_images(directory, count))])
    return dataset


def box_then_click(query: str, step: int, sampled: bool) -> str:
    """A box, then one positive click, then stop: two masks and one click per sample."""
    if step == 0:
        return box_answer(BOX)
    return click_answer(positive=CLICK) if step == 1 else click_answer()


def scripted_policy(answers=box_then_click) -> ScriptedPolicy:
    return ScriptedPolicy(answers)
