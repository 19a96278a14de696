"""The SAM-Veteran agent, independent of FiftyOne: policy + segmenter + the step loop that joins them."""

from .loop import Agent, AgentConfig, AgentInput
from .parsing import AnswerError, ParsedAnswer, parse_grounding, parse_refinement
from .policy import DEFAULT_POLICY, Policy, PolicyRequest, TransformersPolicy
from .prompts import FAMILIES, ModelFamily, family_for
from .sam2 import Sam2Segmenter
from .segmenter import SamSegmenter, Segmenter, load_segmenter
from .trace import Action, EndReason, Step, Trace

__all__ = [
    "Action", "Agent", "AgentConfig", "AgentInput", "AnswerError", "DEFAULT_POLICY", "EndReason", "FAMILIES",
    "ModelFamily", "ParsedAnswer", "Policy", "PolicyRequest", "Sam2Segmenter", "SamSegmenter", "Segmenter", "Step", "Trace",
    "TransformersPolicy", "family_for", "load_segmenter", "parse_grounding", "parse_refinement",
]
