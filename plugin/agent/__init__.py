"""The SAM-Veteran agent, independent of FiftyOne: policy + segmenter + the step loop that joins them.

Names load on first use, so `parsing`, `prompts` and `trace` (and the trainer's rewards) import without torch.
"""

from ..lazy import lazy_exports

_EXPORTS = {
    "Agent": ".loop", "AgentConfig": ".loop", "AgentInput": ".loop",
    "AnswerError": ".parsing", "ParsedAnswer": ".parsing", "parse_grounding": ".parsing",
    "parse_refinement": ".parsing",
    "Policy": ".policy", "PolicyRequest": ".policy", "TransformersPolicy": ".policy", "load_policy": ".policy",
    "OraclePolicy": ".oracle",
    "FAMILIES": ".prompts", "ModelFamily": ".prompts", "family_for": ".prompts",
    "Sam2Segmenter": ".segmenters", "SamSegmenter": ".segmenters", "Segmenter": ".segmenters",
    "load_segmenter": ".segmenters", "segmenter_kind": ".segmenters",
    "Action": ".trace", "EndReason": ".trace", "Step": ".trace", "Trace": ".trace",
    "DEFAULT_POLICY": "..defaults", "DEFAULT_SEGMENTER": "..defaults",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
