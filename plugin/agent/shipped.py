"""The models shipped inside the package: the mini segmenter and mini policy, trained here on the generated scenes.

They are found by the name ``"mini"`` wherever a checkpoint is accepted (`load_policy`, `load_segmenter`, and so
the SDK, `run_agent`, the CLI and the operators). `plugin/models/mini/PROVENANCE.json` says how each was made
(command, seed, commit, wall time, metrics); `sam-veteran mini train` rebuilds them.
"""

from __future__ import annotations

import os
from pathlib import Path

MINI_DIR = Path(__file__).resolve().parents[1] / "models" / "mini"
SHIPPED = {"mini": {"policy": MINI_DIR / "policy", "segmenter": MINI_DIR / "segmenter.safetensors"}}


def shipped_path(spec: str | os.PathLike, kind: str) -> str | os.PathLike:
    """The shipped `kind` ("policy" or "segmenter") for a shipped name; any other spec unchanged."""
    if str(spec) not in SHIPPED:
        return spec
    path = SHIPPED[str(spec)][kind]
    if not path.exists():
        raise FileNotFoundError(f"the shipped {spec} {kind} is missing from this installation ({path}); "
                                "`sam-veteran mini train` rebuilds it")
    return path
