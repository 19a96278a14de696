"""Training configs: the paper's defaults, the shipped YAML files, strict keys."""

from pathlib import Path

import pytest
import yaml

from sam_veteran.trainer.config import CONFIG_DIR, TrainConfig, config_from_dict, config_to_dict, load_config
from sam_veteran.trainer.train import grpo_args


def test_defaults_are_the_papers():
    config = TrainConfig()
    assert (config.num_generations, config.learning_rate, config.weight_decay, config.beta) == (8, 1e-6, 0.01, 0.005)
    assert config.per_device_train_batch_size * config.gradient_accumulation_steps // config.num_generations == 16
    assert (config.sampling.nms_iou, config.sampling.action_ratio, config.sampling.steps) == (0.8, (1, 2, 2, 1), 300)
    assert (config.rewards.box_iou_threshold, config.rewards.box_l1_threshold, config.rewards.point_radius) == \
        (0.5, 10.0, 50.0)
    assert (config.tasks.refine_iou, config.tasks.good_iou) == (0.9, 1.0)


@pytest.mark.parametrize("name, gpus", [("one_gpu_lora.yaml", 1), ("eight_gpu_zero3.yaml", 8)])
def test_shipped_gpu_configs_train_sixteen_prompts_per_step(name, gpus):
    config = load_config(CONFIG_DIR / name)
    prompts = config.per_device_train_batch_size * config.gradient_accumulation_steps * gpus // config.num_generations
    assert prompts == 16 and config.learning_rate == 1e-6 and config.beta == 0.005
    assert (config.per_device_train_batch_size * config.gradient_accumulation_steps) % config.num_generations == 0
    if config.deepspeed:
        assert Path(config.deepspeed).is_absolute() and Path(config.deepspeed).exists()
        assert yaml.safe_load(Path(config.deepspeed).read_text())["zero_optimization"]["stage"] == 3
    else:
        assert config.lora.enabled


def test_grpo_arguments_carry_the_method(tmp_path):
    config = load_config(CONFIG_DIR / "one_gpu_lora.yaml")
    config.output_dir = str(tmp_path)
    config.trl = {"top_p": 0.95}
    args = grpo_args(config, config.policy)
    assert (args.num_generations, args.learning_rate, args.weight_decay, args.beta) == (8, 1e-6, 0.01, 0.005)
    assert args.scale_rewards == "none" and args.loss_type == "grpo" and args.top_p == 0.95
    config.trl = {"scale_rewards": "group"}
    with pytest.raises(ValueError, match="scale_rewards"):
        grpo_args(config, config.policy)


def test_unknown_keys_are_errors_with_their_place():
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['nms'\] in sampling"):
        config_from_dict({"sampling": {"nms": 0.8}})
    with pytest.raises(ValueError, match="learning_rat"):
        config_from_dict({"learning_rat": 1e-6})


def test_round_trip_through_yaml(tmp_path):
    config = load_config(CONFIG_DIR / "tiny.yaml")
    path = tmp_path / "again.yaml"
    path.write_text(yaml.safe_dump(config_to_dict(config)))
    assert load_config(path) == config
