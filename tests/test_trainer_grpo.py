"""GRPO end to end with tiny models: weights move, checkpoints load into the agent, learning has the right sign,
resuming keeps the step count and the optimiser state."""

import json
import uuid
from pathlib import Path

import fiftyone as fo
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from sam_veteran.plugin.agent import TransformersPolicy
from sam_veteran.plugin.demo import build_demo_dataset
from sam_veteran.trainer.config import load_config
from sam_veteran.trainer.train import tiny_dataset_name, train

TINY_YAML = "trainer/configs/tiny.yaml"


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    # a unique name: concurrent test sessions on one machine share FiftyOne's database service
    return build_demo_dataset(tmp_path_factory.mktemp("scenes"), num_samples=4, name=f"trainer-{uuid.uuid4().hex}",
                              seed=0)


def low_tokens(prompts, completions, completion_ids, **_):
    """A toy reward a random policy can learn quickly: the share of completion tokens with an id below 256."""
    return [sum(t < 256 for t in ids) / max(len(ids), 1) for ids in completion_ids]


def tiny_config(tmp_path, tiny_models, **overrides):
    from pathlib import Path

    config = load_config(Path(__file__).resolve().parents[1] / TINY_YAML)
    config.tiny = False
    config.policy = str(tiny_models["policy-qwen2_5_vl"])
    config.segmenter = str(tiny_models["segmenter"])
    config.output_dir = str(tmp_path / "run")
    config.report_to = ["tensorboard"]
    config.weight_decay = 0.0  # so a weight that moved was moved by the gradient
    for key, value in overrides.items():
        target = config
        *path, name = key.split("__")
        for part in path:
            target = getattr(target, part)
        setattr(target, name, value)
    return config


def read_log(path):
    return [json.loads(line) for line in open(path)]


def test_short_run_updates_weights_and_the_agent_loads_the_checkpoint(tmp_path, tiny_models, scenes):
    from sam_veteran.plugin.model import SamVeteranModel

    config = tiny_config(tmp_path, tiny_models, max_steps=2, save_steps=2, learning_rate=0.05, sampling__steps=1)
    result = train(config, view=scenes, extra_rewards=[low_tokens])
    assert result.global_step == 2
    before = load_file(tiny_models["policy-qwen2_5_vl"] / "model.safetensors")
    after = load_file(result.final_model / "model.safetensors")
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before)

    log = [entry for entry in read_log(result.metrics_log) if "reward" in entry]
    assert [entry["step"] for entry in log] == [1, 2]
    assert [entry["dynamic_sampling/active"] for entry in log] == [1.0, 0.0]  # switched off after sampling.steps
    tasks = {key.split("/")[1] for entry in log for key in entry if key.startswith("tasks/")}
    assert tasks <= {"grounding", "mask", "auxiliary"} and tasks
    assert all("kl" in entry and "rewards/format/mean" in entry for entry in log)
    assert list((result.output_dir / "runs").rglob("events.out.tfevents*"))

    checkpoint = TransformersPolicy.from_pretrained(result.output_dir / "checkpoint-2", device="cpu")
    assert checkpoint.family.name == "qwen2_5_vl"
    model = SamVeteranModel(policy=str(result.final_model), segmenter=str(tiny_models["segmenter"]), max_steps=1,
                            device="cpu", max_new_tokens=8)
    scenes.limit(2).apply_model(model, label_field="trained", prompt_field="query")
    assert len(scenes.exists("trained_mask")) == 2
    scenes.delete_sample_field("trained_mask")


def test_lora_run_saves_a_merged_full_model(tmp_path, tiny_models, scenes):
    config = tiny_config(tmp_path, tiny_models, max_steps=1, save_steps=1, learning_rate=0.1, lora__enabled=True,
                         lora__r=4, lora__alpha=8)
    result = train(config, view=scenes, extra_rewards=[low_tokens])
    assert (result.output_dir / "checkpoint-1" / "adapter_config.json").exists()
    merged = load_file(result.final_model / "model.safetensors")
    base = load_file(tiny_models["policy-qwen2_5_vl"] / "model.safetensors")
    assert merged.keys() == base.keys()  # a plain full model, no adapter keys
    changed = [k for k in base if not torch.equal(base[k], merged[k])]
    # only the language model's projections moved (saved under the checkpoint's "model.layers." names)
    assert changed and all(k.startswith("model.layers.") and k.endswith("proj.weight") for k in changed)
    policy = TransformersPolicy.from_pretrained(result.final_model, device="cpu", max_new_tokens=4)
    assert len(policy.generate([_request(policy)])) == 1


def _request(policy):
    from PIL import Image

    from sam_veteran.plugin.agent import PolicyRequest

    return PolicyRequest(Image.new("RGB", (56, 56)), policy.family.grounding_prompt("the red circle"))


def test_learning_has_the_right_sign(tmp_path, tiny_models, scenes):
    """On a toy reward, a tiny policy's mean reward rises clearly within 14 seeded steps."""
    config = tiny_config(tmp_path, tiny_models, max_steps=14, save_steps=1000, learning_rate=0.1, beta=0.0,
                         num_generations=8, per_device_train_batch_size=8, gradient_accumulation_steps=1,
                         max_completion_length=8, report_to=[], sampling__enabled=False)
    result = train(config, view=scenes, extra_rewards=[low_tokens])
    rewards = [entry["rewards/low_tokens/mean"] for entry in read_log(result.metrics_log) if "reward" in entry]
    assert len(rewards) == 14
    first, last = np.mean(rewards[:3]), np.mean(rewards[-3:])
    assert last > first + 0.25, rewards


def test_resume_keeps_the_step_count_and_the_optimiser_state(tmp_path, tiny_models, scenes):
    config = tiny_config(tmp_path, tiny_models, max_steps=2, save_steps=1, learning_rate=0.05, report_to=[])
    train(config, view=scenes, extra_rewards=[low_tokens])
    config.max_steps = 3
    config.resume_from_checkpoint = "latest"
    result = train(config, view=scenes, extra_rewards=[low_tokens])
    assert result.global_step == 3
    steps = [entry["step"] for entry in read_log(result.metrics_log) if "reward" in entry]
    assert steps == [1, 2, 3]  # the resumed run did only step 3
    state = torch.load(result.output_dir / "checkpoint-3" / "optimizer.pt", weights_only=True)["state"]
    assert {int(s["step"]) for s in state.values()} == {3}  # AdamW continued from step 2's moments
    assert json.loads((result.output_dir / "checkpoint-3" / "trainer_state.json").read_text())["global_step"] == 3


def test_cli_tiny_run(tmp_path):
    from sam_veteran.cli import main

    assert main(["train", "--tiny", "--max-steps", "1", "--output-dir", str(tmp_path / "cli"), "--json"]) == 0
    assert (tmp_path / "cli" / "final" / "config.json").exists()
    assert (tmp_path / "cli" / "metrics.jsonl").exists()
    recorded = load_config(tmp_path / "cli" / "config.yaml")  # what ran: the tiny models, not the 7B defaults
    assert Path(recorded.policy).name == "policy-qwen2_5_vl" and recorded.segmenter.endswith(".safetensors")
    assert fo.dataset_exists(tiny_dataset_name(tmp_path / "cli"))  # the generated scenes it trained on
