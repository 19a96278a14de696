"""Ship a trained mini model: copy it into the package (`plugin/models/mini/`) with its provenance.

`PROVENANCE.json` keeps, per model: the command that trained it, the seed, the commit of the code that trained
it, the wall time, the number of steps and the metrics measured at the end; the training configuration is the
stage's own `config.json`, copied beside it. The copy is made into a staging path and renamed into place, so an
interrupted ship leaves the previous model.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

from ...plugin.agent.shipped import MINI_DIR, SHIPPED

PROVENANCE = MINI_DIR / "PROVENANCE.json"


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def ship(kind: str, source: Path, command: str, metrics: dict, config: dict) -> Path:
    """Copy `source` (a segmenter file or a policy folder) to the shipped place of `kind`; record provenance."""
    target = Path(SHIPPED["mini"][kind])
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(target.name + ".staging")
    if staging.is_dir():
        shutil.rmtree(staging)
    if source.is_dir():
        shutil.copytree(source, staging)
    else:
        shutil.copy2(source, staging)
    if target.is_dir():
        old = target.with_name(target.name + ".old")
        os.replace(target, old)
        os.replace(staging, target)
        shutil.rmtree(old)
    else:
        os.replace(staging, target)
    record = json.loads(PROVENANCE.read_text()) if PROVENANCE.exists() else {}
    record[kind] = {"command": command, "seed": config.get("seed"), "commit": _commit(),
                    "steps": config.get("steps"), "train_seconds": metrics.get("train_seconds"),
                    "metrics": {k: v for k, v in metrics.items() if k != "train_seconds"}, "config": config}
    PROVENANCE.write_text(json.dumps(record, indent=1) + "\n")
    return target
