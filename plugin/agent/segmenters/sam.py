"""Meta's Segment Anything (v1) turning a box, clicks and the previous mask into a mask.

`encode` runs the heavy image encoder once per image (batched); `segment` runs only the light prompt encoder and
mask decoder, so every refinement step reuses the embedding. Checkpoints load with `torch.load(weights_only=True)`
or safetensors: a checkpoint can never run code. The architecture (vit_h / vit_l / vit_b / the local tiny one)
is read from the checkpoint's own tensor shapes (`ARCHITECTURES`); a model type name resolves to Meta's file in
the cache, downloaded once. `encoder_dtype=torch.bfloat16` runs the image encoder (nearly all of SAM's cost) in
bf16 and hands its features to the fp32 decoder; the masks it gives are compared with fp32's in
`bench/decoding.py` and `tests/test_decoding_sam.py`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from segment_anything.modeling import (ImageEncoderViT, MaskDecoder, PromptEncoder, Sam,
                                       TwoWayTransformer)
from segment_anything.utils.transforms import ResizeLongestSide

from ...defaults import DEFAULT_SEGMENTER, cache_dir
from .base import SegmentResult

CHECKPOINT_URLS = {  # keys: dispatch.SAM_MODEL_TYPES
    "vit_h": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth",
    "vit_l": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth",
    "vit_b": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
}


@dataclass(frozen=True)
class SamArchitecture:
    """The numbers that define one SAM variant; `segment_anything.build_sam` uses the same ones."""

    embed_dim: int
    depth: int
    num_heads: int
    global_attn_indexes: tuple[int, ...]
    img_size: int = 1024
    patch_size: int = 16
    window_size: int = 14
    prompt_dim: int = 256
    mlp_ratio: float = 4.0
    mask_in_chans: int = 16
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_heads: int = 8
    iou_head_hidden_dim: int = 256


ARCHITECTURES: dict[str, SamArchitecture] = {
    "vit_h": SamArchitecture(1280, 32, 16, (7, 15, 23, 31)),
    "vit_l": SamArchitecture(1024, 24, 16, (5, 11, 17, 23)),
    "vit_b": SamArchitecture(768, 12, 12, (2, 5, 8, 11)),
    "tiny": SamArchitecture(32, 2, 2, (1,), img_size=256, window_size=4, prompt_dim=32, mlp_ratio=2.0,
                            decoder_mlp_dim=64, decoder_heads=2, iou_head_hidden_dim=32),
    # the shipped mini segmenter, trained here on the generated scenes (trainer/mini/segmenter.py)
    "mini": SamArchitecture(96, 4, 4, (1, 3), img_size=256, window_size=8, prompt_dim=64,
                            decoder_mlp_dim=256, decoder_heads=4, iou_head_hidden_dim=64),
}


def build_sam(model_type: str) -> Sam:
    """Build a randomly initialised SAM of a registered architecture (weights are loaded separately)."""
    arch = ARCHITECTURES[model_type]
    embedding_size = arch.img_size // arch.patch_size
    sam = Sam(
        image_encoder=ImageEncoderViT(
            depth=arch.depth, embed_dim=arch.embed_dim, img_size=arch.img_size, mlp_ratio=arch.mlp_ratio,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=arch.num_heads,
            patch_size=arch.patch_size, qkv_bias=True, use_rel_pos=True,
            global_attn_indexes=arch.global_attn_indexes, window_size=arch.window_size, out_chans=arch.prompt_dim,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=arch.prompt_dim, image_embedding_size=(embedding_size, embedding_size),
            input_image_size=(arch.img_size, arch.img_size), mask_in_chans=arch.mask_in_chans,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=arch.decoder_depth, embedding_dim=arch.prompt_dim,
                                          mlp_dim=arch.decoder_mlp_dim, num_heads=arch.decoder_heads),
            transformer_dim=arch.prompt_dim, iou_head_depth=3, iou_head_hidden_dim=arch.iou_head_hidden_dim,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )
    return sam.eval()


def load_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read tensors only: safetensors, or a pickle restricted to tensors (`weights_only=True`).

    A file that is not such a checkpoint gets a `ValueError` saying so; torch's own message for a refused pickle,
    which suggests ``weights_only=False`` (letting the file run code), is never passed on."""
    path = os.fspath(path)
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"{path} is not a segment-anything checkpoint (a .pth of tensors or a .safetensors file): "
                         f"{_unreadable_reason(exc)}") from None
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} is not a segment-anything checkpoint: it holds a {type(state).__name__}, not a "
                         "dictionary of tensors")
    return state


def _unreadable_reason(exc: Exception) -> str:
    """Why torch or safetensors could not read a file, in words that never advise turning safe loading off."""
    refused = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
    if refused:
        return f"it refers to the unsupported global {refused.group(1)}, which could run code; it was not loaded"
    if "weights_only" in str(exc) or isinstance(exc, (IndexError, EOFError, KeyError)) or not str(exc):
        return "it is not a PyTorch file of tensors (or it is cut off)"
    return f"{type(exc).__name__}: {exc}"


def architecture_of(state: dict[str, torch.Tensor]) -> str:
    """Which registered architecture a SAM state dict belongs to, from its tensor shapes."""
    weight = state.get("image_encoder.patch_embed.proj.weight")
    if weight is None:
        raise ValueError("not a segment-anything checkpoint: no 'image_encoder.patch_embed.proj.weight'")
    depth = len({key.split(".")[2] for key in state if key.startswith("image_encoder.blocks.")})
    for name, arch in ARCHITECTURES.items():
        if arch.embed_dim == weight.shape[0] and arch.depth == depth:
            return name
    raise ValueError(f"unknown SAM architecture: embed dim {weight.shape[0]}, depth {depth}")


def resolve_checkpoint(checkpoint: str | os.PathLike) -> Path:
    """A local checkpoint path as given, or a model type (``"vit_h"``) resolved to Meta's file in the cache.

    The cache is ``$SAM_VETERAN_CACHE`` or ``~/.cache/sam_veteran``; a missing file is downloaded once, and the
    download is announced with its URL and destination.
    """
    path = Path(checkpoint).expanduser()
    if path.exists():
        return path
    name = str(checkpoint)
    if name not in CHECKPOINT_URLS:
        raise FileNotFoundError(f"segmenter checkpoint not found: {checkpoint} (or give one of {sorted(CHECKPOINT_URLS)})")
    url = CHECKPOINT_URLS[name]
    cache = cache_dir()
    target = cache / url.rsplit("/", 1)[1]
    if not target.exists():
        cache.mkdir(parents=True, exist_ok=True)
        print(f"Downloading the SAM {name} checkpoint from {url} to {target}")
        torch.hub.download_url_to_file(url, str(target))
    return target


@dataclass
class ImageEmbedding:
    """An encoded image: the encoder features plus the sizes needed to map prompts and masks."""

    features: torch.Tensor  # (1, C, h, w)
    original_size: tuple[int, int]  # (height, width)
    input_size: tuple[int, int]  # (height, width) after resizing the longest side


class SamSegmenter:
    """Segment Anything (v1) behind the `Segmenter` protocol."""

    def __init__(self, sam: Sam, device: str | torch.device | None = None, encode_batch_size: int = 4,
                 mask_threshold: float = 0.0, encoder_dtype: torch.dtype = torch.float32) -> None:
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.sam = sam.to(self.device).eval()
        self.encoder_dtype = encoder_dtype
        self.sam.image_encoder.to(encoder_dtype)
        self.transform = ResizeLongestSide(sam.image_encoder.img_size)
        self.encode_batch_size = encode_batch_size
        self.mask_threshold = mask_threshold

    @classmethod
    def from_checkpoint(cls, checkpoint: str | os.PathLike = DEFAULT_SEGMENTER, **kwargs) -> "SamSegmenter":
        """Load a checkpoint file (any registered architecture) or a model type name such as ``"vit_b"``."""
        state = load_state_dict(resolve_checkpoint(checkpoint))
        sam = build_sam(architecture_of(state))
        sam.load_state_dict(state, strict=True)
        return cls(sam, **kwargs)

    @torch.no_grad()
    def encode(self, images: Sequence[np.ndarray]) -> list[ImageEmbedding]:
        """Run the image encoder on RGB uint8 images, `encode_batch_size` at a time."""
        out: list[ImageEmbedding] = []
        for start in range(0, len(images), self.encode_batch_size):
            chunk = images[start : start + self.encode_batch_size]
            inputs, sizes = [], []
            for image in chunk:
                resized = self.transform.apply_image(image)
                tensor = torch.as_tensor(resized, device=self.device).permute(2, 0, 1).float()
                inputs.append(self.sam.preprocess(tensor[None])[0])
                sizes.append(((image.shape[0], image.shape[1]), (resized.shape[0], resized.shape[1])))
            features = self.sam.image_encoder(torch.stack(inputs).to(self.encoder_dtype)).float()
            for i, (original, input_size) in enumerate(sizes):
                out.append(ImageEmbedding(features[i : i + 1], original, input_size))
        return out

    @torch.no_grad()
    def segment(self, embedding: ImageEmbedding, box: Sequence[float], points: Sequence[Sequence[float]] = (),
                labels: Sequence[int] = (), mask_logits: torch.Tensor | None = None) -> SegmentResult:
        """Decode one mask from a box (xyxy pixels), clicks ((x, y) pixels, label 1/0) and previous logits."""
        box_t = self.transform.apply_boxes(np.asarray([box], dtype=np.float32), embedding.original_size)
        box_t = torch.as_tensor(box_t, dtype=torch.float32, device=self.device)
        point_prompt = None
        if len(points):
            coords = self.transform.apply_coords(np.asarray(points, dtype=np.float32), embedding.original_size)
            point_prompt = (torch.as_tensor(coords[None], dtype=torch.float32, device=self.device),
                            torch.as_tensor(np.asarray(labels)[None], dtype=torch.int, device=self.device))
        sparse, dense = self.sam.prompt_encoder(points=point_prompt, boxes=box_t, masks=mask_logits)
        low_res, iou = self.sam.mask_decoder(
            image_embeddings=embedding.features, image_pe=self.sam.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=False,
        )
        masks = self.sam.postprocess_masks(low_res, embedding.input_size, embedding.original_size)
        mask = (masks[0, 0] > self.mask_threshold).cpu().numpy()
        return SegmentResult(mask=mask, score=float(iou[0, 0]), logits=low_res)
