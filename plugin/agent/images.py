"""Loading any image a dataset may hold as the RGB uint8 array the agent works on.

EXIF orientation is applied, so masks line up with what the FiftyOne App (and every browser) shows. Grayscale,
palette, RGBA (alpha dropped), CMYK and 16-bit images are converted to 8-bit RGB; 16-bit values are scaled by
1/257 so the full range maps onto 0-255.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image, ImageOps


class ImageLoadError(ValueError):
    """An image file is missing, empty, truncated, not an image, or one its decoder cannot handle."""


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Read `path` as an (H, W, 3) uint8 RGB array with EXIF orientation applied."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ImageLoadError(f"image file not found: {path}")
    if os.path.getsize(path) == 0:
        raise ImageLoadError(f"image file is empty (0 bytes): {path}")
    try:
        with Image.open(path) as image:
            image.load()
            image = ImageOps.exif_transpose(image)
            return to_rgb_array(image)
    except Exception as exc:  # whatever one file makes a decoder raise (NotImplementedError for an odd DDS...)
        raise ImageLoadError(f"cannot read image {path}: {decoder_message(exc)}") from None


def decoder_message(exc: Exception) -> str:
    """The decoder's own message, with the exception type where that message alone says little."""
    text = str(exc)
    if isinstance(exc, (OSError, SyntaxError, ValueError)) and text:
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def to_rgb_array(image: Image.Image) -> np.ndarray:
    """Convert a PIL image of any mode to an (H, W, 3) uint8 RGB array."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        values = np.asarray(image, dtype=np.float64)
        values = np.clip(values, 0, 65535) / 257.0
        gray = np.round(values).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if image.mode == "F":
        values = np.asarray(image, dtype=np.float64)
        low, high = float(np.nanmin(values)), float(np.nanmax(values))
        scale = 255.0 / (high - low) if high > low else 0.0
        gray = np.round((np.nan_to_num(values, nan=low) - low) * scale).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def as_rgb(image: np.ndarray) -> np.ndarray:
    """Accept an in-memory array (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) of any dtype and return RGB uint8."""
    array = np.asarray(image)
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4) or array.shape[0] < 1 or array.shape[1] < 1:
        raise ImageLoadError(f"expected an (H, W[, C]) image array with 1, 3 or 4 channels, got shape {array.shape}")
    if array.dtype == np.uint16:
        array = np.round(array / 257.0)
    elif array.dtype.kind == "f":
        array = np.nan_to_num(array) * (255.0 if array.max(initial=0) <= 1.0 else 1.0)
    if array.dtype != np.uint8:  # uint8 passes as is: clipping a copy costs seconds on a 64-megapixel image
        array = np.clip(array, 0, 255).astype(np.uint8)
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    return np.ascontiguousarray(array[..., :3])
