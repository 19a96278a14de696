"""`SamVeteranModel`: the agent as a FiftyOne model, for ``dataset.apply_model(...)``.

    model = SamVeteranModel(policy="Qwen/Qwen2.5-VL-7B-Instruct", segmenter="vit_h")
    dataset.apply_model(model, label_field="veteran", prompt_field="query", batch_size=8)

writes ``veteran_mask``, ``veteran_steps`` and ``veteran_clicks`` (see `labels.py`).

FiftyOne's default path reads every image of a batch with its own reader before the model sees any (no EXIF
orientation, and one unreadable file fails the whole batch). The model therefore implements `SupportsGetItem`:
FiftyOne's data loader hands each sample's file path and query to `SampleLoader`, which reads the image with
`load_image` and turns a bad file or a missing query into a failure recorded on that sample alone.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

import fiftyone.core.models as fom
import fiftyone.utils.torch as fout
import numpy as np

from .agent import Agent, AgentConfig, AgentInput, Trace
from .agent.images import ImageLoadError, load_image
from .defaults import DEFAULT_DECODING, DEFAULT_GT_FIELD, DEFAULT_POLICY, DEFAULT_SEGMENTER
from .labels import failure_labels, trace_to_labels

MAX_ASPECT_RATIO = 200  # Qwen-VL image processors refuse longer sides over 200x the shorter


@dataclass
class SampleInput:
    """One sample ready for the agent (`item`), or why it is not (`error`)."""

    item: AgentInput | None
    error: str | None = None


def ground_truth_mask(label, gt_field: str, filepath) -> np.ndarray:
    """The mask of a ground-truth `fo.Segmentation` (in the label or its `mask_path`), for a policy that reads it
    (the simulated user); a missing or unreadable one raises ValueError naming the field and the file."""
    if label is None:
        raise ValueError(f"no ground truth in field '{gt_field}': the simulated user (policy='oracle') reads the "
                         f"sample's ground-truth mask: {filepath}")
    try:
        mask = label.get_mask() if hasattr(label, "get_mask") else None
    except Exception as exc:  # any decoder error of one mask file fails that sample alone
        raise ValueError(f"the ground-truth mask in field '{gt_field}' cannot be read ({type(exc).__name__}: "
                         f"{exc}): {filepath}") from None
    if mask is None:
        raise ValueError(f"the ground truth in field '{gt_field}' has no mask: {filepath}")
    return np.asarray(mask)


def prepare_input(filepath: str | os.PathLike, query, prompt_field: str = "query",
                  image: np.ndarray | None = None, ground_truth=None, gt_field: str | None = None) -> SampleInput:
    """Check the query and read the image (EXIF applied) unless given; with `gt_field` (a policy that reads the
    ground truth), the sample's `ground_truth` label too. A problem becomes an error naming the file."""
    if not isinstance(query, str) or not query.strip():
        problem = "is missing" if query is None else f"is not usable text ({query!r})"
        return SampleInput(None, f"the query in field '{prompt_field}' {problem}: {filepath}")
    try:
        image = load_image(filepath) if image is None else image
    except ImageLoadError as exc:
        return SampleInput(None, str(exc))
    height, width = np.shape(image)[:2]
    if max(width, height) > MAX_ASPECT_RATIO * max(min(width, height), 1):
        return SampleInput(None, f"image is {width}x{height}: its aspect ratio is beyond {MAX_ASPECT_RATIO}:1, the "
                                 f"most the policy's image processor accepts: {filepath}")
    mask = None
    if gt_field is not None:
        try:
            mask = ground_truth_mask(ground_truth, gt_field, filepath)
        except ValueError as exc:
            return SampleInput(None, str(exc))
    return SampleInput(AgentInput(image, query, mask))


def run_inputs(agent: Agent, inputs: Sequence[SampleInput]) -> list[dict]:
    """Labels for each input, in order. If the batch raises, its samples run one by one so only the culprit fails."""
    ready = [i for i, sample in enumerate(inputs) if sample.item is not None]
    outcomes: dict[int, Trace | str] = {i: sample.error for i, sample in enumerate(inputs) if sample.item is None}
    try:
        outcomes.update(zip(ready, agent.run([inputs[i].item for i in ready])))
    except Exception:
        for i in ready:
            outcomes[i] = _run_one(agent, inputs[i].item)
    return [failure_labels(outcomes[i]) if isinstance(outcomes[i], str) else trace_to_labels(outcomes[i])
            for i in range(len(inputs))]


def _run_one(agent: Agent, item: AgentInput) -> Trace | str:
    try:
        return agent.run([item])[0]
    except Exception as exc:  # anything one sample raises is recorded on it; the run goes on
        return f"the agent failed on this sample: {type(exc).__name__}: {exc}"


class SampleLoader(fout.GetItem):
    """FiftyOne data-loader item: a sample's file path and query -> `SampleInput` (never raises for one sample)."""

    def __init__(self, field_mapping: dict | None = None, prompt_field: str = "query",
                 gt_field: str | None = None) -> None:
        self.gt_field = gt_field
        super().__init__(field_mapping=field_mapping)
        self.prompt_field = prompt_field

    @property
    def required_keys(self) -> list[str]:
        return ["filepath", "query"] + (["ground_truth"] if self.gt_field else [])

    def __call__(self, d: dict) -> SampleInput:
        return prepare_input(d["filepath"], d.get("query"), self.prompt_field, ground_truth=d.get("ground_truth"),
                             gt_field=self.gt_field)


class SamVeteranModel(fom.Model, fom.SamplesMixin, fom.SupportsGetItem, fom.TorchModelMixin):
    """The SAM-Veteran agent behind FiftyOne's model interface; reads each sample's query from `prompt_field`.

    `max_steps` None is the policy family's default; ``family=`` (e.g. ``"seg_zero"``) and other `policy_kwargs`
    go to `TransformersPolicy.from_pretrained`. ``policy="oracle"`` (the simulated user) reads each sample's
    ground truth from `gt_field`; ``"mini"`` names the shipped mini models. `decoding` (``"eager"`` or
    ``"static"``, `defaults.DECODINGS`) is how the policy generates (`agent/policy.py`)."""

    def __init__(self, policy: str = DEFAULT_POLICY, segmenter: str = DEFAULT_SEGMENTER, max_steps: int | None = None,
                 device: str | None = None, agent: Agent | None = None, gt_field: str = DEFAULT_GT_FIELD,
                 decoding: str = DEFAULT_DECODING, **policy_kwargs) -> None:
        fom.SamplesMixin.__init__(self)
        self._gt_field = gt_field
        self.agent = agent or Agent.from_pretrained(policy, segmenter, AgentConfig(max_steps=max_steps),
                                                    device=device, decoding=decoding, **policy_kwargs)
        self._preprocess = False

    @property
    def media_type(self) -> str:
        return "image"

    @property
    def ragged_batches(self) -> bool:
        return False  # any image sizes batch together: `collate_fn` keeps a batch as a list of SampleInput

    @property
    def transforms(self):
        return None

    @property
    def preprocess(self) -> bool:
        return self._preprocess

    @preprocess.setter
    def preprocess(self, value: bool) -> None:
        self._preprocess = value

    @property
    def has_collate_fn(self) -> bool:
        return True

    @staticmethod
    def collate_fn(batch: list) -> list:
        return list(batch)

    @property
    def prompt_field(self) -> str:
        return (self.needs_fields or {}).get("prompt_field", "query")

    @property
    def gt_field(self) -> str | None:
        """The ground-truth field when the policy reads it (the simulated user), else None."""
        return self._gt_field if getattr(self.agent.policy, "needs_ground_truth", False) else None

    def build_get_item(self, field_mapping: dict | None = None) -> SampleLoader:
        mapping = {"query": self.prompt_field, **(field_mapping or {})}
        if self.gt_field:
            mapping.setdefault("ground_truth", self.gt_field)
        return SampleLoader(field_mapping=mapping, prompt_field=mapping["query"],
                            gt_field=mapping.get("ground_truth") if self.gt_field else None)

    def predict(self, arg, sample=None) -> dict:
        return self.predict_all([arg], samples=[sample] if sample is not None else None)[0]

    def predict_all(self, args, samples=None) -> list[dict]:
        """Labels for a batch: `SampleInput`s from the data loader, or image arrays with their samples."""
        return run_inputs(self.agent, [self._as_input(arg, samples[i] if samples else None)
                                       for i, arg in enumerate(args)])

    def _as_input(self, arg, sample) -> SampleInput:
        if isinstance(arg, SampleInput):
            return arg
        if sample is None:
            raise ValueError("SamVeteranModel needs each sample's query: pass prompt_field='<query field>' to "
                             "apply_model, or call predict(image, sample=sample)")
        query = sample.get_field(self.prompt_field) if sample.has_field(self.prompt_field) else None
        gt_field = self.gt_field
        truth = sample.get_field(gt_field) if gt_field and sample.has_field(gt_field) else None
        return prepare_input(sample.filepath, query, self.prompt_field, image=np.asarray(arg), ground_truth=truth,
                             gt_field=gt_field)
