"""The mini policy's second stage: the project's multi-task GRPO (`trainer/train.py`), from the warm-up checkpoint.

Nothing here is specific to GRPO: the stage writes training scenes into a FiftyOne dataset, reads
`trainer/configs/mini.yaml` and calls `train`, exactly as `sam-veteran train --config` would for a user's data. The
paper's ablations are variants that change one thing each (`VARIANTS`): no auxiliary task, no dynamic sampling, and
a learning rate of 0 (a control with the same seed, prompts and sampling: any difference from it is learning).
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import CONFIG_DIR, apply_overrides, load_config
from ..rewards import GROUNDING, MASK
from .policy import save_policy

GRPO_CONFIG = CONFIG_DIR / "mini.yaml"
VARIANTS: dict[str, dict] = {
    "full": {},
    "no_auxiliary": {"tasks.ratios": {GROUNDING: 0.5, MASK: 0.5}},
    "no_dynamic_sampling": {"sampling.enabled": False},
    "lr0": {"learning_rate": 0.0},
}


@dataclass
class GrpoStageConfig:
    output: str
    warmup: str  # the policy folder to start from: the warm-up stage's (or the shipped mini policy, to go on)
    variant: str = "full"
    steps: int | None = None  # default: the YAML's max_steps
    scenes: int = 96  # training scenes (each gives `tasks.items_per_sample` task items)
    seed: int = 0
    segmenter: str = "mini"
    overrides: dict | None = None  # further dotted config keys, as `apply_overrides` takes them

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown GRPO variant {self.variant!r}: use one of {sorted(VARIANTS)}")


def shippable(final: Path, directory: Path) -> None:
    """The trained policy as the warm-up stage writes one (bfloat16 weights, family recorded): half the size."""
    from ...plugin.agent.policy import TransformersPolicy

    policy = TransformersPolicy.from_pretrained(final, device="cpu")
    save_policy(policy.model, policy.processor, directory, family=policy.family.name)


def train_grpo(config: GrpoStageConfig) -> dict:
    """Run the stage (resuming the newest checkpoint in `output` if there is one) into `output` (`policy/`: the
    trained policy); returns its metrics: the mean task reward over the first and the last tenth of the steps,
    steps, wall time."""
    from ...plugin.demo import build_demo_dataset
    from ..train import latest_checkpoint, train

    output = Path(config.output)
    warmup = Path(config.warmup)
    if not (warmup / "config.json").is_file():
        raise FileNotFoundError(f"no warm-up policy in {config.warmup}: run `sam-veteran mini train --stage policy`")
    started = time.time()
    train_config = apply_overrides(load_config(GRPO_CONFIG), {
        "policy": str(warmup), "segmenter": config.segmenter, "output_dir": str(output), "seed": config.seed,
        "max_steps": config.steps, "resume_from_checkpoint": "latest" if latest_checkpoint(output) else None,
        "overwrite_output_dir": not latest_checkpoint(output),  # a stage killed before its first checkpoint restarts
        **VARIANTS[config.variant], **(config.overrides or {})})
    scenes = build_demo_dataset(output / "scenes", config.scenes, name=f"sam-veteran-mini-grpo-{uuid.uuid4().hex[:8]}",
                                seed=config.seed, persistent=False, split="train")
    try:
        result = train(train_config, view=scenes)
    finally:
        scenes.delete()
    shippable(result.final_model, output / "policy")
    rewards = [entry["reward"] for entry in map(json.loads, result.metrics_log.read_text().splitlines())
               if "reward" in entry]
    tenth = max(1, len(rewards) // 10)
    return {"reward_first": round(float(np.mean(rewards[:tenth])), 4) if rewards else None,
            "reward_last": round(float(np.mean(rewards[-tenth:])), 4) if rewards else None,
            "steps": result.global_step, "variant": config.variant, "train_seconds": round(time.time() - started, 1)}
