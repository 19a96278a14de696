"""What the policy sees: the image resized for it, with the current mask drawn over it.

The mask is painted as a semi-transparent colour (green by default, as in the paper) with a solid outline so
thin structures stay visible after resizing. The same function renders training prompts, so what is trained is
what runs. Resizing is most of the cost (an 840x840 bilinear upscale), so the loop resizes each image once and
passes it back as `resized` at every refinement step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class OverlayStyle:
    color: tuple[int, int, int] = (0, 255, 0)
    alpha: float = 0.45
    outline: int = 2  # outline thickness in pixels of the policy's view; 0 disables


def policy_view(image: np.ndarray, size: tuple[int, int], mask: np.ndarray | None = None,
                style: OverlayStyle = OverlayStyle(), resized: Image.Image | None = None) -> Image.Image:
    """Resize `image` (H, W, 3 uint8) to `size` = (width, height) and paint `mask` (H, W bool) over it.

    `resized` is the result of an earlier ``policy_view(image, size)``, reused instead of resizing again."""
    if resized is None:
        resized = Image.fromarray(image).resize(size, Image.Resampling.BILINEAR)
    if mask is None:
        return resized
    small = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(size, Image.Resampling.NEAREST)) > 127
    pixels = np.asarray(resized, dtype=np.float32)
    color = np.asarray(style.color, dtype=np.float32)
    pixels[small] = (1.0 - style.alpha) * pixels[small] + style.alpha * color
    if style.outline > 0:
        pixels[_edges(small, style.outline)] = color
    return Image.fromarray(np.round(pixels).astype(np.uint8))


def _edges(mask: np.ndarray, width: int) -> np.ndarray:
    """Pixels of `mask` within `width` pixels of its border."""
    inner = mask.copy()
    for _ in range(width):
        shrunk = inner.copy()
        shrunk[1:, :] &= inner[:-1, :]
        shrunk[:-1, :] &= inner[1:, :]
        shrunk[:, 1:] &= inner[:, :-1]
        shrunk[:, :-1] &= inner[:, 1:]
        inner = shrunk
    return mask & ~inner
