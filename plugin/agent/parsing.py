"""Reading the policy's answers: ``<think>...</think><answer>{json}</answer>``.

The parser is strict about meaning and lenient about form. It takes the last complete ``<answer>`` block (or the
text after an unclosed ``<answer>`` when generation was cut off), tolerates code fences and single nesting
(``[[x1, y1, x2, y2]]``), uses the first of several boxes or points, and rejects anything that is not a finite
number where a coordinate belongs. Repairs are returned as notes; failures raise `AnswerError` with the reason.
Coordinates stay in the policy's own convention: mapping to image pixels belongs to `prompts.ModelFamily`.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field

BOX_KEYS = ("bbox_2d", "bbox", "box")
POSITIVE_KEYS = ("positive_point", "points_1", "positive")
NEGATIVE_KEYS = ("negative_point", "points_2", "negative")

_THINK = re.compile(r"<think>(.*?)(?:</think>|$)", re.DOTALL)
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


class AnswerError(ValueError):
    """The policy's text could not be read as an answer of the expected kind."""


@dataclass
class ParsedAnswer:
    reasoning: str = ""
    box: tuple[float, float, float, float] | None = None
    positive: tuple[float, float] | None = None
    negative: tuple[float, float] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def stop(self) -> bool:
        return self.box is None and self.positive is None and self.negative is None


def parse_grounding(text: str) -> ParsedAnswer:
    """Read a grounding answer: one box ``{"bbox_2d": [x1, y1, x2, y2]}``."""
    answer, notes = _answer_object(text)
    key = _first_key(answer, BOX_KEYS)
    if key is None:
        raise AnswerError(f"answer has no box (expected key 'bbox_2d'): {_short(answer)}")
    box = _numbers(answer[key], 4, key, notes)
    if box is None:
        raise AnswerError("answer's 'bbox_2d' is null")
    return ParsedAnswer(reasoning=_reasoning(text), box=box, notes=notes)


def parse_refinement(text: str) -> ParsedAnswer:
    """Read a refinement answer: a positive and/or a negative point, or neither (stop)."""
    answer, notes = _answer_object(text)
    pos_key = _first_key(answer, POSITIVE_KEYS)
    neg_key = _first_key(answer, NEGATIVE_KEYS)
    if pos_key is None and neg_key is None:
        raise AnswerError(
            f"answer has neither 'positive_point' nor 'negative_point' (use null for none): {_short(answer)}"
        )
    positive = _numbers(answer[pos_key], 2, pos_key, notes) if pos_key else None
    negative = _numbers(answer[neg_key], 2, neg_key, notes) if neg_key else None
    return ParsedAnswer(reasoning=_reasoning(text), positive=positive, negative=negative, notes=notes)


def _reasoning(text: str) -> str:
    match = _THINK.search(text)
    return match.group(1).strip() if match else ""


def _answer_object(text: str) -> tuple[dict, list[str]]:
    notes: list[str] = []
    blocks = _ANSWER.findall(text)
    if blocks:
        if len(blocks) > 1:
            notes.append(f"{len(blocks)} answer blocks; the last was used")
        body = blocks[-1]
    elif "<answer>" in text:
        body = text.rsplit("<answer>", 1)[1]
        notes.append("unclosed <answer>; read to the end of the text")
    else:
        raise AnswerError("no <answer>...</answer> block in the text")
    body = body.strip()
    body = re.sub(r"^```(?:json)?\s*|\s*```$", "", body)
    start, end = body.find("{"), body.rfind("}")
    if start < 0 or end < start:
        raise AnswerError(f"answer is not a JSON object: {body[:80]!r}")
    try:
        obj = json.loads(body[start : end + 1], parse_constant=_reject_constant)
    except (json.JSONDecodeError, ValueError) as exc:
        raise AnswerError(f"answer is not valid JSON ({exc}): {body[:80]!r}") from None
    if not isinstance(obj, dict):
        raise AnswerError(f"answer is not a JSON object: {body[:80]!r}")
    return obj, notes


def _reject_constant(name: str):
    raise ValueError(f"{name} is not a coordinate")


def _first_key(obj: dict, keys: tuple[str, ...]) -> str | None:
    return next((key for key in keys if key in obj), None)


def _numbers(value, count: int, key: str, notes: list[str]) -> tuple[float, ...] | None:
    """A flat tuple of `count` finite numbers from `value`, unwrapping one level of nesting; None stays None."""
    if value is None:
        return None
    if isinstance(value, list) and value and all(isinstance(v, list) for v in value):
        if len(value) > 1:
            notes.append(f"{len(value)} values for '{key}'; the first was used")
        else:
            notes.append(f"nested '{key}' unwrapped")
        value = value[0]
    if not isinstance(value, list) or len(value) != count:
        raise AnswerError(f"'{key}' must be a list of {count} numbers, got {_short(value)}")
    out = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise AnswerError(f"'{key}' must be a list of {count} finite numbers, got {_short(value)}")
        out.append(float(v))
    return tuple(out)


def _short(value) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 80 else text[:77] + "..."
