"""TRL's `GRPOTrainer`, extended only where the method needs it.

- Dynamic sampling: while `global_step < sampling.steps`, each group's completions are chosen from
  `oversample` x as many sampled candidates (`sampling.py`): diverse boxes for grounding, the 1:2:2:1 action mix for
  clicks. Generation itself stays TRL's (transformers, vLLM), called once per round of candidates.
- Global-batch advantage normalisation (REINFORCE++ style): the advantage is the reward minus its group's mean,
  divided by the standard deviation of those centred rewards over the whole global batch (TRL runs with
  ``scale_rewards="none"`` and the division happens here, after gathering every process's advantages).
- Per-task metrics: mean reward, stop rate and dynamic sampling's kept-group share per task, beside TRL's
  per-reward means (which are per task already: each reward scores one task's rows) and KL.

The segmenter runs inside the reward functions (`rewards.SegmenterReward`). Groups must not straddle processes:
each process's generation batch is a whole number of groups (checked at start).
"""

from __future__ import annotations

from collections import defaultdict

import torch
from accelerate.utils import gather, gather_object
from trl import GRPOTrainer

from ..plugin.agent.parsing import AnswerError, parse_refinement
from .config import SamplingConfig
from .rewards import GROUNDING, TASKS, completion_text
from .sampling import select_rollouts


class SamVeteranGRPOTrainer(GRPOTrainer):
    """GRPO with dynamic sampling, global-batch advantage normalisation and per-task metrics."""

    def __init__(self, *args, sampling: SamplingConfig | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.sampling = sampling or SamplingConfig()
        if self.args.scale_rewards != "none":
            raise ValueError("SamVeteranGRPOTrainer normalises advantages over the global batch itself: "
                             "set scale_rewards='none'")
        local = self.args.per_device_train_batch_size * self.args.steps_per_generation
        if local % self.num_generations:
            raise ValueError(f"each process's generation batch ({local} = per_device_train_batch_size x "
                             f"steps_per_generation) must be a multiple of num_generations ({self.num_generations})")
        self._batch_inputs: list[dict] = []
        self._sampling_stats: dict[str, list[float]] = defaultdict(list)

    @property
    def dynamic_sampling_active(self) -> bool:
        return (self.model.training and self.sampling.enabled and self.sampling.oversample > 1
                and self.state.global_step < self.sampling.steps)

    def _generate_and_score_completions(self, inputs):
        self._batch_inputs = inputs
        output = super()._generate_and_score_completions(inputs)
        if self.model.training:
            output["advantages"] = normalise_globally(output["advantages"])
        return output

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        if not self.dynamic_sampling_active or len(prompt_ids) != len(self._batch_inputs):
            return super()._generate_single_turn(prompt_ids, images, multimodal_fields, num_generations,
                                                 has_tool_images)
        rounds = [super(SamVeteranGRPOTrainer, self)._generate_single_turn(
            prompt_ids, images, multimodal_fields, num_generations, has_tool_images)
            for _ in range(self.sampling.oversample)]
        decoded = [self.processing_class.batch_decode(ids, skip_special_tokens=True) for ids, _ in rounds]
        tasks = [x["record"].task for x in self._batch_inputs]
        picks, groups = select_rollouts(decoded, tasks, self.num_generations, self.sampling)
        for task, met in groups:
            self._sampling_stats[task].append(float(met))
        completion_ids = [rounds[r][0][row] for r, row in picks]
        logprobs = None if rounds[0][1] is None else [rounds[r][1][row] for r, row in picks]
        return completion_ids, logprobs

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """TRL's log, without the reward means of tasks absent from this logging window (they would be None)."""
        mode = "train" if self.model.training else "eval"
        for key in [k for k, values in self._metrics[mode].items() if all(v != v for v in values)]:
            del self._metrics[mode][key]
        super().log(logs, start_time)

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        mode = "train" if self.model.training else "eval"
        tasks = gather_object([x["record"].task for x in inputs])
        stops = gather_object([_is_stop(completion_text(c)) for c in completions])
        weights = self.reward_weights.to(rewards_per_func.device)
        totals = (rewards_per_func * weights).nansum(dim=1).tolist()
        for task in TASKS:
            rows = [i for i, t in enumerate(tasks) if t == task]
            if not rows:
                continue
            self._metrics[mode][f"tasks/{task}/reward"].append(sum(totals[i] for i in rows) / len(rows))
            self._metrics[mode][f"tasks/{task}/share"].append(len(rows) / len(tasks))
            if task != GROUNDING:
                self._metrics[mode][f"tasks/{task}/stop_rate"].append(sum(stops[i] for i in rows) / len(rows))
        stats = gather_object([dict(self._sampling_stats)])
        self._sampling_stats.clear()
        merged: dict[str, list[float]] = defaultdict(list)
        for part in stats:
            for task, values in part.items():
                merged[task] += values
        for task, values in merged.items():
            self._metrics[mode][f"dynamic_sampling/{task}/kept_group_share"].append(sum(values) / len(values))
        if mode == "train":
            self._metrics[mode]["dynamic_sampling/active"].append(float(self.dynamic_sampling_active))
        return rewards_per_func


def normalise_globally(advantages: torch.Tensor) -> torch.Tensor:
    """Divide this process's group-centred rewards by the standard deviation of all processes' ones."""
    everything = gather(advantages)
    std = everything.std() if everything.numel() > 1 else torch.zeros((), device=advantages.device)
    return advantages / (std + 1e-4)


def _is_stop(text: str) -> bool:
    try:
        return parse_refinement(text).stop
    except AnswerError:
        return False
