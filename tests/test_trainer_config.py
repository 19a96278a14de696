"""Training configs: the paper's defaults, the shipped YAML files, strict keys."""

import importlib.util
from pathlib import Path

import pytest
import yaml

from sam_veteran.trainer.config import (CONFIG_DIR, TrainConfig, apply_overrides, config_from_dict, config_to_dict,
                                        load_config)
from sam_veteran.trainer.tasks import PAPER_GOOD_IOU
from sam_veteran.trainer.train import grpo_args


def test_defaults_are_the_papers():
    config = TrainConfig()
    assert (config.num_generations, config.learning_rate, config.weight_decay, config.beta) == (8, 1e-6, 0.01, 0.005)
    assert config.per_device_train_batch_size * config.gradient_accumulation_steps // config.num_generations == 16
    assert (config.sampling.nms_iou, config.sampling.action_ratio, config.sampling.steps) == (0.8, (1, 2, 2, 1), 300)
    assert (config.rewards.box_iou_threshold, config.rewards.box_l1_threshold, config.rewards.point_radius) == \
        (0.5, 10.0, 50.0)
    assert config.tasks.refine_iou == 0.9 and PAPER_GOOD_IOU == 1.0
    assert config.lr_scheduler_type == "constant"  # the paper mentions no decay (TRL's default decays to 0)


def test_good_enough_is_reachable_by_segmenter_masks_and_stop_targets_are_in_both_streams():
    tasks = TrainConfig().tasks
    assert tasks.good_iou == 0.95 and tasks.good_source == "segmenter"  # documented departure from the paper
    assert tasks.good_share > 0 and tasks.clean_share > 0
    with pytest.raises(ValueError, match="clean_share"):
        config_from_dict({"tasks": {"clean_share": 1.5}})


@pytest.mark.parametrize("name, gpus", [("one_gpu_lora.yaml", 1), ("eight_gpu_zero3.yaml", 8),
                                        ("two_node_zero3.yaml", 16)])
def test_shipped_gpu_configs_train_sixteen_prompts_per_step(name, gpus, tmp_path):
    config = load_config(CONFIG_DIR / name)
    prompts = config.per_device_train_batch_size * config.gradient_accumulation_steps * gpus // config.num_generations
    assert prompts == 16 and config.beta == 0.005
    assert config.sampling.factor("mask") > config.sampling.factor("grounding")  # clicks need more candidates
    assert (config.per_device_train_batch_size * config.gradient_accumulation_steps) % config.num_generations == 0
    config.output_dir = str(tmp_path)
    if config.deepspeed:
        assert Path(config.deepspeed).is_absolute() and Path(config.deepspeed).exists()
        assert yaml.safe_load(Path(config.deepspeed).read_text())["zero_optimization"]["stage"] == 3
        assert config.learning_rate == 1e-6 and not config.lora.enabled  # the paper's full fine-tuning rate
        if importlib.util.find_spec("deepspeed") is None:  # named with the extra that installs it
            with pytest.raises(ImportError, match=r"sam-veteran-fiftyone\[train\]"):
                grpo_args(config, config.policy)
    else:
        learning_rate = grpo_args(config, config.policy).learning_rate
        assert config.lora.enabled and learning_rate == config.lora.learning_rate == 1e-5


@pytest.mark.parametrize("name, machines", [("accelerate_1x8.yaml", 1), ("accelerate_2x8.yaml", 2)])
def test_accelerate_configs_launch_eight_processes_per_node(name, machines):
    from accelerate.commands.config.config_args import load_config_from_file

    launch = load_config_from_file(str(CONFIG_DIR / name))
    assert (launch.num_machines, launch.num_processes) == (machines, 8 * machines)
    assert launch.distributed_type == "MULTI_GPU"  # ZeRO-3 comes from the training config's deepspeed file


def test_grpo_arguments_carry_the_method(tmp_path):
    config = load_config(CONFIG_DIR / "one_gpu_lora.yaml")
    config.output_dir = str(tmp_path)
    config.trl = {"top_p": 0.95}
    args = grpo_args(config, config.policy)
    assert (args.num_generations, args.weight_decay, args.beta) == (8, 0.01, 0.005)
    assert args.scale_rewards == "none" and args.loss_type == "grpo" and args.top_p == 0.95
    assert args.learning_rate == 1e-5 and args.lr_scheduler_type == "constant"  # LoRA's rate, no decay
    assert not args.use_vllm
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


def test_vllm_settings_reach_trls_arguments(tmp_path):
    config = config_from_dict({"output_dir": str(tmp_path), "vllm": {"enabled": True, "mode": "server",
                                                                     "server_base_url": "http://10.0.0.5:8000"}})
    args = grpo_args(config, config.policy)
    assert args.use_vllm and args.vllm_mode == "server" and args.vllm_server_base_url == "http://10.0.0.5:8000"
    with pytest.raises(ValueError, match="vllm.mode"):
        config_from_dict({"vllm": {"mode": "remote"}})


def test_one_mapping_of_overrides_for_the_cli_and_the_operator():
    config = apply_overrides(TrainConfig(), {"max_steps": 5, "data.dataset": "d", "output_dir": None,
                                             "sampling.oversample": {"mask": 4}})
    assert (config.max_steps, config.data.dataset, config.output_dir) == (5, "d", TrainConfig().output_dir)
    assert config.sampling.factor("mask") == 4 and config.sampling.factor("grounding") == 2
    with pytest.raises(ValueError, match="unknown key"):
        apply_overrides(TrainConfig(), {"data.datset": "d"})
    with pytest.raises(ValueError, match="oversample"):
        apply_overrides(TrainConfig(), {"sampling.oversample": {"boxes": 2}})


def test_query_field_is_read_as_prompt_field_with_a_warning():
    with pytest.warns(FutureWarning, match="data.query_field is deprecated"):
        config = config_from_dict({"data": {"query_field": "text"}})
    assert config.data.prompt_field == "text"
