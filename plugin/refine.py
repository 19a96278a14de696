"""A person corrects the agent's mask with clicks, and the agent continues from there: `refine` and
`continue_agent`, shared by the SDK and the App's refine panel.

    sam_veteran.refine(sample, [(120, 80, True), (40, 60, False)])    # two clicks after the run's last step
    sam_veteran.continue_agent(sample, policy="oracle")               # the policy takes over from there

Each click is one new step marked ``source="human"``, appended to the run's own label fields (`labels.py`); the
agent's steps that follow are marked ``source="agent"``. The segmenter refines exactly as the agent does: from
the step's box, all clicks so far and the previous step's low-resolution mask logits. The labels store masks, not
logits, so the logits of the step a correction starts from are recomputed by replaying that step's path (the box,
then each step's clicks, each call fed the previous call's logits) on the segmenter: deterministic, one image
embedding (cached per sample) and a decoder call per step. A replay that does not reproduce the stored mask
(IoU below `REPLAY_MIN_IOU`) means the segmenter is not the one the run used, and is refused with that IoU.

Runs do not record which models made them, so the models default to `default_models()`: the environment
variables `SAM_VETERAN_REFINE_SEGMENTER` and `SAM_VETERAN_REFINE_POLICY`, else the shipped mini segmenter and
the first available of `REFINE_POLICIES`. Models load once per process (`refiner_for`, `policy_for`).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Sequence

import numpy as np

from .agent import Action, Agent, AgentConfig, AgentInput, EndReason, Step, Trace, load_policy, load_segmenter
from .agent.images import load_image
from .agent.policy import Policy
from .agent.segmenters import Segmenter, SegmentResult
from .agent.shipped import SHIPPED
from .defaults import (DEFAULT_GT_FIELD, DEFAULT_LABEL_FIELD, DEFAULT_PROMPT_FIELD, REFINE_POLICIES,
                       REFINE_SEGMENTER)
from .labels import (AGENT, HUMAN, AgentFields, mask_label, placed_crop, step_base, step_detection, step_keypoints,
                     step_source)

REPLAY_MIN_IOU = 0.9  # a replayed mask this close to the stored one: the same segmenter
SEGMENTER_ENV, POLICY_ENV = "SAM_VETERAN_REFINE_SEGMENTER", "SAM_VETERAN_REFINE_POLICY"
EMBEDDINGS_KEPT = 16  # image embeddings a `Refiner` keeps, most recently used


def default_models() -> tuple[str, str]:
    """(policy, segmenter) specs used when none is given (see the module docstring)."""
    available = [spec for spec in REFINE_POLICIES if spec not in SHIPPED or SHIPPED[spec]["policy"].exists()]
    return os.environ.get(POLICY_ENV) or available[0], os.environ.get(SEGMENTER_ENV) or REFINE_SEGMENTER


@dataclass
class StoredStep:
    """One stored step read back: the agent's `Step` record (full-size mask, pixel box and clicks), who made it
    and the step it refined (None for the box)."""

    step: Step
    source: str
    base: int | None


@dataclass
class History:
    """A sample's steps under one label field, by step index, in the order they were stored."""

    sample_id: str
    filepath: str
    query: str
    image_size: tuple[int, int]  # (width, height)
    steps: dict[int, StoredStep]
    labels: dict[str, Any]  # the stored labels, keyed mask / steps / clicks

    @property
    def last(self) -> int:
        """The step stored last: where a correction starts unless told otherwise."""
        return next(reversed(self.steps))

    @property
    def next_index(self) -> int:
        return max(self.steps) + 1

    def path(self, index: int) -> list[StoredStep]:
        """The steps from the box to `index`, following each step's `base`."""
        if index not in self.steps:
            raise ValueError(f"sample {self.sample_id}: no step {index} (steps: {sorted(self.steps)})")
        path = [self.steps[index]]
        while path[-1].base is not None:
            path.append(self.steps[path[-1].base])
        return path[::-1]


def read_history(sample, label_field: str = DEFAULT_LABEL_FIELD,
                 prompt_field: str = DEFAULT_PROMPT_FIELD) -> History:
    """The steps and clicks of `sample` under `label_field`; a sample without steps raises ValueError naming it."""
    run = AgentFields.of(label_field)
    where = f"sample {sample.id} ({sample.filepath})"
    steps_label = sample[run.steps] if sample.has_field(run.steps) else None
    if steps_label is None or not steps_label.detections:
        raise ValueError(f"{where} has no steps in '{run.steps}': run the agent on it first")
    metadata = sample.metadata
    if metadata is None or not metadata.width:
        raise ValueError(f"{where} has no image size: compute its metadata first (dataset.compute_metadata())")
    size = (metadata.width, metadata.height)
    clicks_label = sample[run.clicks] if sample.has_field(run.clicks) else None
    clicks: dict[int, list] = {}
    for keypoint in clicks_label.keypoints if clicks_label is not None else []:
        x, y = keypoint.points[0]
        clicks.setdefault(keypoint["step"], []).append(((x * size[0], y * size[1]), keypoint.label == "positive"))
    steps: dict[int, StoredStep] = {}
    previous = None
    for detection in steps_label.detections:
        step = _stored_step(detection, clicks.get(detection["step"], []), size, where)
        base = step_base(detection, previous) if step.index != 0 else None
        steps[step.index] = StoredStep(step, step_source(detection), base)
        previous = step.index
    query = sample[prompt_field] if sample.has_field(prompt_field) else None
    return History(sample.id, sample.filepath, query if isinstance(query, str) else "", size, steps,
                   {key: sample[name] if sample.has_field(name) else None for key, name in run.fields().items()})


def _stored_step(detection, clicks: list, size: tuple[int, int], where: str) -> Step:
    width, height = size
    prompt_box, action = getattr(detection, "prompt_box", None), getattr(detection, "action", None)
    if detection.mask is None or prompt_box is None:
        raise ValueError(f"{where}: stored step {detection['step']} has no mask or no prompt box")
    full = np.zeros((height, width), dtype=bool)
    crop, x, y = placed_crop(np.asarray(detection.mask, dtype=bool), detection.bounding_box, width, height)
    full[y : y + crop.shape[0], x : x + crop.shape[1]] = crop
    bx, by, bw, bh = prompt_box
    step = Step(index=int(detection["step"]), text="", action=Action(action) if action else None,
                reasoning=getattr(detection, "reasoning", None) or "", mask=full, score=detection.confidence,
                box=(bx * width, by * height, (bx + bw) * width, (by + bh) * height),
                notes=list(getattr(detection, "notes", None) or []))
    if step.index == 0:
        step.box_points = [point for point, positive in clicks if positive]
    else:
        step.positive = next((point for point, positive in clicks if positive), None)
        step.negative = next((point for point, positive in clicks if not positive), None)
    return step


def step_clicks(step: Step) -> list[tuple[tuple[float, float], bool]]:
    """A step's clicks as (point, positive), in the order the agent gave them to the segmenter."""
    return [(point, positive) for _, point, positive in Trace("", (0, 0), [step]).clicks]


class Refiner:
    """A segmenter and the image embeddings of the samples it refined lately (one per App server process)."""

    def __init__(self, segmenter: Segmenter, keep: int = EMBEDDINGS_KEPT) -> None:
        self.segmenter = segmenter
        self.keep = keep
        self._embeddings: OrderedDict[tuple[str, str], tuple[np.ndarray, Any]] = OrderedDict()

    def image_and_embedding(self, history: History) -> tuple[np.ndarray, Any]:
        """The sample's image (EXIF applied, as the agent read it) and its embedding, encoded once."""
        key = (history.sample_id, history.filepath)
        if key not in self._embeddings:
            image = load_image(history.filepath)
            self._embeddings[key] = (image, self.segmenter.encode([image])[0])
            while len(self._embeddings) > self.keep:
                self._embeddings.popitem(last=False)
        self._embeddings.move_to_end(key)
        return self._embeddings[key]

    def start(self, history: History, from_step: int | None = None) -> "Correction":
        """The state after `from_step` (default: the last stored step), its logits recomputed by replay."""
        index = history.last if from_step is None else from_step
        path = [stored.step for stored in history.path(index)]
        image, embedding = self.image_and_embedding(history)
        correction = Correction(history, self.segmenter, image, embedding, index, path)
        correction.replay()
        return correction


@dataclass
class Correction:
    """A correction in progress: the path to the step it starts from, then the new steps."""

    history: History
    segmenter: Segmenter
    image: np.ndarray
    embedding: Any
    from_step: int
    path: list[Step]
    new: list[Step] = field(default_factory=list)
    points: list[tuple[float, float]] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    logits: Any = None
    end_reason: EndReason | None = None  # set when the agent continued: why it ended
    error: str | None = None

    def replay(self) -> None:
        """Recompute the segmenter's logits along `path`; refuse a segmenter that does not reproduce its mask."""
        result: SegmentResult | None = None
        self.points, self.labels, self.logits = [], [], None
        for step in self.path:
            for point, positive in step_clicks(step):
                self.points.append(point)
                self.labels.append(int(positive))
            result = self.segmenter.segment(self.embedding, step.box, self.points, self.labels, self.logits)
            self.logits = result.logits
        stored = self.path[-1].mask
        union = np.count_nonzero(stored | result.mask)
        iou = np.count_nonzero(stored & result.mask) / union if union else 1.0
        if iou < REPLAY_MIN_IOU:
            raise ValueError(f"sample {self.history.sample_id}: this segmenter does not reproduce the stored mask of "
                             f"step {self.from_step} (IoU {iou:.3f} < {REPLAY_MIN_IOU}): give the segmenter the run "
                             "used (segmenter=..., or $" + SEGMENTER_ENV + " for the App)")

    @property
    def trace(self) -> Trace:
        """The path and the new steps, as one agent trace."""
        return Trace(self.history.query, self.history.image_size, self.path + self.new, self.end_reason, self.error)

    @property
    def mask(self) -> np.ndarray:
        return self.trace.mask

    def click(self, x: float, y: float, positive: bool) -> Step:
        """One person's click, refined at once: a new step with the segmenter's mask."""
        width, height = self.history.image_size
        if not (0 <= x < width and 0 <= y < height):
            raise ValueError(f"sample {self.history.sample_id}: click ({x:g}, {y:g}) is outside the "
                             f"{width}x{height} image")
        point = (float(x), float(y))
        step = Step(index=self.history.next_index + len(self.new), text="", box=self.path[0].box,
                    action=Action.POSITIVE if positive else Action.NEGATIVE,
                    positive=point if positive else None, negative=None if positive else point)
        self.points.append(point)
        self.labels.append(int(positive))
        result = self.segmenter.segment(self.embedding, step.box, self.points, self.labels, self.logits)
        step.mask, step.score, self.logits = result.mask, result.score, result.logits
        self.new.append(step)
        return step

    def to_labels(self, source: str) -> dict:
        """The stored labels with the new mask steps appended as `source` steps, and the latest mask."""
        import fiftyone as fo

        size = self.history.image_size
        detections = list(self.history.labels["steps"].detections)
        old_clicks = self.history.labels["clicks"]
        keypoints = list(old_clicks.keypoints) if old_clicks is not None else []
        base = self.from_step
        for step in (s for s in self.new if s.mask is not None):
            detections.append(step_detection(step, size, source=source, base_step=base))
            keypoints += step_keypoints(step, size)
            base = step.index
        end_reason = HUMAN if source == HUMAN else None
        return {"mask": mask_label(self.trace, len(detections), end_reason=end_reason),
                "steps": fo.Detections(detections=detections), "clicks": fo.Keypoints(keypoints=keypoints)}


@lru_cache(maxsize=4)
def refiner_for(segmenter: str, device: str | None = None) -> Refiner:
    """The `Refiner` of a segmenter spec, loaded once per process."""
    return Refiner(load_segmenter(segmenter, device=device))


@lru_cache(maxsize=4)
def policy_for(policy: str, device: str | None = None) -> Policy:
    """The policy of a spec, loaded once per process."""
    return load_policy(policy, device=device)


def _refiner(segmenter: str | Segmenter | Refiner | None) -> Refiner:
    if isinstance(segmenter, Refiner):
        return segmenter
    if segmenter is None or isinstance(segmenter, (str, os.PathLike)):
        return refiner_for(str(segmenter or default_models()[1]))
    return Refiner(segmenter)


def _write(sample, label_field: str, labels: dict) -> None:
    for key, name in AgentFields.of(label_field).fields().items():
        sample[name] = labels[key]
    sample.save()


def refine(sample, clicks: Sequence[tuple[float, float, bool]], label_field: str = DEFAULT_LABEL_FIELD,
           segmenter: str | Segmenter | Refiner | None = None, save: bool = True,
           from_step: int | None = None) -> Correction:
    """Apply a person's `clicks` ((x, y, positive) in pixels of the original image) after the run's last step (or
    after `from_step`), one new ``source="human"`` step each, refined as the agent refines; `save` writes them to
    the sample's `label_field` labels. `segmenter`: a spec, a loaded segmenter, or None for `default_models()`."""
    correction = _refiner(segmenter).start(read_history(sample, label_field), from_step)
    for x, y, positive in clicks:
        correction.click(x, y, bool(positive))
    if save and correction.new:
        _write(sample, label_field, correction.to_labels(HUMAN))
    return correction


def continue_agent(sample, label_field: str = DEFAULT_LABEL_FIELD, policy: str | Policy | None = None,
                   segmenter: str | Segmenter | Refiner | None = None, max_steps: int | None = None,
                   from_step: int | None = None, save: bool = True, prompt_field: str = DEFAULT_PROMPT_FIELD,
                   gt_field: str = DEFAULT_GT_FIELD) -> Correction:
    """Let the policy take over from the last stored step (or `from_step`): up to `max_steps` more refinement
    steps (None: the policy family's default) through the agent's own loop and prompts, appended as
    ``source="agent"`` steps. The simulated user (``policy="oracle"``) reads the ground truth in `gt_field`."""
    from .model import ground_truth_mask

    refiner = _refiner(segmenter)
    history = read_history(sample, label_field, prompt_field)
    if not history.query.strip():
        raise ValueError(f"sample {sample.id} ({sample.filepath}): no query in field '{prompt_field}' for the policy")
    loaded = policy if policy is not None and not isinstance(policy, (str, os.PathLike)) else \
        policy_for(str(policy or default_models()[0]))
    truth = None
    if getattr(loaded, "needs_ground_truth", False):
        truth = ground_truth_mask(sample[gt_field] if sample.has_field(gt_field) else None, gt_field, sample.filepath)
    correction = refiner.start(history, from_step)
    agent = Agent(loaded, refiner.segmenter, AgentConfig(max_steps=max_steps))
    trace = agent.resume(AgentInput(correction.image, history.query, truth), correction.trace, correction.logits,
                         correction.embedding, first_index=history.next_index)
    correction.new = trace.steps[len(correction.path):]
    correction.end_reason, correction.error = trace.end_reason, trace.error
    if save:
        _write(sample, label_field, correction.to_labels(AGENT))
    return correction
