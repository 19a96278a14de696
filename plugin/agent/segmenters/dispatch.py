"""Which backend a segmenter spec names, and loading it: the one choice every entry point (SDK, CLI
`--segmenter`, operators, `Agent.from_pretrained`, the trainer) goes through."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from ...defaults import DEFAULT_SEGMENTER
from .base import Segmenter

SAM2_MODEL_TYPES = ("sam2", "sam2_video")  # the released hub checkpoints are sam2_video; Sam2Model reads both
SAM2_HUB_ID = re.compile(r"[\w.-]+/sam2[\w.-]*", re.IGNORECASE)
SAM_MODEL_TYPES = ("vit_h", "vit_l", "vit_b")  # Meta's checkpoints, downloaded by name (`sam.CHECKPOINT_URLS`)


def segmenter_kind(spec: str | os.PathLike) -> str:
    """``"sam"`` or ``"sam2"``: which backend a segmenter spec names, without loading anything.

    A file is a segment-anything checkpoint, and so is a missing path ending ``.pth``/``.pt``/``.safetensors`` or a
    model type (``vit_h``...; `resolve_checkpoint` explains what is missing); a folder is SAM 2 when its
    config.json says ``model_type`` ``sam2`` or ``sam2_video``; a hub id whose name starts with ``sam2``
    (``facebook/sam2.1-hiera-large``) is SAM 2.
    """
    path = Path(spec).expanduser()
    name = str(spec)
    if path.is_dir():
        config = path / "config.json"
        model_type = json.loads(config.read_text()).get("model_type") if config.is_file() else None
        if model_type in SAM2_MODEL_TYPES:
            return "sam2"
        found = f"model_type {model_type!r} in its config.json" if config.is_file() else "no config.json"
        raise ValueError(f"segmenter folder {path} is not a SAM 2 model ({found}); a SAM 2 folder has a "
                         f"config.json with model_type one of {list(SAM2_MODEL_TYPES)}")
    if path.is_file() or name in SAM_MODEL_TYPES or path.suffix in (".pth", ".pt", ".safetensors"):
        return "sam"
    if SAM2_HUB_ID.fullmatch(name):
        return "sam2"
    raise ValueError(f"unknown segmenter {name!r}: give a SAM checkpoint file (.pth or .safetensors), one of "
                     f"{list(SAM_MODEL_TYPES)}, a SAM 2 folder, or a SAM 2 hub id such as "
                     "facebook/sam2.1-hiera-large")


def load_segmenter(spec: str | os.PathLike = DEFAULT_SEGMENTER, device: str | None = None, **kwargs) -> Segmenter:
    """The segmenter a spec names (see `segmenter_kind`): `SamSegmenter` or `Sam2Segmenter`, on `device`;
    ``"mini"`` is the shipped mini segmenter (`shipped.py`)."""
    from ..shipped import shipped_path

    spec = shipped_path(spec, "segmenter")
    if segmenter_kind(spec) == "sam2":
        from .sam2 import Sam2Segmenter

        return Sam2Segmenter.from_pretrained(spec, device=device, **kwargs)
    from .sam import SamSegmenter

    return SamSegmenter.from_checkpoint(spec, device=device, **kwargs)
