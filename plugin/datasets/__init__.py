"""Benchmark importers: ReasonSeg folders and the RefCOCO family (REFER layout, gRefCOCO) into FiftyOne; and the
exporters that write any view back in those formats."""

from .common import MalformedItem, UnsafePathError
from .exporters import export_reasonseg, export_refer
from .reasonseg import import_reasonseg
from .refcoco import import_refcoco

__all__ = ["MalformedItem", "UnsafePathError", "export_reasonseg", "export_refer", "import_reasonseg",
           "import_refcoco"]
