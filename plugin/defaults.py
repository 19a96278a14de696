"""The one home of the defaults every entry point shares (SDK, CLI, operators, trainer) and of the choice lists
the CLI and the operator forms offer. Plain constants: importing this loads nothing.
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_POLICY = "Qwen/Qwen2.5-VL-7B-Instruct"
DEFAULT_SEGMENTER = "vit_h"
ORACLE_POLICY = "oracle"  # the policy name of the simulated user (plugin/agent/oracle.py): nothing to download
DEMO_MODELS = ("mini", "mini")  # the demo's (policy, segmenter): shipped, offline; `--real` takes the defaults above
DEFAULT_LABEL_FIELD = "veteran"  # writes veteran_mask, veteran_steps, veteran_clicks
DEFAULT_PROMPT_FIELD = "query"
DEFAULT_GT_FIELD = "ground_truth"
DEFAULT_EVAL_KEY = "eval"
DEFAULT_MAX_STEPS = 3  # refinement steps after the box
DEFAULT_BATCH_SIZE = 8
MAX_NEW_TOKENS = 512  # the longest answer the policy may generate
TINY_MAX_NEW_TOKENS = 64  # the tiny random models' answers are noise: keep them short
# How the policy decodes (`agent/policy.py`): plain `generate`, or a static KV cache with the decoding step
# compiled (transformers' continuous batching cannot take images: see `agent/policy.py`). Eager stays the default
# until another is measured faster on a GPU.
DECODINGS = ("eager", "static")
DEFAULT_DECODING = "eager"

REFER_DATASETS = ("refcoco", "refcoco+", "refcocog", "grefcoco")
TINY_FAMILIES = ("qwen2_5_vl", "qwen3_vl")  # the tiny policies written by default

SEGMENTER_HELP = ("a SAM checkpoint (.pth or .safetensors) or vit_h / vit_l / vit_b, or a SAM 2 folder or hub id "
                  "such as facebook/sam2.1-hiera-large")


def cache_dir() -> Path:
    """Where SAM checkpoints, the demo's images and the tiny models live: ``$SAM_VETERAN_CACHE`` or
    ``~/.cache/sam_veteran``."""
    return Path(os.environ.get("SAM_VETERAN_CACHE", Path.home() / ".cache" / "sam_veteran"))

# What `refine`, `continue_agent` and the App's refine panel load when told nothing else (environment variables
# SAM_VETERAN_REFINE_SEGMENTER / SAM_VETERAN_REFINE_POLICY override them, e.g. for one App server; `refine.py`).
REFINE_SEGMENTER = "mini"
REFINE_POLICIES = ("mini", "oracle")  # the first one available: the shipped mini policy, else the simulated user
