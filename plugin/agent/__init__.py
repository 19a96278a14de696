"""The SAM-Veteran agent, independent of FiftyOne: policy + segmenter + the step loop that joins them."""

from .loop import Agent, AgentConfig, AgentInput
from .parsing import AnswerError, ParsedAnswer, parse_grounding, parse_refinement
from .policy import DEFAULT_POLICY, Policy, PolicyRequest, TransformersPolicy
from .prompts import FAMILIES, ModelFamily, family_for
from .segmenter import SamSegmenter, Segmenter
from .trace import Action, EndReason, Step, Trace

__all__ = [
    "Action", "Agent", "AgentConfig", "AgentInput", "AnswerError", "DEFAULT_POLICY", "EndReason", "FAMILIES",
    "ModelFamily", "ParsedAnswer", "Policy", "PolicyRequest", "SamSegmenter", "Segmenter", "Step", "Trace",
    "TransformersPolicy", "family_for", "parse_grounding", "parse_refinement",
]
