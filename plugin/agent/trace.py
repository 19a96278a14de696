"""Records of what the agent did: one `Step` per policy call, one `Trace` per sample.

Everything here is plain Python and numpy so the SDK, the operators and the trainer can all read traces
without importing FiftyOne or torch. Coordinates are always in pixels of the original image.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np


class Action(str, enum.Enum):
    """What the policy asked for at one step."""

    BOX = "box"
    POSITIVE_AND_NEGATIVE = "positive+negative"
    POSITIVE = "positive"
    NEGATIVE = "negative"
    STOP = "stop"


class EndReason(str, enum.Enum):
    """Why a trace ended."""

    AGENT_STOPPED = "agent_stopped"
    STEP_CAP = "step_cap"
    PARSE_FAILURE = "parse_failure"
    INVALID_INPUT = "invalid_input"


@dataclass
class Step:
    """One policy call and, unless the policy stopped, the segmenter's answer to it.

    `index` 0 is the grounding step (a box, with positive `box_points` for the peers' families that give clicks
    with their box); 1..N are refinement steps (clicks or stop). `mask` is a boolean
    array at original image size, `score` the segmenter's own predicted IoU for it. `notes` lists the repairs
    made to the answer (a clamped click, a swapped box corner, a retried parse) so nothing is silently changed.
    """

    index: int
    text: str
    action: Action | None = None
    reasoning: str = ""
    box: tuple[float, float, float, float] | None = None
    positive: tuple[float, float] | None = None
    negative: tuple[float, float] | None = None
    box_points: list[tuple[float, float]] = field(default_factory=list)
    mask: np.ndarray | None = None
    score: float | None = None
    notes: list[str] = field(default_factory=list)
    error: str | None = None


@dataclass
class Trace:
    """Everything the agent did for one (image, query) item."""

    query: str
    image_size: tuple[int, int]  # (width, height)
    steps: list[Step] = field(default_factory=list)
    end_reason: EndReason | None = None
    error: str | None = None

    @property
    def mask(self) -> np.ndarray:
        """The final mask: the last step that produced one, else an empty mask."""
        for step in reversed(self.steps):
            if step.mask is not None:
                return step.mask
        width, height = self.image_size
        return np.zeros((height, width), dtype=bool)

    @property
    def box(self) -> tuple[float, float, float, float] | None:
        """The grounding box of step 0, if the policy gave a usable one."""
        return self.steps[0].box if self.steps else None

    @property
    def mask_steps(self) -> list[Step]:
        """The steps that produced a mask, in order (the grounding step, then each refinement)."""
        return [step for step in self.steps if step.mask is not None]

    @property
    def num_steps(self) -> int:
        """How many masks the agent produced: 1 for the box alone, plus one per refinement."""
        return len(self.mask_steps)

    @property
    def stopped_by_agent(self) -> bool:
        return self.end_reason is EndReason.AGENT_STOPPED

    @property
    def clicks(self) -> list[tuple[int, tuple[float, float], bool]]:
        """Every click so far as (step index, (x, y), is_positive), in the order they were made."""
        out = []
        for step in self.steps:
            if step.mask is None:
                continue
            out += [(step.index, point, True) for point in step.box_points]
            if step.positive is not None:
                out.append((step.index, step.positive, True))
            if step.negative is not None:
                out.append((step.index, step.negative, False))
        return out

    @property
    def ended(self) -> bool:
        return self.end_reason is not None
