"""Mask-comprehension prompts from the current policy's own boxes, refreshed while training.

Every `policy_refresh_steps` optimiser steps, `policy_refresh_items` mask items are replaced by what the policy
itself produces now: the agent's own grounding step (same prompt, parsing, box repair and segmenter call as at
inference) on the item's image and query; the segmenter's mask for that box becomes the shown mask, labelled
good / refine / ambiguous by its tolerant IoU like the perturbed-box masks. An unreadable box leaves the item
as it was. So the mask task follows the masks the policy really meets at step 1, not only synthetic ones.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from transformers import TrainerCallback

from ..plugin.agent import Agent, AgentConfig, AgentInput, TransformersPolicy
from .rewards import MASK, tolerant_iou
from .tasks import TaskConfig, TaskRecord, encode_mask, mask_case


def refresh_mask_items(records: list[TaskRecord], indices, policy, segmenter, config: TaskConfig,
                       input_size: tuple[int, int] | None = None) -> int:
    """Replace `records[i]` (mask items) for `indices` with masks from `policy`'s own boxes; returns how many."""
    indices = [i for i in indices if records[i].task == MASK]
    if not indices:
        return 0
    agent = Agent(policy, segmenter, AgentConfig(max_steps=0, parse_retries=0, input_size=input_size))
    traces = agent.run([AgentInput(records[i].load_image(), records[i].query) for i in indices])
    replaced = 0
    for i, trace in zip(indices, traces):
        if not trace.mask_steps:
            continue
        record = records[i]
        gt, ignore = record.gt_mask(), record.ignore_mask()
        iou = tolerant_iou(trace.mask, gt, ignore, config.edge_tolerance)
        records[i] = replace(record, shown_rle=encode_mask(trace.mask), mask_source="segmenter",
                             prompt_box=tuple(float(v) for v in trace.box), shown_iou=iou,
                             case=mask_case(iou, config), drawn_good=False)
        replaced += 1
    return replaced


class PolicyMaskRefresh(TrainerCallback):
    """Runs `refresh_mask_items` with the model being trained every `config.policy_refresh_steps` steps."""

    def __init__(self, trainer, records: list[TaskRecord], segmenter, family, config: TaskConfig,
                 seed: int = 0) -> None:
        self.trainer = trainer
        self.records = records
        self.segmenter = segmenter
        self.family = family
        self.config = config
        self.rng = np.random.default_rng(seed)
        self.mask_indices = [i for i, r in enumerate(records) if r.task == MASK]

    def on_step_end(self, args, state, control, **kwargs):
        every = self.config.policy_refresh_steps
        if not every or state.global_step % every or not self.mask_indices:
            return
        trainer = self.trainer
        count = min(self.config.policy_refresh_items, len(self.mask_indices))
        chosen = self.rng.choice(self.mask_indices, size=count, replace=False).tolist()
        with trainer.generation_model() as model:
            policy = TransformersPolicy(model, trainer.processing_class, family=self.family,
                                        max_new_tokens=args.max_completion_length, batch_size=args.num_generations)
            replaced = refresh_mask_items(self.records, chosen, policy, self.segmenter, self.config)
        trainer.model.train()
        trainer.add_metric("tasks/mask/policy_items_refreshed", replaced)
