"""Reading the policy's answers: ``<think>...</think><answer>{json}</answer>``.

The parser is strict about meaning and lenient about form. It takes the last complete ``<answer>`` block (or the
text after an unclosed ``<answer>`` when generation was cut off), tolerates code fences and single nesting
(``[[x1, y1, x2, y2]]``), uses the first of several boxes or points, and rejects anything that is not a finite
number where a coordinate belongs. Repairs are returned as notes; failures raise `AnswerError` with the reason.
Coordinates stay in the policy's own convention: mapping to image pixels belongs to `prompts.ModelFamily`.

Grounding answers come in the format of the family (`prompts.ANSWER_FORMATS`):

- ``sam_veteran``: ``{"bbox_2d": [x1, y1, x2, y2]}``.
- ``seg_zero``: ``{"bbox": [...], "points_1": [x, y], "points_2": [x, y]}``; both points are positive clicks given
  with the box. Seg-Zero's own extractor takes the first ``{...}`` anywhere in the text, so an answer without
  ``<answer>`` tags is read the same way (with a note).
- ``vision_reasoner``: ``[{"bbox_2d": [...], "point_2d": [x, y]}, ...]``, one object each; several objects give
  their enclosing box and every point (with a note), ``[]`` gives no box (nothing found). VisionReasoner's
  extractor needs the ``<answer>`` tags, so this parser does too.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field

from .prompts import SAM_VETERAN, SEG_ZERO, VISION_REASONER

BOX_KEYS = ("bbox_2d", "bbox", "box")
POSITIVE_KEYS = ("positive_point", "points_1", "positive")
NEGATIVE_KEYS = ("negative_point", "points_2", "negative")

_THINK = re.compile(r"<think>(.*?)(?:</think>|$)", re.DOTALL)
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_FIRST_OBJECT = re.compile(r"{[^}]+}")  # Seg-Zero's extractor: the first flat JSON object in the text


class AnswerError(ValueError):
    """The policy's text could not be read as an answer of the expected kind."""


@dataclass
class ParsedAnswer:
    reasoning: str = ""
    box: tuple[float, float, float, float] | None = None
    positive: tuple[float, float] | None = None
    negative: tuple[float, float] | None = None
    points: list[tuple[float, float]] = field(default_factory=list)  # positive clicks given with the box
    notes: list[str] = field(default_factory=list)

    @property
    def stop(self) -> bool:
        return self.box is None and self.positive is None and self.negative is None


def parse_grounding(text: str, answer_format: str = SAM_VETERAN) -> ParsedAnswer:
    """Read a grounding answer in `answer_format`: by default one box ``{"bbox_2d": [x1, y1, x2, y2]}``."""
    if answer_format == SEG_ZERO:
        return _parse_seg_zero(text)
    if answer_format == VISION_REASONER:
        return _parse_vision_reasoner(text)
    answer, notes = _answer_object(text)
    key = _first_key(answer, BOX_KEYS)
    if key is None:
        raise AnswerError(f"answer has no box (expected key 'bbox_2d'): {_short(answer)}")
    box = _numbers(answer[key], 4, key, notes)
    if box is None:
        raise AnswerError("answer's 'bbox_2d' is null")
    return ParsedAnswer(reasoning=_reasoning(text), box=box, notes=notes)


def _parse_seg_zero(text: str) -> ParsedAnswer:
    if "<answer>" in text:
        answer, notes = _answer_object(text)
    else:
        match = _FIRST_OBJECT.search(text)
        if match is None:
            raise AnswerError("no <answer>...</answer> block and no JSON object in the text")
        answer, notes = _json_object(match.group(0)), ["no <answer> tags; the first JSON object in the text was "
                                                       "read, as Seg-Zero's extractor does"]
    box_key = next((key for key in answer if "bbox" in key.lower()), None)  # Seg-Zero: any key naming bbox
    if box_key is None:
        raise AnswerError(f"answer has no box (expected key 'bbox'): {_short(answer)}")
    box = _numbers(answer[box_key], 4, box_key, notes)
    if box is None:
        raise AnswerError(f"answer's '{box_key}' is null")
    point_keys = [key for key in answer if "points" in key.lower()][:2]  # Seg-Zero: the first two naming points
    if len(point_keys) != 2:
        raise AnswerError(f"answer needs two points ('points_1', 'points_2'), found {len(point_keys)}: "
                          f"{_short(answer)}")
    points = [_numbers(answer[key], 2, key, notes) for key in point_keys]
    if any(point is None for point in points):
        raise AnswerError(f"answer's points must not be null: {_short(answer)}")
    return ParsedAnswer(reasoning=_reasoning(text), box=box, points=points, notes=notes)


def _parse_vision_reasoner(text: str) -> ParsedAnswer:
    body, notes = _answer_body(text)
    start, end = body.find("["), body.rfind("]")
    if start < 0 or end < start:
        raise AnswerError(f"answer is not a JSON list of objects: {body[:80]!r}")
    objects = _loads(body[start:end + 1], body)
    if not isinstance(objects, list) or not all(isinstance(o, dict) for o in objects):
        raise AnswerError(f"answer is not a JSON list of objects: {body[:80]!r}")
    boxes, points = [], []
    for index, obj in enumerate(objects):
        for key in ("bbox_2d", "point_2d"):
            if key not in obj:
                raise AnswerError(f"object {index} has no '{key}': {_short(obj)}")
        box = _numbers(obj["bbox_2d"], 4, "bbox_2d", notes)
        point = _numbers(obj["point_2d"], 2, "point_2d", notes)
        if box is None or point is None:
            raise AnswerError(f"object {index} has a null box or point: {_short(obj)}")
        boxes.append(box)
        points.append(point)
    if not boxes:
        return ParsedAnswer(reasoning=_reasoning(text), notes=notes + ["no objects: nothing was found"])
    box = boxes[0]
    if len(boxes) > 1:
        box = (min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes))
        notes.append(f"{len(boxes)} objects: their enclosing box and all {len(points)} points were used")
    return ParsedAnswer(reasoning=_reasoning(text), box=box, points=points, notes=notes)


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
    body, notes = _answer_body(text)
    return _json_object(body), notes


def _answer_body(text: str) -> tuple[str, list[str]]:
    """The text of the last complete ``<answer>`` block (or after an unclosed one), code fences removed."""
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
    return re.sub(r"^```(?:json)?\s*|\s*```$", "", body), notes


def _json_object(body: str) -> dict:
    start, end = body.find("{"), body.rfind("}")
    if start < 0 or end < start:
        raise AnswerError(f"answer is not a JSON object: {body[:80]!r}")
    obj = _loads(body[start : end + 1], body)
    if not isinstance(obj, dict):
        raise AnswerError(f"answer is not a JSON object: {body[:80]!r}")
    return obj


def _loads(text: str, body: str):
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except (json.JSONDecodeError, ValueError) as exc:
        raise AnswerError(f"answer is not valid JSON ({exc}): {body[:80]!r}") from None


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
