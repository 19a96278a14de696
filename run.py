"""`python -m sam_veteran.run DATASET [options]`: `sam-veteran run DATASET [options] --shard auto`, for launchers
that start a Python module on every worker (``torchrun -m``, ``accelerate launch -m``, ``srun python -m``).

Each worker reads its rank from the launcher's environment (docs/scale-out.md); ``--shard I/N`` overrides it.
"""

from __future__ import annotations

import sys

from .cli import main


def run_main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not any(arg == "--shard" or arg.startswith("--shard=") for arg in argv):
        argv += ["--shard", "auto"]
    return main(["run", *argv])


if __name__ == "__main__":
    sys.exit(run_main())
