"""The policy: a Qwen-VL model that reads the (overlaid) image and the prompt and answers in text.

`TransformersPolicy` generates for a whole batch of requests at once (left padding), which is what keeps a GPU
busy: the agent loop advances every unfinished sample one step per call. `messages` builds the chat the model
sees; the trainer uses the same function, so what is trained is exactly what runs.

`decoding` picks how `generate` runs (values in `defaults.DECODINGS`): ``"eager"``, transformers' dynamic KV cache
with one Python-driven step per token, or ``"static"``, a preallocated KV cache whose decoding step transformers
compiles with `torch.compile` (CUDA graphs on a GPU), which removes the per-token host overhead that bounds eager
decoding. Compiled code is specialised to shapes, so the static path buckets them: a batch is padded with copies
of its last request to the next power of two (up to `batch_size`), and the cache length is rounded up to
`CACHE_BUCKET` tokens; a new prompt length within the bucket reuses the compiled step. Transformers' continuous
batching (`generate_batch`) is not offered: in transformers 5.x it takes token ids only, with no images and no
multimodal rotary positions, so it cannot run a Qwen-VL policy (`docs/speed.md`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np
import torch
from PIL import Image

from ..defaults import DECODINGS, DEFAULT_DECODING, DEFAULT_POLICY, MAX_NEW_TOKENS, ORACLE_POLICY
from .prompts import ModelFamily, resolve_family

CACHE_BUCKET = 256  # tokens: the static KV cache's length is rounded up to a multiple of this
CONTINUOUS_UNAVAILABLE = ("decoding='continuous' is not available: transformers' continuous batching "
                          "(generate_batch) takes token ids only, with no images and no multimodal rotary positions, "
                          "so it cannot run a Qwen-VL policy; use 'static' (a compiled static KV cache) or 'eager'")


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


def check_decoding(decoding: str) -> str:
    """`decoding` if it is one of `DECODINGS`, else a ValueError that lists them."""
    if decoding in DECODINGS:
        return decoding
    if decoding == "continuous":
        raise ValueError(CONTINUOUS_UNAVAILABLE)
    raise ValueError(f"unknown decoding {decoding!r}; choose one of {', '.join(DECODINGS)}")


def batch_bucket(size: int, batch_size: int) -> int:
    """The batch size a static-cache call runs at: the next power of two, capped at `batch_size`."""
    return min(1 << (size - 1).bit_length(), batch_size)


def cache_bucket(tokens: int) -> int:
    """The static KV cache's length for `tokens` (prompt and answer): the next multiple of `CACHE_BUCKET`."""
    return -(-tokens // CACHE_BUCKET) * CACHE_BUCKET


class PromptTooLongError(ValueError):
    """A request (query, prompt and image tokens) plus the answer does not fit the policy's context window."""


class TransformersPolicy:
    """A Qwen2-VL / Qwen2.5-VL / Qwen3-VL model through `transformers`, generating in batches."""

    def __init__(self, model, processor, family: str | ModelFamily | None = None, max_new_tokens: int = MAX_NEW_TOKENS,
                 batch_size: int = 8, temperature: float = 0.7, decoding: str = DEFAULT_DECODING,
                 compile_backend: str | None = "inductor") -> None:
        """`compile_backend` is the `torch.compile` backend of the static path's decoding step; None runs the
        static cache uncompiled (what the tests compare token for token with eager)."""
        self.decoding = check_decoding(decoding)
        self.compile_backend = compile_backend
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
                        family: str | ModelFamily | None = None, decoding: str = DEFAULT_DECODING,
                        **kwargs) -> "TransformersPolicy":
        """Load a hub id or a local folder; bf16 on a GPU, float32 on the CPU.

        `decoding` is ``"eager"`` (default) or ``"static"`` (a compiled static KV cache, see the module's notes);
        an unknown value is refused before anything loads.

        `family` (a name such as ``"seg_zero"`` or a `ModelFamily`) sets the prompts and answer format; by default
        it is the known family of the hub id (`prompts.KNOWN_POLICIES`), else that of the checkpoint's model type.
        `trust_remote_code` stays off unless asked for: a checkpoint from a stranger cannot run code by default.
        """
        from transformers import AutoModelForImageTextToText, AutoProcessor

        check_decoding(decoding)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = dtype or (torch.bfloat16 if str(device).startswith("cuda") else torch.float32)
        model = AutoModelForImageTextToText.from_pretrained(name_or_path, dtype=dtype,
                                                            trust_remote_code=trust_remote_code).to(device)
        processor = AutoProcessor.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
        return cls(model, processor, family=resolve_family(family, name_or_path, model.config.model_type),
                   decoding=decoding, **kwargs)

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

    def generate(self, requests: Sequence[PolicyRequest], sample: bool = False) -> list[str]:
        """Answer every request; greedy unless `sample` (used to retry an unreadable answer)."""
        return self.processor.batch_decode(self.generate_ids(requests, sample), skip_special_tokens=True)

    @torch.no_grad()
    def generate_ids(self, requests: Sequence[PolicyRequest], sample: bool = False) -> list[torch.Tensor]:
        """The answer tokens of every request (padded after its end of answer), `batch_size` requests a call."""
        answers: list[torch.Tensor] = []
        for start in range(0, len(requests), self.batch_size):
            chunk = list(requests[start : start + self.batch_size])
            real = len(chunk)
            if self.decoding == "static":  # padded with copies of the last request, whose answers are dropped
                chunk += chunk[-1:] * (batch_bucket(len(chunk), self.batch_size) - len(chunk))
            inputs = self.encode(chunk)
            self.check_length(inputs)
            options = dict(do_sample=True, temperature=self.temperature) if sample else dict(do_sample=False)
            if self.decoding == "static":
                options.update(self.static_options(inputs["input_ids"].shape[1]))
            output = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, **options)
            answers += list(output[:real, inputs["input_ids"].shape[1]:])
        return answers

    def static_options(self, prompt_tokens: int) -> dict:
        """`generate` options of the static path: the cache, its bucketed length, and the compilation."""
        from transformers import CompileConfig

        options = dict(cache_implementation="static", max_cache_len=cache_bucket(prompt_tokens + self.max_new_tokens))
        if self.compile_backend is None:
            return dict(options, disable_compile=True)
        config = CompileConfig(backend=self.compile_backend)
        config._compile_all_devices = True  # transformers compiles only on accelerators unless told; the CPU gains too
        return dict(options, compile_config=config)


def load_policy(spec: str | os.PathLike = DEFAULT_POLICY, device: str | None = None, trust_remote_code: bool = False,
                **kwargs) -> Policy:
    """The policy a spec names: ``"oracle"`` (the simulated user, `oracle.py`), ``"mini"`` (the shipped mini
    policy), or a hub id or folder loaded by `TransformersPolicy.from_pretrained`."""
    from .shipped import shipped_path

    check_decoding(kwargs.get("decoding", DEFAULT_DECODING))  # refused for every spec, the oracle's too
    if str(spec) == ORACLE_POLICY:
        from .oracle import OraclePolicy

        return OraclePolicy(**{k: v for k, v in kwargs.items() if k == "stop_iou"})
    return TransformersPolicy.from_pretrained(shipped_path(spec, "policy"), device=device,
                                              trust_remote_code=trust_remote_code, **kwargs)
