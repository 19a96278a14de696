"""Every touch of TRL's private API, in one place, behind a few hooks that `grpo.py` implements.

TRL's `GRPOTrainer` has no public hook for choosing completions among oversampled candidates, scaling advantages
or reading rewards per row, so this module overrides four of its private methods. Private methods change between
TRL releases without notice, and a changed one would not fail: the trainer would silently run plain GRPO. Hence:

- `check_trl()` (run when a trainer is built) compares each overridden method's parameters with the ones written
  here and checks that TRL's `_generate` still calls `_generate_single_turn`; a mismatch raises `TRLIncompatible`
  naming the method and the tested version range (`TESTED_TRL`, the pin in `pyproject.toml`);
- every batch that should have been oversampled checks that the override ran, and raises if it did not.

Oversampling is one generation call for the whole batch: each group's prompt is repeated `factor x
num_generations` times, so vLLM (colocate: one `llm.generate`; server: one request, `n=num_generations` per
repeated prompt) and transformers (one `generate`, one ZeRO-3 weight gather) each run once per batch. Where TRL
splits vLLM's answer into equal slices per process (server mode, tensor-parallel colocation), every process
oversamples by the largest factor any of them needs, so the slices line up.
"""

from __future__ import annotations

import inspect
import math
import time
from contextlib import contextmanager

import torch
import trl
from accelerate.utils import gather_object
from trl import GRPOTrainer

TESTED_TRL = ">=1.16,<1.17"

# The overridden private methods of `GRPOTrainer` and the parameters this module was written against.
OVERRIDDEN = {
    "_generate_single_turn": ("self", "prompt_ids", "images", "multimodal_fields", "num_generations",
                              "has_tool_images"),
    "_generate_and_score_completions": ("self", "inputs"),
    "_calculate_rewards": ("self", "inputs", "prompts", "completions", "completion_ids_list"),
    "log": ("self", "logs", "start_time"),
}


class TRLIncompatible(RuntimeError):
    """The installed TRL's private API differs from the one the trainer overrides."""


def check_trl(trainer_class: type = GRPOTrainer) -> None:
    """Raise `TRLIncompatible` when an overridden method is missing, its parameters changed, or TRL's generation
    no longer goes through `_generate_single_turn` (dynamic sampling would silently stop)."""
    where = f"trl {trl.__version__} (this trainer is tested with trl{TESTED_TRL})"
    for name, expected in OVERRIDDEN.items():
        method = getattr(trainer_class, name, None)
        if method is None:
            raise TRLIncompatible(f"{where}: GRPOTrainer.{name} no longer exists")
        found = tuple(inspect.signature(method).parameters)
        if found != expected:
            raise TRLIncompatible(f"{where}: GRPOTrainer.{name}{found} changed, the override expects {expected}")
    if "self._generate_single_turn(" not in inspect.getsource(trainer_class._generate):
        raise TRLIncompatible(f"{where}: GRPOTrainer._generate no longer calls _generate_single_turn")


def candidate_rows(factors: list[int], size: int) -> list[int]:
    """For groups of `size` rows, each oversampled `factors[g]` times: the source row of every candidate, group by
    group (group g's `size` rows repeated `factors[g]` times, in row order)."""
    return [g * size + j for g, factor in enumerate(factors) for _ in range(factor) for j in range(size)]


def repeat_multimodal(fields: dict, rows: list[int], images: list | None) -> dict:
    """The processor's multimodal fields for the prompt rows `rows` (rows may repeat).

    Per-row fields (one entry per prompt) are indexed by row; image fields are per image (`image_grid_thw`,
    one entry per image, the images of row r being `images[r]`) or per patch (`pixel_values`: the patches of image
    i are the next `prod(image_grid_thw[i])` rows). Any other layout raises: a wrong guess would pair prompts with
    the wrong pixels.
    """
    if not fields:
        return {}
    counts = [len(x or []) for x in images] if images is not None else [0] * (max(rows) + 1)
    starts = [sum(counts[:r]) for r in range(len(counts))]
    image_index = [starts[r] + k for r in rows for k in range(counts[r])]
    grid = fields.get("image_grid_thw")
    repeated = {}
    for key, value in fields.items():
        if key == "pixel_values" and grid is not None:
            patches = list(value.split(grid.prod(-1).tolist()))
            repeated[key] = torch.cat([patches[i] for i in image_index])
        elif len(value) == sum(counts) and key.startswith("image_"):
            repeated[key] = value[image_index] if isinstance(value, torch.Tensor) else [value[i] for i in image_index]
        elif len(value) == len(counts):
            repeated[key] = value[rows] if isinstance(value, torch.Tensor) else [value[r] for r in rows]
        else:
            raise ValueError(f"cannot oversample the processor field {key!r} (length {len(value)} for {len(counts)} "
                             f"prompts and {sum(counts)} images): set sampling.oversample to 1")
    return repeated


class GRPOSeam(GRPOTrainer):
    """`GRPOTrainer` with hooks in place of its private methods; subclasses implement the hooks only."""

    def __init__(self, *args, **kwargs) -> None:
        check_trl()
        super().__init__(*args, **kwargs)
        self._batch_inputs: list[dict] = []
        self._chosen_this_batch = False

    # --- hooks -------------------------------------------------------------------------------------------------

    def oversample_factors(self, inputs: list[dict]) -> list[int]:
        """Per group of `num_generations` rows of `inputs`: how many times as many candidates to generate."""
        return [1] * (len(inputs) // self.num_generations)

    def choose_completions(self, candidates: list[list[str]], inputs: list[dict]) -> list[list[int]]:
        """Per group, the indices of the `num_generations` candidates (decoded texts) it trains on; `inputs` holds
        each group's first row."""
        return [list(range(self.num_generations)) for _ in candidates]

    def scale_advantages(self, advantages: torch.Tensor) -> torch.Tensor:
        return advantages

    def observe_rewards(self, inputs: list[dict], completions: list, totals: list[float]) -> None:
        """Called with this process's rows and every process's weighted total reward per row (gathered)."""

    def add_metric(self, name: str, value: float) -> None:
        """A scalar averaged into the next log line (train or eval, as the model's mode)."""
        self._metrics["train" if self.model.training else "eval"][name].append(float(value))

    @contextmanager
    def generation_model(self):
        """The model unwrapped for `generate` as TRL does it: ZeRO-3 weights gathered, gradient checkpointing
        restored afterwards with the trainer's own `gradient_checkpointing_kwargs`."""
        from trl.models import unwrap_model_for_generation

        with unwrap_model_for_generation(self.model_wrapped, self.accelerator,
                                         gather_deepspeed3_params=self.args.ds3_gather_for_generation,
                                         gradient_checkpointing_kwargs=self.args.gradient_checkpointing_kwargs) as m:
            yield m

    def attach_generation_engine(self, engine, mode: str = "colocate") -> None:
        """Generate rollouts with `engine`, an object with the interface of TRL's `VLLMGeneration` (`generate`,
        `sync_weights`), as TRL does itself with ``use_vllm``; a scripted engine makes that path testable where
        vLLM cannot run."""
        self.use_vllm, self.vllm_mode, self.vllm_generation = True, mode, engine
        self._last_loaded_step = -1

    # --- TRL's private methods ---------------------------------------------------------------------------------

    def _generate_and_score_completions(self, inputs):
        self._batch_inputs = inputs
        self._chosen_this_batch = False
        output = super()._generate_and_score_completions(inputs)
        if any(f > 1 for f in self.oversample_factors(inputs)) and not self._chosen_this_batch:
            raise TRLIncompatible(f"trl {trl.__version__}: this batch should have been oversampled but "
                                  "_generate_single_turn was not called with it (tested with trl" + TESTED_TRL + ")")
        if self.model.training:
            output["advantages"] = self.scale_advantages(output["advantages"])
        return output

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        inputs, size = self._batch_inputs, self.num_generations
        factors = self.oversample_factors(inputs) if len(prompt_ids) == len(inputs) else []
        if factors and self._vllm_slices_equal_shares():
            widest = max(gather_object([max(factors)]))
            factors = [widest] * len(factors)
        start = time.perf_counter()
        if not any(f > 1 for f in factors):
            output = super()._generate_single_turn(prompt_ids, images, multimodal_fields, num_generations,
                                                   has_tool_images)
            self.add_metric("timing/generation_s", time.perf_counter() - start)
            return output
        rows = candidate_rows(factors, size)
        ids, logprobs = super()._generate_single_turn(
            [prompt_ids[r] for r in rows], None if images is None else [images[r] for r in rows],
            repeat_multimodal(multimodal_fields, rows, images), num_generations, has_tool_images)
        self.add_metric("timing/generation_s", time.perf_counter() - start)
        texts = self.processing_class.batch_decode(ids, skip_special_tokens=True)
        starts = [sum(f * size for f in factors[:g]) for g in range(len(factors))]
        candidates = [texts[s : s + f * size] for s, f in zip(starts, factors)]
        chosen = self.choose_completions(candidates, inputs[::size])
        picks = [starts[g] + i for g, indices in enumerate(chosen) for i in indices]
        if len(picks) != len(prompt_ids) or any(rows[p] // size != k // size for k, p in enumerate(picks)):
            raise ValueError("choose_completions must pick num_generations candidates of each group's own")
        self._chosen_this_batch = True
        return [ids[p] for p in picks], None if logprobs is None else [logprobs[p] for p in picks]

    def _vllm_slices_equal_shares(self) -> bool:
        """Whether TRL's vLLM path hands each process an equal slice of everyone's completions (a server, or
        colocated engines with tensor parallelism): then every process must ask for the same number of rows."""
        if not self.use_vllm or self.accelerator.num_processes == 1:
            return False
        return self.vllm_mode == "server" or self.args.vllm_tensor_parallel_size > 1

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        start = time.perf_counter()
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self.add_metric("timing/rewards_s", time.perf_counter() - start)
        weights = self.reward_weights.to(rewards_per_func.device)
        self.observe_rewards(inputs, completions, (rewards_per_func * weights).nansum(dim=1).tolist())
        return rewards_per_func

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """TRL's log, without metrics that have no value in this logging window (TRL would log them as None)."""
        mode = "train" if self.model.training else "eval"
        for key in [k for k, values in self._metrics[mode].items() if all(math.isnan(v) for v in values)]:
            del self._metrics[mode][key]
        super().log(logs, start_time)
