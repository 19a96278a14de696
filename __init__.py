"""SAM-Veteran for FiftyOne: a reasoning-segmentation agent (a Qwen-VL policy driving Segment Anything).

This file is both the FiftyOne plugin entry (`register`) and the package `sam_veteran`. It imports nothing heavy:
`import sam_veteran` stays fast and FiftyOne-free; the SDK names below load on first use.
"""

from sam_veteran.plugin.lazy import lazy_exports

_EXPORTS = {
    "Agent": "sam_veteran.plugin.agent",
    "AgentConfig": "sam_veteran.plugin.agent",
    "AgentInput": "sam_veteran.plugin.agent",
    "SamSegmenter": "sam_veteran.plugin.agent",
    "Sam2Segmenter": "sam_veteran.plugin.agent",
    "load_segmenter": "sam_veteran.plugin.agent",
    "TransformersPolicy": "sam_veteran.plugin.agent",
    "Trace": "sam_veteran.plugin.agent",
    "SamVeteranModel": "sam_veteran.plugin.model",
    "run_agent": "sam_veteran.plugin.inference",
    "iter_run_agent": "sam_veteran.plugin.inference",
    "trace_to_labels": "sam_veteran.plugin.labels",
    "refine": "sam_veteran.plugin.refine",
    "continue_agent": "sam_veteran.plugin.refine",
    "write_tiny_models": "sam_veteran.plugin.agent.tiny",
    "import_reasonseg": "sam_veteran.plugin.datasets",
    "import_refcoco": "sam_veteran.plugin.datasets",
    "evaluate": "sam_veteran.plugin.evaluation",
    "triage": "sam_veteran.plugin.curation.triage",
    "review_order": "sam_veteran.plugin.curation.triage",
    "tag_from_evaluation": "sam_veteran.plugin.curation.tagging",
    "IOU_BAND_EDGES": "sam_veteran.plugin.curation.bands",
    "export_reasonseg": "sam_veteran.plugin.datasets.exporters",
    "export_refer": "sam_veteran.plugin.datasets.exporters",
    "train": "sam_veteran.trainer.train",
    "TrainConfig": "sam_veteran.trainer.config",
}

__all__ = sorted(_EXPORTS) + ["register"]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)


def register(p) -> None:
    """FiftyOne's plugin hook: register every operator and panel listed in fiftyone.yml."""
    from sam_veteran.plugin.operators import register as register_all

    register_all(p)
