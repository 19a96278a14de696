"""TRL's `GRPOTrainer`, extended only where the method needs it (through the hooks of `trl_seam.py`).

- Dynamic sampling: while `global_step < sampling.steps`, each group's completions are chosen from
  `oversample` x as many sampled candidates (`sampling.py`; `oversample` may differ per task): diverse boxes for
  grounding, the 1:2:2:1 action mix for clicks. All candidates of a batch come from one generation call.
- Global-batch advantage normalisation (REINFORCE++ style): the advantage is the reward minus its group's mean,
  divided by the standard deviation of those centred rewards over the whole global batch (TRL runs with
  ``scale_rewards="none"`` and the division happens here, after gathering every process's advantages).
- Per-task metrics: mean reward, stop rate (overall, on good-enough items and on items that need refinement) and
  dynamic sampling's kept-group share per task, with a warning when a task's kept share stays low.

The segmenter runs inside the reward functions (`rewards.SegmenterReward`). Groups must not straddle processes:
each process's generation batch is a whole number of groups (checked at start).
"""

from __future__ import annotations

import logging
from collections import defaultdict, deque

import torch
from accelerate.utils import gather, gather_object

from ..plugin.agent.parsing import AnswerError, parse_refinement
from .config import SamplingConfig
from .rewards import GOOD, GROUNDING, REFINE, TASKS, completion_text
from .sampling import select_candidates
from .trl_seam import GRPOSeam

logger = logging.getLogger(__name__)


class SamVeteranGRPOTrainer(GRPOSeam):
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
        self._kept: dict[str, list[float]] = defaultdict(list)
        self._kept_recent: dict[str, deque] = defaultdict(lambda: deque(maxlen=self.sampling.warn_window))

    @property
    def dynamic_sampling_active(self) -> bool:
        return (self.model.training and self.sampling.enabled and self.state.global_step < self.sampling.steps
                and max(self.sampling.factor(task) for task in TASKS) > 1)

    def oversample_factors(self, inputs: list[dict]) -> list[int]:
        firsts = inputs[:: self.num_generations]
        if not self.dynamic_sampling_active:
            return [1] * len(firsts)
        return [self.sampling.factor(x["record"].task) for x in firsts]

    def choose_completions(self, candidates: list[list[str]], inputs: list[dict]) -> list[list[int]]:
        tasks = [x["record"].task for x in inputs]
        chosen, met = select_candidates(candidates, tasks, self.num_generations, self.sampling)
        for task, ok in zip(tasks, met):
            self._kept[task].append(float(ok))
        return chosen

    def scale_advantages(self, advantages: torch.Tensor) -> torch.Tensor:
        return normalise_globally(advantages)

    def observe_rewards(self, inputs: list[dict], completions: list, totals: list[float]) -> None:
        rows = gather_object([(x["record"].task, x["record"].case, _is_stop(completion_text(c)))
                              for x, c in zip(inputs, completions)])
        for task in TASKS:
            mine = [i for i, row in enumerate(rows) if row[0] == task]
            if not mine:
                continue
            self.add_metric(f"tasks/{task}/reward", sum(totals[i] for i in mine) / len(mine))
            self.add_metric(f"tasks/{task}/share", len(mine) / len(rows))
            if task != GROUNDING:
                self.add_metric(f"tasks/{task}/stop_rate", sum(rows[i][2] for i in mine) / len(mine))
                for case in (GOOD, REFINE):
                    cased = [i for i in mine if rows[i][1] == case]
                    if cased:
                        self.add_metric(f"tasks/{task}/stop_rate_{case}", sum(rows[i][2] for i in cased) / len(cased))
        for case in (GOOD, REFINE):
            cased = [row[2] for row in rows if row[0] != GROUNDING and row[1] == case]
            if cased:
                self.add_metric(f"stopping/{case}/stop_rate", sum(cased) / len(cased))
        self._log_kept_shares()
        if self.model.training:
            self.add_metric("dynamic_sampling/active", float(self.dynamic_sampling_active))

    def _log_kept_shares(self) -> None:
        """Every process's kept-group flags of this batch, per task: the share logged, a warning when it stays
        below `sampling.min_kept_share` for `sampling.warn_window` batches."""
        merged: dict[str, list[float]] = defaultdict(list)
        for part in gather_object([dict(self._kept)]):
            for task, values in part.items():
                merged[task] += values
        self._kept.clear()
        for task, values in merged.items():
            share = sum(values) / len(values)
            self.add_metric(f"dynamic_sampling/{task}/kept_group_share", share)
            recent = self._kept_recent[task]
            recent.append(share)
            if len(recent) == recent.maxlen and sum(recent) / len(recent) < self.sampling.min_kept_share:
                if self.accelerator.is_main_process:
                    logger.warning("dynamic sampling met its target for only %.0f%% of %s groups over the last %d "
                                   "batches (sampling.min_kept_share %.2f): raise sampling.oversample for %s "
                                   "(now %d)", 100 * sum(recent) / len(recent), task, len(recent),
                                   self.sampling.min_kept_share, task, self.sampling.factor(task))
                recent.clear()


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
