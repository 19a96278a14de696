"""The agent loop: box first, then clicks until the policy says stop or the step cap is reached.

All samples of a batch advance together: one batched policy call per step for every unfinished sample, one
batched image-encoder pass per batch (the embedding is reused by every refinement). Step 0 does not need the
segmenter until the policy has answered, so the image encoder runs on a worker thread (on its own CUDA stream on a
GPU) while the policy generates step 0 (`AgentConfig.overlap_encode`). Answers are repaired where
the meaning is clear and recorded in the step's notes (`actions`: inverted box corners swapped, coordinates
clamped into the image); an answer that cannot be read is retried once with sampling, and if it still cannot be read the trace
ends with `EndReason.PARSE_FAILURE`, keeping the last good mask. One bad sample never stops the batch.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, Sequence

import numpy as np

from ..defaults import DEFAULT_MAX_STEPS, DEFAULT_POLICY, DEFAULT_SEGMENTER
from .actions import answer_box, answer_clicks
from .images import as_rgb
from .overlay import OverlayStyle, policy_view
from .parsing import AnswerError, ParsedAnswer, parse_grounding, parse_refinement
from .policy import Policy, PolicyRequest, load_policy
from .segmenters import Segmenter, load_segmenter
from .trace import Action, EndReason, Step, Trace


@dataclass
class AgentConfig:
    """How the loop runs. `input_size` overrides the family's policy image size when given; `max_steps` None means
    the family's own default (3; 0 for the peers' families, which were not trained to refine). `overlap_encode`
    runs the segmenter's image encoder beside the policy's step 0 instead of before it (same masks)."""

    max_steps: int | None = None
    parse_retries: int = 1
    input_size: tuple[int, int] | None = None
    overlay: OverlayStyle = field(default_factory=OverlayStyle)
    overlap_encode: bool = True


@dataclass
class AgentInput:
    """One item: an image (H, W[, C] array of any dtype) and the query about it; `ground_truth` (H, W: 0
    background, 255 ignore, else target) only for policies that read it (the simulated user)."""

    image: np.ndarray
    query: str
    ground_truth: np.ndarray | None = None


@dataclass
class _State:
    """What one unfinished sample carries between steps."""

    trace: Trace
    image: np.ndarray
    ground_truth: np.ndarray | None = None
    embedding: Any = None  # the segmenter's own embedding of the image
    view: Any = None  # the image resized for the policy, reused by every step (PIL image)
    box: tuple[float, float, float, float] | None = None
    points: list[tuple[float, float]] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    logits: object = None


class Agent:
    """Runs a policy and a segmenter together on batches of (image, query) items."""

    def __init__(self, policy: Policy, segmenter: Segmenter, config: AgentConfig | None = None) -> None:
        self.policy = policy
        self.segmenter = segmenter
        self.config = config or AgentConfig()
        family = policy.family
        self.family = family.with_input_size(self.config.input_size) if self.config.input_size else family
        self.max_steps = self.config.max_steps if self.config.max_steps is not None else self.family.max_steps

    @classmethod
    def from_pretrained(cls, policy: str = DEFAULT_POLICY, segmenter: str = DEFAULT_SEGMENTER,
                        config: AgentConfig | None = None, device: str | None = None,
                        trust_remote_code: bool = False, **policy_kwargs) -> "Agent":
        """Load a policy (hub id, folder, ``"mini"`` or ``"oracle"``, see `load_policy`) and a segmenter: a SAM
        checkpoint path or model type, ``"mini"``, or a SAM 2 folder or hub id (see `load_segmenter`)."""
        return cls(load_policy(policy, device=device, trust_remote_code=trust_remote_code, **policy_kwargs),
                   load_segmenter(segmenter, device=device), config)

    def run(self, items: Sequence[AgentInput]) -> list[Trace]:
        """One trace per item, in order. Items with an unusable image or query end at once with the reason."""
        states: list[_State] = []
        traces: list[Trace] = []
        for item in items:
            trace, state = self._start(item)
            traces.append(trace)
            if state is not None:
                states.append(state)
        images = [s.image for s in states]
        if self.config.overlap_encode:
            with ThreadPoolExecutor(max_workers=1) as worker:
                self._ground(states, worker.submit(encode_beside, self.segmenter, images).result)
        else:
            embeddings = self.segmenter.encode(images)
            self._ground(states, lambda: embeddings)
        for index in range(1, self.max_steps + 1):
            states = [s for s in states if not s.trace.ended]
            if not states:
                break
            self._refine(states, index)
        for state in states:
            if not state.trace.ended:
                state.trace.end_reason = EndReason.STEP_CAP
        return traces

    def resume(self, item: AgentInput, trace: Trace, logits, embedding: Any = None, steps: int | None = None,
               first_index: int | None = None) -> Trace:
        """Continue `trace` (steps already taken, a person's corrections among them) with up to `steps` (default
        `max_steps`) refinement steps from its last mask, through the same prompts, parsing and segmenter calls as
        `run`. `logits` are the segmenter's low-resolution logits of that mask; new steps are numbered from
        `first_index` (default: after the trace's last step)."""
        image = as_rgb(item.image)
        clicks = trace.clicks
        state = _State(trace=trace, image=image, ground_truth=item.ground_truth,
                       embedding=embedding if embedding is not None else self.segmenter.encode([image])[0],
                       view=policy_view(image, self.family.input_size), box=trace.box,
                       points=[point for _, point, _ in clicks], labels=[int(positive) for _, _, positive in clicks],
                       logits=logits)
        trace.end_reason = trace.error = None
        start = trace.steps[-1].index + 1 if first_index is None else first_index
        for index in range(start, start + (self.max_steps if steps is None else steps)):
            if trace.ended:
                break
            self._refine([state], index)
        if not trace.ended:
            trace.end_reason = EndReason.STEP_CAP
        return trace

    def _start(self, item: AgentInput) -> tuple[Trace, _State | None]:
        query = item.query if isinstance(item.query, str) else ""
        try:
            image = as_rgb(item.image)
        except ValueError as exc:
            return Trace(query=query, image_size=(0, 0), end_reason=EndReason.INVALID_INPUT, error=str(exc)), None
        trace = Trace(query=query, image_size=(image.shape[1], image.shape[0]))
        if not query.strip():
            trace.end_reason, trace.error = EndReason.INVALID_INPUT, "the query is empty"
            return trace, None
        ground_truth = item.ground_truth
        if getattr(self.policy, "needs_ground_truth", False):
            problem = None
            if ground_truth is None:
                problem = "no ground truth: the simulated user (policy='oracle') reads the sample's ground-truth mask"
            elif np.asarray(ground_truth).shape[:2] != image.shape[:2]:
                shape = np.asarray(ground_truth).shape
                problem = (f"the ground-truth mask is {shape[1] if len(shape) > 1 else '?'}x{shape[0]} but the image "
                           f"is {image.shape[1]}x{image.shape[0]}")
            if problem:
                trace.end_reason, trace.error = EndReason.INVALID_INPUT, problem
                return trace, None
        return trace, _State(trace=trace, image=image, ground_truth=ground_truth)

    def _ground(self, states: list[_State], embeddings: Callable[[], list]) -> None:
        """Step 0: a box (and, for the peers' families, positive clicks) from the query, then the segmenter's mask
        for it. An answer that finds nothing (VisionReasoner's ``[]``) ends the trace with no mask. `embeddings`
        gives the images' embeddings, waiting for them if they are still being encoded."""
        for state in states:
            state.view = policy_view(state.image, self.family.input_size)
        requests = [PolicyRequest(s.view, self.family.grounding_prompt(s.trace.query), ground_truth=s.ground_truth)
                    for s in states]
        parse = partial(parse_grounding, answer_format=self.family.answer_format)
        answers = self._ask(requests, parse)
        for state, embedding in zip(states, embeddings()):
            state.embedding = embedding
        for state, (text, answer, notes, error) in zip(states, answers):
            step = Step(index=0, text=text, notes=notes)
            state.trace.steps.append(step)
            if answer is not None and answer.box is None:
                step.reasoning, step.action = answer.reasoning, Action.STOP
                state.trace.end_reason = EndReason.AGENT_STOPPED
                continue
            if answer is not None:
                step.reasoning = answer.reasoning
                error = self._set_box(state, answer, step)
            if error is not None:
                step.error = state.trace.error = error
                state.trace.end_reason = EndReason.PARSE_FAILURE
                continue
            step.action = Action.BOX
            state.points += step.box_points
            state.labels += [1] * len(step.box_points)
            self._segment(state, step)

    def _refine(self, states: list[_State], index: int) -> None:
        """Step k: clicks (or stop) from the image with the current mask drawn over it."""
        requests = [PolicyRequest(policy_view(s.image, self.family.input_size, s.trace.mask, self.config.overlay,
                                              resized=s.view), self.family.refine_prompt(s.trace.query),
                                  mask=s.trace.mask, ground_truth=s.ground_truth)
                    for s in states]
        for state, (text, answer, notes, error) in zip(states, self._ask(requests, parse_refinement)):
            step = Step(index=index, text=text, notes=notes)
            state.trace.steps.append(step)
            if answer is None:
                step.error = state.trace.error = error
                state.trace.end_reason = EndReason.PARSE_FAILURE
                continue
            step.reasoning = answer.reasoning
            if answer.stop:
                step.action = Action.STOP
                state.trace.end_reason = EndReason.AGENT_STOPPED
                continue
            clicks = answer_clicks(answer, self.family, state.trace.image_size)
            step.notes.extend(clicks.notes)
            step.positive, step.negative, step.action = clicks.positive, clicks.negative, clicks.action
            state.points.extend(clicks.points)
            state.labels.extend(clicks.labels)
            self._segment(state, step)

    def _ask(self, requests: list[PolicyRequest], parse: Callable[[str], ParsedAnswer]):
        """Generate for all requests; retry the unreadable ones with sampling, `parse_retries` times."""
        texts = self.policy.generate(requests)
        results = [self._parse(text, parse) for text in texts]
        for attempt in range(self.config.parse_retries):
            failed = [i for i, r in enumerate(results) if r[1] is None]
            if not failed:
                break
            retried = self.policy.generate([requests[i] for i in failed], sample=True)
            for i, text in zip(failed, retried):
                first_error = results[i][3]
                text_, answer, notes, error = self._parse(text, parse)
                notes = [f"first answer unreadable ({first_error}); retry {attempt + 1} with sampling"] + notes
                results[i] = (text_, answer, notes, error)
        return results

    @staticmethod
    def _parse(text: str, parse: Callable[[str], ParsedAnswer]):
        try:
            answer = parse(text)
            return text, answer, list(answer.notes), None
        except AnswerError as exc:
            return text, None, [], str(exc)

    def _set_box(self, state: _State, answer: ParsedAnswer, step: Step) -> str | None:
        """The answer's box (and any clicks given with it) in image pixels, repaired (`answer_box`); an error if
        nothing is left of the box."""
        action = answer_box(answer, self.family, state.trace.image_size)
        step.notes.extend(action.notes)
        if action.error is None:
            state.box = step.box = action.box
            step.box_points = list(action.points)
        return action.error

    def _segment(self, state: _State, step: Step) -> None:
        result = self.segmenter.segment(state.embedding, state.box, state.points, state.labels, state.logits)
        step.box = state.box
        step.mask, step.score, state.logits = result.mask, result.score, result.logits


def encode_beside(segmenter: Segmenter, images: list[np.ndarray]) -> list:
    """`segmenter.encode` for a worker thread. On a GPU it runs on a stream of its own, so its kernels interleave
    with the policy's instead of queueing behind them; the stream is synchronised before the embeddings are handed
    over (the next use of the embeddings is then ordered after their making)."""
    import torch

    device = torch.device(getattr(segmenter, "device", "cpu"))
    if device.type != "cuda":
        return segmenter.encode(images)
    stream = torch.cuda.Stream(device)
    with torch.cuda.stream(stream):
        embeddings = segmenter.encode(images)
    stream.synchronize()
    return embeddings
