"""Lazy package exports: a package lists its public names and where each lives, and a name's module is imported
on first use. So importing a package (`sam_veteran`, `sam_veteran.plugin.agent`) loads nothing heavy, and
`dir()` and tab completion still show every name."""

from __future__ import annotations

import importlib
import sys
from typing import Callable


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """`__getattr__` and `__dir__` for `package`, whose names in `exports` live in the given (relative or absolute)
    modules."""

    def __getattr__(name: str):
        if name in exports:
            return getattr(importlib.import_module(exports[name], package), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        module = sys.modules.get(package)  # FiftyOne may load the plugin root under another name
        return sorted(set(exports) | set(vars(module) if module else ()))

    return __getattr__, __dir__
