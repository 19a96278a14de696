"""FiftyOne operators and panels: thin wrappers over the SDK, one module each."""

from ..panels.evaluation import EvaluationPanel
from .evaluate import Evaluate
from .importers import ImportReasonSeg, ImportRefCoco

OPERATORS: list = [ImportReasonSeg, ImportRefCoco, Evaluate]
PANELS: list = [EvaluationPanel]


def register(p) -> None:
    for cls in OPERATORS + PANELS:
        p.register(cls)
