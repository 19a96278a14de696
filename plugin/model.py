"""`SamVeteranModel`: the agent as a FiftyOne model, for ``dataset.apply_model(...)``.

    model = SamVeteranModel(policy="Qwen/Qwen2.5-VL-7B-Instruct", segmenter="vit_h")
    dataset.apply_model(model, label_field="veteran", prompt_field="query", batch_size=8)

writes ``veteran_mask``, ``veteran_steps`` and ``veteran_clicks`` (see `labels.py`).
"""

from __future__ import annotations

import fiftyone.core.models as fom

from .agent import DEFAULT_POLICY, Agent, AgentConfig, AgentInput
from .agent.images import load_image
from .agent.segmenter import DEFAULT_SEGMENTER
from .labels import trace_to_labels


class SamVeteranModel(fom.Model, fom.SamplesMixin):
    """The SAM-Veteran agent behind FiftyOne's model interface; reads each sample's query from `prompt_field`."""

    def __init__(self, policy: str = DEFAULT_POLICY, segmenter: str = DEFAULT_SEGMENTER, max_steps: int = 3,
                 device: str | None = None, agent: Agent | None = None, **policy_kwargs) -> None:
        fom.SamplesMixin.__init__(self)
        self.agent = agent or Agent.from_pretrained(policy, segmenter, AgentConfig(max_steps=max_steps),
                                                    device=device, **policy_kwargs)
        self._preprocess = False

    @property
    def media_type(self) -> str:
        return "image"

    @property
    def ragged_batches(self) -> bool:
        return False  # images are read per sample in predict_all, so any sizes batch together

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
    def prompt_field(self) -> str:
        return (self.needs_fields or {}).get("prompt_field", "query")

    def predict(self, arg, sample=None):
        return self.predict_all([arg], samples=[sample] if sample is not None else None)[0]

    def predict_all(self, args, samples=None):
        """Run the agent on a batch; images are re-read from the samples' files so EXIF orientation applies."""
        if samples is None:
            raise ValueError("SamVeteranModel needs the samples: pass prompt_field='<query field>' to apply_model")
        items = [AgentInput(load_image(sample.filepath), sample.get_field(self.prompt_field) or "")
                 for sample in samples]
        return [trace_to_labels(trace) for trace in self.agent.run(items)]
