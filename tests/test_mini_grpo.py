"""The mini policy's GRPO stage learns: a short run from the warm-up checkpoint (the shipped mini policy is the
warm-up's: docs/mini.md says why), on the paper's rewards, against a control with a learning rate of 0 and
everything else equal (seed, scenes, prompts, sampling).

The control makes the comparison exact: both runs generate the first step's rollouts from the same weights, so
their first rewards agree; afterwards only the updates differ. Mask items only (the task where the full run's
gain was: deciding when to stop), so eight steps see every prompt several times (two scenes, three items each,
two prompts a step). Grounding alone at lr 2e-4 broke the answer format within eight steps.
"""

import json

import pytest

from sam_veteran.plugin.agent.shipped import SHIPPED
from sam_veteran.trainer.mini.grpo import GrpoStageConfig, train_grpo

SHORT = {"per_device_train_batch_size": 8, "num_generations": 4, "max_completion_length": 32,
         "tasks.ratios": {"mask": 1.0}, "tasks.policy_refresh_steps": 0, "save_steps": 100}


def rewards(output) -> list[float]:
    return [e["reward"] for e in map(json.loads, (output / "metrics.jsonl").read_text().splitlines()) if "reward" in e]


@pytest.mark.slow
def test_a_short_grpo_run_raises_the_task_reward_over_an_lr0_control(tmp_path):
    runs = {}
    for name, lr in (("trained", 1e-4), ("control", 0.0)):
        train_grpo(GrpoStageConfig(output=str(tmp_path / name), warmup=str(SHIPPED["mini"]["policy"]), steps=8, scenes=2,
                                   overrides={**SHORT, "learning_rate": lr}))
        runs[name] = rewards(tmp_path / name)
        assert (tmp_path / name / "policy" / "sam_veteran.json").is_file()  # the agent loads it as a mini policy
    trained, control = runs["trained"], runs["control"]
    assert len(trained) == len(control) == 8
    assert trained[0] == pytest.approx(control[0])
    assert sum(trained[4:]) / 4 > sum(control[4:]) / 4
