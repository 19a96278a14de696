"""Shared fixtures. FiftyOne is isolated per test session before anything imports it."""

import os
import tempfile
from pathlib import Path

_SESSION_DIR = Path(tempfile.mkdtemp(prefix="sam-veteran-tests-"))
os.environ.setdefault("FIFTYONE_DATABASE_DIR", str(_SESSION_DIR / "db"))
os.environ["FIFTYONE_DO_NOT_TRACK"] = "true"
os.environ.setdefault("FIFTYONE_PLUGINS_DIR", str(_SESSION_DIR / "plugins"))
os.environ["SAM_VETERAN_CACHE"] = str(_SESSION_DIR / "cache")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def tiny_models() -> dict[str, Path]:
    """Tiny policies (Qwen2.5-VL, Qwen3-VL, Qwen2-VL) and a tiny SAM checkpoint, written once per session."""
    from sam_veteran.plugin.agent.tiny import write_tiny_models

    return write_tiny_models(_SESSION_DIR / "tiny", families=("qwen2_5_vl", "qwen3_vl", "qwen2_vl"))


@pytest.fixture(scope="session")
def tiny_segmenter(tiny_models):
    from sam_veteran.plugin.agent import SamSegmenter

    return SamSegmenter.from_checkpoint(tiny_models["segmenter"], device="cpu")


@pytest.fixture(scope="session")
def tiny_policy(tiny_models):
    from sam_veteran.plugin.agent import TransformersPolicy

    return TransformersPolicy.from_pretrained(tiny_models["policy-qwen2_5_vl"], device="cpu", max_new_tokens=24)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA
