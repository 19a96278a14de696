"""Traces as FiftyOne labels: the final mask, every step, every click.

For a label field ``veteran`` a trace becomes three fields:
- ``veteran_mask``: `fo.Segmentation` at image size (0 background, 1 object) with `num_steps`, `stopped_by_agent`,
  `end_reason` and `error`;
- ``veteran_steps``: `fo.Detections`, one per mask-producing step (`step`, `action`, `reasoning`, `confidence` = the
  segmenter's predicted IoU, `prompt_box`); the detection box covers the prompt box and the mask together, so
  the mask is never cropped;
- ``veteran_clicks``: `fo.Keypoints`, one per click, labelled ``positive`` or ``negative``, with `step`.
Coordinates are relative ([0, 1]) as FiftyOne expects.

Steps a person adds later (`refine.py`: the App's refine panel, `sam_veteran.refine`) and the agent's steps that
continue from them (`sam_veteran.continue_agent`) are appended to the same two fields with two more attributes:
- `source`: ``"human"`` for a person's click (one step per click, `action` ``positive`` or ``negative``, no
  reasoning), ``"agent"`` for a continuing agent's step; the run's original steps carry none and count as the agent's;
- `base_step`: the step whose state (box, clicks, low-resolution mask) it refined; absent means the step before it.
  A correction that starts from an earlier step (reset in the panel) therefore branches off the history, which
  keeps every earlier step.
Their clicks are keypoints like the agent's, with the step they belong to. The mask label then holds the latest
mask; after a person's correction its `end_reason` is ``"human"`` and `stopped_by_agent` is false.

A sample the agent could not run on (unreadable image, missing query, an exception) gets `failure_labels`: a mask
label with no mask, ``end_reason="invalid_input"`` and the reason in `error`, and no steps or clicks. Every other
sample "has results" (`has_results`): re-runs skip it unless told to overwrite, and retry the failed ones.

`AgentFields` is the one spelling of that schema (field names, the attributes read back, the end reasons); every
reader (evaluation, triage, the operators, the demo) goes through it.
"""

from __future__ import annotations

from dataclasses import dataclass

import fiftyone as fo
import numpy as np
from fiftyone import ViewField as F

from .agent.trace import EndReason, Step, Trace

LABEL_KEYS = ("mask", "steps", "clicks")
LABEL_TYPES = {"mask": fo.Segmentation, "steps": fo.Detections, "clicks": fo.Keypoints}
FAILURES = (EndReason.PARSE_FAILURE, EndReason.INVALID_INPUT)  # the traces that end without the agent's own mask
HUMAN = "human"  # `source` of a person's step, and the mask's `end_reason` after a person's correction
AGENT = "agent"  # `source` of the agent's steps appended after a correction (the run's own steps carry none)


@dataclass(frozen=True)
class AgentFields:
    """The sample fields of one agent run, named by its label field (``veteran``)."""

    name: str

    @property
    def mask(self) -> str:
        return f"{self.name}_mask"

    @property
    def steps(self) -> str:
        return f"{self.name}_steps"

    @property
    def clicks(self) -> str:
        return f"{self.name}_clicks"

    @property
    def end_reason(self) -> str:
        """The path of the mask label's `EndReason` value, for `values()` and view expressions."""
        return f"{self.mask}.end_reason"

    @property
    def stopped_by_agent(self) -> str:
        return f"{self.mask}.stopped_by_agent"

    def fields(self) -> dict[str, str]:
        """The sample field of each label key: ``{"mask": "veteran_mask", ...}``."""
        return {key: f"{self.name}_{key}" for key in LABEL_KEYS}

    @classmethod
    def of(cls, field: str) -> "AgentFields":
        """The run a field name belongs to: ``veteran`` and ``veteran_mask`` both name ``veteran``."""
        return cls(field[: -len("_mask")] if field.endswith("_mask") else field)

    def exists_on(self, samples) -> bool:
        """Whether `samples` hold this run: a Segmentation mask field beside a Detections steps field."""
        schema = samples.get_field_schema()
        return (issubclass(_document_type(schema.get(self.mask)), fo.Segmentation)
                and issubclass(_document_type(schema.get(self.steps)), fo.Detections))


def agent_runs(samples) -> list[str]:
    """The label-field names of the agent runs on `samples` (``veteran`` for ``veteran_mask`` + ``veteran_steps``)."""
    return [name[: -len("_mask")] for name in samples.get_field_schema()
            if name.endswith("_mask") and AgentFields.of(name).exists_on(samples)]


def _document_type(field) -> type:
    return getattr(field, "document_type", None) or object


def label_fields(label_field: str) -> dict[str, str]:
    """The sample field of each label key: ``{"mask": "veteran_mask", ...}`` for ``veteran``."""
    return AgentFields(label_field).fields()


def has_results(label_field: str):
    """A view expression true for samples the agent already ran on (a failure recorded there does not count)."""
    run = AgentFields(label_field)
    return F(run.mask).exists() & (F(run.end_reason) != EndReason.INVALID_INPUT.value)


def failure_labels(error: str) -> dict[str, fo.Label]:
    """The labels of a sample the agent could not run on: the reason, no mask, no steps, no clicks."""
    return {"mask": fo.Segmentation(num_steps=0, stopped_by_agent=False, end_reason=EndReason.INVALID_INPUT.value,
                                    error=error),
            "steps": fo.Detections(detections=[]), "clicks": fo.Keypoints(keypoints=[])}


def trace_to_labels(trace: Trace) -> dict[str, fo.Label]:
    """The three labels of one trace, keyed ``mask``, ``steps`` and ``clicks``."""
    if trace.end_reason is EndReason.INVALID_INPUT:
        return failure_labels(trace.error or "invalid input")
    steps = [step_detection(step, trace.image_size) for step in trace.mask_steps]
    clicks = [keypoint for step in trace.mask_steps for keypoint in step_keypoints(step, trace.image_size)]
    return {"mask": mask_label(trace, len(steps)), "steps": fo.Detections(detections=steps),
            "clicks": fo.Keypoints(keypoints=clicks)}


def mask_label(trace: Trace, num_steps: int, end_reason: str | None = None) -> fo.Segmentation:
    """The mask label of a trace: its final mask, `num_steps` masks produced, why it ended (`end_reason` overrides
    the trace's own, e.g. `HUMAN`)."""
    reason = end_reason or (trace.end_reason.value if trace.end_reason else None)
    return fo.Segmentation(mask=trace.mask.astype(np.uint8), num_steps=num_steps,
                           stopped_by_agent=reason == EndReason.AGENT_STOPPED.value, end_reason=reason,
                           error=trace.error)


def step_detection(step: Step, image_size: tuple[int, int], **attributes) -> fo.Detection:
    """One mask-producing step as a detection (see the module docstring); `attributes` such as `source` are added."""
    width, height = image_size
    x1, y1, x2, y2 = _union_box(step.box, step.mask)
    return fo.Detection(
        label=f"step {step.index}",
        bounding_box=[x1 / width, y1 / height, (x2 - x1) / width, (y2 - y1) / height],
        mask=step.mask[y1:y2, x1:x2].copy(),
        confidence=step.score,
        step=step.index,
        action=step.action.value if step.action else None,
        reasoning=step.reasoning,
        prompt_box=_relative_box(step.box, width, height),
        notes=list(step.notes),
        **attributes,
    )


def step_keypoints(step: Step, image_size: tuple[int, int]) -> list[fo.Keypoint]:
    """The clicks of one step, in the order the segmenter received them."""
    width, height = image_size
    return [fo.Keypoint(label="positive" if positive else "negative", points=[(x / width, y / height)], step=index)
            for index, (x, y), positive in Trace("", image_size, [step]).clicks]


def step_source(detection: fo.Detection) -> str:
    """Who made a stored step: `HUMAN` or `AGENT` (the run's own steps carry no `source`)."""
    return detection.get_field("source") if detection.has_field("source") and detection["source"] else AGENT


def step_base(detection: fo.Detection, previous: int | None) -> int | None:
    """The step a stored step refined (`base_step`), else `previous`, the step stored before it."""
    base = detection.get_field("base_step") if detection.has_field("base_step") else None
    return previous if base is None else int(base)


def placed_crop(mask: np.ndarray, bounding_box, width: int, height: int) -> tuple[np.ndarray, int, int]:
    """A step detection's mask and its top-left pixel (x, y) in the image, clipped to the image: the inverse of
    how `trace_to_labels` stores a step, shared by everything that reads steps back (evaluation, triage)."""
    x, y = int(round(bounding_box[0] * width)), int(round(bounding_box[1] * height))
    return mask[: max(height - y, 0), : max(width - x, 0)], x, y


def _union_box(box, mask: np.ndarray) -> tuple[int, int, int, int]:
    """Integer pixel box (x1, y1, x2, y2) that holds the prompt box and every pixel of the mask."""
    height, width = mask.shape
    x1, y1 = int(np.floor(box[0])), int(np.floor(box[1]))
    x2, y2 = int(np.ceil(box[2])), int(np.ceil(box[3]))
    ys, xs = np.nonzero(mask)
    if len(xs):
        x1, y1 = min(x1, int(xs.min())), min(y1, int(ys.min()))
        x2, y2 = max(x2, int(xs.max()) + 1), max(y2, int(ys.max()) + 1)
    return max(x1, 0), max(y1, 0), min(max(x2, x1 + 1), width), min(max(y2, y1 + 1), height)


def _relative_box(box, width: int, height: int) -> list[float]:
    return [box[0] / width, box[1] / height, (box[2] - box[0]) / width, (box[3] - box[1]) / height]
