"""Benchmark importers: ReasonSeg folders and the RefCOCO family (REFER layout, gRefCOCO) into FiftyOne."""

from .common import MalformedItem, UnsafePathError
from .reasonseg import import_reasonseg
from .refcoco import import_refcoco

__all__ = ["MalformedItem", "UnsafePathError", "import_reasonseg", "import_refcoco"]
