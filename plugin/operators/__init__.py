"""FiftyOne operators and panels: thin wrappers over the SDK, one module each."""

from ..panels.evaluation import EvaluationPanel
from ..panels.refine import RefinePanel
from .curation import TagFromEvaluation, Triage
from .evaluate import Evaluate
from .export import ExportReasonSeg, ExportRefer
from .importers import ImportReasonSeg, ImportRefCoco
from .run_agent import RunSamVeteran
from .train import TrainSamVeteran

OPERATORS: list = [RunSamVeteran, ImportReasonSeg, ImportRefCoco, Evaluate, Triage, TagFromEvaluation, ExportReasonSeg, ExportRefer,
                   TrainSamVeteran]
PANELS: list = [EvaluationPanel, RefinePanel]


def register(p) -> None:
    for cls in OPERATORS + PANELS:
        p.register(cls)
