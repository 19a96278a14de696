"""From a parsed answer to what the segmenter is given: the box or the clicks in original-image pixels.

Answers are repaired where the meaning is clear, and each repair is noted: inverted box corners are swapped, a box
is clamped into the image, a click is clamped onto the image's pixels. A box with no area left inside the image
is an error. The agent loop, the trainer's rewards and its dynamic sampling all read answers through here, so
what is trained is what runs. Pure functions of (answer, family, image size): no model, no image.
"""

from __future__ import annotations

from dataclasses import dataclass

from .parsing import ParsedAnswer
from .prompts import ModelFamily
from .trace import Action

Box = tuple[float, float, float, float]
Point = tuple[float, float]


@dataclass(frozen=True)
class BoxAction:
    """A grounding answer's box (xyxy, original-image pixels), or `error` when no area is left inside the image;
    `points` are the positive clicks some families (Seg-Zero, VisionReasoner) give with the box, on the image."""

    box: Box | None
    notes: tuple[str, ...] = ()
    error: str | None = None
    points: tuple[Point, ...] = ()


@dataclass(frozen=True)
class ClickAction:
    """A refinement answer's clicks (original-image pixels, on the image); neither click means stop."""

    positive: Point | None
    negative: Point | None
    notes: tuple[str, ...] = ()

    @property
    def action(self) -> Action:
        return click_action(self.positive is not None, self.negative is not None)

    @property
    def points(self) -> list[Point]:
        return [p for p in (self.positive, self.negative) if p is not None]

    @property
    def labels(self) -> list[int]:
        """The segmenter's point labels for `points`: 1 positive, 0 negative."""
        return [label for p, label in ((self.positive, 1), (self.negative, 0)) if p is not None]


def click_action(positive: bool, negative: bool) -> Action:
    """The action of a refinement answer with or without each kind of click."""
    return {(False, False): Action.STOP, (True, False): Action.POSITIVE, (False, True): Action.NEGATIVE,
            (True, True): Action.POSITIVE_AND_NEGATIVE}[(positive, negative)]


def answer_box(answer: ParsedAnswer, family: ModelFamily, image_size: tuple[int, int]) -> BoxAction:
    """Map the answer's box to image pixels (`image_size` is (width, height)), swap inverted corners and clamp it
    into the image; any area inside counts (a 1x1 image's boxes are sub-pixel)."""
    width, height = image_size
    x1, y1, x2, y2 = family.box_to_image(answer.box, image_size)
    notes = []
    if x1 > x2 or y1 > y2:
        notes.append("inverted box corners swapped")
        x1, x2 = sorted((x1, x2))
        y1, y2 = sorted((y1, y2))
    clamped = (min(max(x1, 0.0), width), min(max(y1, 0.0), height),
               min(max(x2, 0.0), width), min(max(y2, 0.0), height))
    if clamped != (x1, y1, x2, y2):
        notes.append("box clamped into the image")
    if clamped[2] <= clamped[0] or clamped[3] <= clamped[1]:
        return BoxAction(None, tuple(notes), f"box {list(answer.box)} has no area inside the image")
    points = tuple(_click(point, family, image_size, f"point {number}", notes)
                   for number, point in enumerate(answer.points, 1))
    return BoxAction(clamped, tuple(notes), points=points)


def answer_clicks(answer: ParsedAnswer, family: ModelFamily, image_size: tuple[int, int]) -> ClickAction:
    """Map the answer's clicks to image pixels and clamp each onto the image (pixel centres 0..size-1)."""
    notes: list[str] = []
    positive = _click(answer.positive, family, image_size, "positive", notes)
    negative = _click(answer.negative, family, image_size, "negative", notes)
    return ClickAction(positive, negative, tuple(notes))


def _click(point, family: ModelFamily, image_size: tuple[int, int], name: str, notes: list[str]) -> Point | None:
    if point is None:
        return None
    x, y = family.to_image(point, image_size)
    clamped = (min(max(x, 0.0), image_size[0] - 1.0), min(max(y, 0.0), image_size[1] - 1.0))
    if clamped != (x, y):
        notes.append(f"{name} point clamped into the image")
    return clamped
