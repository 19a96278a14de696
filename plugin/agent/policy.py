"""The policy: a Qwen-VL model that reads the (overlaid) image and the prompt and answers in text.

`TransformersPolicy` generates for a whole batch of requests at once (left padding), which is what keeps a GPU
busy: the agent loop advances every unfinished sample one step per call. `messages` builds the chat the model
sees; the trainer uses the same function, so what is trained is exactly what runs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np
import torch
from PIL import Image

from ..defaults import DEFAULT_POLICY, MAX_NEW_TOKENS, ORACLE_POLICY
from .prompts import ModelFamily, resolve_family



@dataclass
class PolicyRequest:
    """One prompt for the policy: the image as the policy should see it, and the text.

    `mask` (the current mask, original size; None at the grounding step) and `ground_truth` (the sample's, when
    known) are there for policies that read them, such as the simulated user; a trained policy sees only the
    image and the prompt."""

    image: Image.Image
    prompt: str
    mask: np.ndarray | None = None
    ground_truth: np.ndarray | None = None


class Policy(Protocol):
    """What the agent needs from a policy; another model family or serving backend is one class implementing this."""

    family: ModelFamily

    def generate(self, requests: Sequence[PolicyRequest], sample: bool = False) -> list[str]: ...


def messages(request: PolicyRequest, family: ModelFamily) -> list[dict]:
    """The chat for one request: the family's system prompt, then the image and the prompt text (the text first
    for a `query_first` family)."""
    content = [{"type": "image"}, {"type": "text", "text": request.prompt}]
    return [
        {"role": "system", "content": [{"type": "text", "text": family.system_prompt}]},
        {"role": "user", "content": content[::-1] if family.query_first else content},
    ]


class PromptTooLongError(ValueError):
    """A request (query, prompt and image tokens) plus the answer does not fit the policy's context window."""


class TransformersPolicy:
    """A Qwen2-VL / Qwen2.5-VL / Qwen3-VL model through `transformers`, generating in batches."""

    def __init__(self, model, processor, family: str | ModelFamily | None = None, max_new_tokens: int = MAX_NEW_TOKENS,
                 batch_size: int = 8, temperature: float = 0.7) -> None:
        self.model = model.eval()
        self.processor = processor
        self.processor.tokenizer.padding_side = "left"
        self.family = resolve_family(family, getattr(model.config, "_name_or_path", None), model.config.model_type)
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.temperature = temperature

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike = DEFAULT_POLICY, device: str | None = None,
                        dtype: torch.dtype | None = None, trust_remote_code: bool = False,
                        family: str | ModelFamily | None = None, **kwargs) -> "TransformersPolicy":
        """Load a hub id or a local folder; bf16 on a GPU, float32 on the CPU.

        `family` (a name such as ``"seg_zero"`` or a `ModelFamily`) sets the prompts and answer format; by default
        it is the known family of the hub id (`prompts.KNOWN_POLICIES`), else that of the checkpoint's model type.
        `trust_remote_code` stays off unless asked for: a checkpoint from a stranger cannot run code by default.
        """
        from transformers import AutoModelForImageTextToText, AutoProcessor

        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = dtype or (torch.bfloat16 if str(device).startswith("cuda") else torch.float32)
        model = AutoModelForImageTextToText.from_pretrained(name_or_path, dtype=dtype,
                                                            trust_remote_code=trust_remote_code).to(device)
        processor = AutoProcessor.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
        return cls(model, processor, family=resolve_family(family, name_or_path, model.config.model_type), **kwargs)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def encode(self, requests: Sequence[PolicyRequest]):
        """Processor inputs (token ids, pixels, grids) for a batch of requests, left padded."""
        texts = [self.processor.apply_chat_template(messages(r, self.family), add_generation_prompt=True,
                                                    tokenize=False) for r in requests]
        inputs = self.processor(text=texts, images=[r.image for r in requests], return_tensors="pt", padding=True)
        return inputs.to(self.device)

    @property
    def context_length(self) -> int | None:
        """The most tokens (prompt and answer) the model's position embeddings cover, when its config says."""
        return getattr(self.model.config.get_text_config(), "max_position_embeddings", None)

    def check_length(self, inputs) -> None:
        """Refuse a batch that cannot fit: past its context a model still answers, but from garbled positions."""
        longest = int(inputs["attention_mask"].sum(dim=1).max())
        limit = self.context_length
        if limit is not None and longest + self.max_new_tokens > limit:
            raise PromptTooLongError(f"the prompt is {longest} tokens (query, instructions and image); with up to "
                                     f"{self.max_new_tokens} answer tokens that exceeds the policy's context of "
                                     f"{limit} tokens: shorten the query")

    @torch.no_grad()
    def generate(self, requests: Sequence[PolicyRequest], sample: bool = False) -> list[str]:
        """Answer every request; greedy unless `sample` (used to retry an unreadable answer)."""
        answers: list[str] = []
        for start in range(0, len(requests), self.batch_size):
            inputs = self.encode(requests[start : start + self.batch_size])
            self.check_length(inputs)
            options = dict(do_sample=True, temperature=self.temperature) if sample else dict(do_sample=False)
            output = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, **options)
            new_tokens = output[:, inputs["input_ids"].shape[1]:]
            answers += self.processor.batch_decode(new_tokens, skip_special_tokens=True)
        return answers


def load_policy(spec: str | os.PathLike = DEFAULT_POLICY, device: str | None = None, trust_remote_code: bool = False,
                **kwargs) -> Policy:
    """The policy a spec names: ``"oracle"`` (the simulated user, `oracle.py`), ``"mini"`` (the shipped mini
    policy), or a hub id or folder loaded by `TransformersPolicy.from_pretrained`."""
    from .shipped import shipped_path

    if str(spec) == ORACLE_POLICY:
        from .oracle import OraclePolicy

        return OraclePolicy(**{k: v for k, v in kwargs.items() if k == "stop_iou"})
    return TransformersPolicy.from_pretrained(shipped_path(spec, "policy"), device=device,
                                              trust_remote_code=trust_remote_code, **kwargs)
