"""What every segmenter backend shares: the `Segmenter` protocol and its result record.

Plain numpy and torch types only, so a new backend (another SAM version) is one new module beside `sam.py` and
`sam2.py`, and `dispatch.py` picks it from what a spec names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, Sequence

import numpy as np

if TYPE_CHECKING:  # so `dispatch.segmenter_kind` needs no torch
    import torch


@dataclass
class SegmentResult:
    mask: np.ndarray  # (H, W) bool at original size
    score: float  # the decoder's predicted IoU
    logits: torch.Tensor  # (1, 1, h, w) low-resolution logits, fed back as the next step's mask prompt


class Segmenter(Protocol):
    """What the agent needs from a segmenter (`SamSegmenter`, `Sam2Segmenter`). An embedding is opaque to the
    caller: each backend's `encode` returns its own kind (`ImageEmbedding`, `Sam2Embedding`) and `segment` takes
    it back."""

    def encode(self, images: Sequence[np.ndarray]) -> list[Any]: ...

    def segment(self, embedding: Any, box: Sequence[float], points: Sequence[Sequence[float]] = (),
                labels: Sequence[int] = (), mask_logits: torch.Tensor | None = None) -> SegmentResult: ...
