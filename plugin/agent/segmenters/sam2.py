"""SAM 2 (what the paper used) through `transformers`, behind the same `Segmenter` protocol as `SamSegmenter`.

`encode` runs the Hiera image encoder once per image (batched) and keeps its three feature levels; `segment` runs
only the prompt encoder and the mask decoder on them, so every refinement step reuses the embedding. SAM 2
stretches every image to a square (1024x1024 for the released models): the processor maps boxes and clicks from
original-image pixels onto that square, and `post_process_masks` scales the low-resolution logits back to the
original size. Weights load from safetensors only and no checkpoint code ever runs (`trust_remote_code` is never
set). The released hub checkpoints are `sam2_video` models; `Sam2Model` takes their image-model weights.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch

from .base import SegmentResult
from .dispatch import SAM2_MODEL_TYPES

if TYPE_CHECKING:
    from transformers import Sam2Model, Sam2Processor

DEFAULT_SAM2 = "facebook/sam2.1-hiera-large"


@dataclass
class Sam2Embedding:
    """An encoded image: SAM 2's feature levels, finest first, each (1, C, h, w), and the original size."""

    features: tuple[torch.Tensor, ...]
    original_size: tuple[int, int]  # (height, width)


class Sam2Segmenter:
    """Segment Anything 2 (image predictor path) behind the `Segmenter` protocol."""

    def __init__(self, model: Sam2Model, processor: Sam2Processor, device: str | torch.device | None = None,
                 encode_batch_size: int = 4, mask_threshold: float = 0.0) -> None:
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = model.to(self.device).eval()
        self.processor = processor
        self.encode_batch_size = encode_batch_size
        self.mask_threshold = mask_threshold

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike = DEFAULT_SAM2, device: str | None = None,
                        **kwargs) -> "Sam2Segmenter":
        """Load a hub id (default ``facebook/sam2.1-hiera-large``) or a folder holding a SAM 2 config.json."""
        from transformers import AutoConfig, Sam2Model, Sam2Processor

        config = AutoConfig.from_pretrained(name_or_path)
        if config.model_type not in SAM2_MODEL_TYPES:
            raise ValueError(f"{name_or_path} is a {config.model_type!r} model, not SAM 2 "
                             f"(model_type one of {list(SAM2_MODEL_TYPES)})")
        model = Sam2Model.from_pretrained(name_or_path, config=config, use_safetensors=True)
        return cls(model, Sam2Processor.from_pretrained(name_or_path), device=device, **kwargs)

    @torch.no_grad()
    def encode(self, images: Sequence[np.ndarray]) -> list[Sam2Embedding]:
        """Run the image encoder on RGB uint8 (H, W, 3) images, `encode_batch_size` at a time."""
        out: list[Sam2Embedding] = []
        dtype = self.model.dtype
        for start in range(0, len(images), self.encode_batch_size):
            chunk = list(images[start : start + self.encode_batch_size])
            # channels_last stated: a 1- or 3-pixel-high image would otherwise be read as channels-first.
            pixels = self.processor(images=chunk, input_data_format="channels_last", return_tensors="pt")
            features = self.model.get_image_embeddings(pixels["pixel_values"].to(self.device, dtype))
            for i, image in enumerate(chunk):
                out.append(Sam2Embedding(tuple(level[i : i + 1] for level in features), image.shape[:2]))
        return out

    @torch.no_grad()
    def segment(self, embedding: Sam2Embedding, box: Sequence[float], points: Sequence[Sequence[float]] = (),
                labels: Sequence[int] = (), mask_logits: torch.Tensor | None = None) -> SegmentResult:
        """Decode one mask from a box (xyxy pixels), clicks ((x, y) pixels, label 1/0) and previous logits."""
        prompts = dict(input_boxes=[[[float(v) for v in box]]])
        if len(points):
            prompts.update(input_points=[[[[float(x), float(y)] for x, y in points]]],
                           input_labels=[[[int(label) for label in labels]]])
        prompts = self.processor(original_sizes=[list(embedding.original_size)], return_tensors="pt", **prompts)
        prompts.pop("original_sizes")
        output = self.model(image_embeddings=list(embedding.features), input_masks=mask_logits,
                            multimask_output=False, **prompts.to(self.device))
        masks = self.processor.post_process_masks(output.pred_masks, [embedding.original_size],
                                                  mask_threshold=self.mask_threshold)
        return SegmentResult(mask=masks[0][0, 0].cpu().numpy(), score=float(output.iou_scores[0, 0, 0]),
                             logits=output.pred_masks[:, 0])
