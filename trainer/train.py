"""Putting a training run together: view -> tasks -> GRPO -> checkpoints a `SamVeteranModel` loads.

`train(config)` is the one entry point (the CLI, `python -m sam_veteran.trainer`, `accelerate launch` and the
Train operator all call it). It writes into `output_dir`:

- ``checkpoint-N/``: TRL/transformers checkpoints (model or LoRA adapter, processor, optimiser, scheduler, RNG,
  trainer state); resume with ``resume_from_checkpoint``;
- ``final/``: the trained policy as a full model with its processor (a LoRA adapter is merged into the base
  weights), which ``SamVeteranModel(policy=".../final")`` and ``TransformersPolicy.from_pretrained`` load;
- ``metrics.jsonl``: every logged metric per step; ``runs/``: the same for TensorBoard;
- ``config.yaml``: the configuration the run used, with the policy and segmenter it really loaded.

An output folder that holds another run is refused unless the run resumes it or overwrites it explicitly.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import shutil
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import yaml
from transformers import TrainerCallback

from ..plugin.agent.prompts import record_family
from .config import GRPO_FIELDS, TrainConfig, config_to_dict
from .tasks import build_tasks, read_view, task_dataset

logger = logging.getLogger(__name__)

TINY_DATASET = "sam-veteran-train-tiny"


def tiny_dataset_name(output_dir: str | Path, node: int = 0) -> str:
    """The generated dataset of a tiny run: one per output folder, so concurrent runs (which share FiftyOne's
    database on one machine) never replace each other's, while the processes of one run agree on it; and one per
    node after the first (`node`: the global rank of the node's first process), as nodes may share the database
    but not a disk."""
    digest = hashlib.sha1(str(Path(output_dir).resolve()).encode()).hexdigest()[:8]
    return f"{TINY_DATASET}-{digest}" + (f"-node{node}" if node else "")


@dataclass
class TrainResult:
    output_dir: Path
    final_model: Path
    metrics_log: Path
    global_step: int
    num_records: int


class MetricsLogCallback(TrainerCallback):
    """Append every log event (one JSON object per line) to ``metrics.jsonl``, from the main process only."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            with self.path.open("a") as f:
                f.write(json.dumps({"step": state.global_step, **logs}) + "\n")


def resolve_models(config: TrainConfig) -> tuple[str, str]:
    """(policy, segmenter) paths or ids; the tiny local models when `config.tiny`."""
    if config.tiny:
        from accelerate import PartialState

        from ..plugin.agent.tiny import tiny_model_paths

        with PartialState().local_main_process_first():  # each node's first process writes them, the others read
            return tiny_model_paths()
    return config.policy, config.segmenter


def load_view(config: TrainConfig):
    """The training samples: the configured dataset (narrowed by its view and tags), or the tiny generated one."""
    import fiftyone as fo

    data = config.data
    if config.tiny and data.dataset is None:
        from accelerate import PartialState

        from ..plugin.demo import build_demo_dataset

        state = PartialState()
        node = state.process_index - state.local_process_index
        name = tiny_dataset_name(config.output_dir, node)
        with state.local_main_process_first():  # built once per node, by its first process; the others load it
            if state.is_local_main_process:
                folder = Path(config.output_dir) / ("tiny-scenes" + (f"-node{node}" if node else ""))
                return build_demo_dataset(folder, num_samples=config.tiny_samples, name=name, seed=config.seed,
                                          persistent=False, split="train")
            return fo.load_dataset(name)
    if not data.dataset:
        raise ValueError("no training data: set data.dataset to a FiftyOne dataset name (or use --tiny)")
    if not fo.dataset_exists(data.dataset):
        raise ValueError(f"FiftyOne dataset {data.dataset!r} does not exist")
    dataset = fo.load_dataset(data.dataset)
    view = fo.DatasetView._build(dataset, data.view) if data.view else dataset.view()
    if data.tags:
        view = view.match_tags(data.tags)
    if data.max_samples:
        view = view.limit(data.max_samples)
    return view


def grpo_args(config: TrainConfig, policy: str):
    """The `trl.GRPOConfig` for this run (the method's settings first, then `config.trl` on top)."""
    import torch
    from transformers import GenerationConfig
    from trl import GRPOConfig

    if config.deepspeed and importlib.util.find_spec("deepspeed") is None:
        raise ImportError(f"deepspeed: {config.deepspeed} needs DeepSpeed: pip install 'sam-veteran-fiftyone[train]'")
    bf16 = torch.cuda.is_available() and not config.use_cpu if config.bf16 is None else config.bf16
    try:
        suppress = GenerationConfig.from_pretrained(policy).suppress_tokens
    except OSError:
        suppress = None
    values = {name: getattr(config, name) for name in GRPO_FIELDS}
    if config.lora.enabled:
        values["learning_rate"] = config.lora.learning_rate
    if config.vllm.enabled:
        values.update(use_vllm=True, vllm_mode=config.vllm.mode,
                      vllm_gpu_memory_utilization=config.vllm.gpu_memory_utilization,
                      vllm_tensor_parallel_size=config.vllm.tensor_parallel_size,
                      vllm_server_base_url=config.vllm.server_base_url)
    values.update(
        bf16=bf16, scale_rewards="none", loss_type="grpo", dataloader_pin_memory=not config.use_cpu,
        remove_unused_columns=False, model_init_kwargs={"dtype": "bfloat16" if bf16 else "float32"},
        reward_weights=None, generation_kwargs={"suppress_tokens": list(suppress)} if suppress else None,
    )
    for key in ("scale_rewards",):
        if key in config.trl:
            raise ValueError(f"trl.{key} is set by the trainer (global-batch normalisation); remove it")
    values.update(config.trl)
    return GRPOConfig(**values)


def build_trainer(config: TrainConfig, view=None, callbacks: list | None = None, extra_rewards: list | None = None):
    """Everything up to `trainer.train()`: returns (trainer, records).

    `extra_rewards` are further TRL reward functions added to the method's (weight 1 unless `rewards.weights`
    names them), e.g. a length penalty.
    """
    from accelerate import PartialState
    from peft import LoraConfig as PeftLoraConfig
    from transformers import AutoProcessor

    from ..plugin.agent.segmenters import load_segmenter
    from .grpo import SamVeteranGRPOTrainer
    from .refresh import PolicyMaskRefresh
    from .rewards import EmbeddingCache, build_reward_functions

    device = PartialState(cpu=config.use_cpu).device  # first, so every later PartialState() is this one
    policy, segmenter_path = resolve_models(config)
    args = grpo_args(config, policy)
    family = policy_family(policy)
    if config.input_size:
        family = family.with_input_size(config.input_size)
    segmenter = load_segmenter(segmenter_path, device=str(device))
    if config.vllm.enabled and importlib.util.find_spec("vllm") is None:
        raise ImportError("vllm.enabled needs vLLM: pip install 'sam-veteran-fiftyone[vllm]'")
    samples = read_view(view if view is not None else load_view(config), config.data.prompt_field,
                        config.data.gt_field)
    records = build_tasks(samples, config.tasks, seed=config.seed)
    embeddings = EmbeddingCache(segmenter)
    prompts_per_step = args.generation_batch_size // args.num_generations
    if len(records) < prompts_per_step:
        raise ValueError(f"the view gives {len(records)} task items from {len(samples)} samples, fewer than the "
                         f"{prompts_per_step} prompts one generation batch needs: add samples, raise "
                         "tasks.items_per_sample or lower per_device_train_batch_size / gradient_accumulation_steps")
    rewards = build_reward_functions(family, config.rewards, segmenter, extra_rewards, embeddings)
    args.reward_weights = [config.rewards.weights.get(f.__name__, 1.0) for f in rewards]
    peft_config = None
    if config.lora.enabled:
        peft_config = PeftLoraConfig(r=config.lora.r, lora_alpha=config.lora.alpha, lora_dropout=config.lora.dropout,
                                     target_modules=config.lora.target_modules, task_type="CAUSAL_LM")
    processor = AutoProcessor.from_pretrained(policy, padding_side="left")
    trainer = SamVeteranGRPOTrainer(
        model=policy, reward_funcs=rewards, args=args,
        train_dataset=task_dataset(records, family, embeddings, config.tasks),
        processing_class=processor, peft_config=peft_config, sampling=config.sampling,
        callbacks=[MetricsLogCallback(Path(config.output_dir) / "metrics.jsonl"), *(callbacks or [])],
    )
    if config.freeze_vision:
        freeze_vision_tower(trainer.model)
    if config.tasks.policy_refresh_steps:
        trainer.add_callback(PolicyMaskRefresh(trainer, records, segmenter, family, config.tasks, seed=config.seed))
    return trainer, records


def policy_family(policy: str):
    """The prompt family of a policy to train: the one recorded in its folder, else its model type's."""
    from transformers import AutoConfig

    from ..plugin.agent.prompts import resolve_family

    return resolve_family(None, policy, AutoConfig.from_pretrained(policy).model_type)


def freeze_vision_tower(model) -> int:
    """Stop gradients into the vision encoder (parameters under a `visual` module, except its `merger`, the
    projection into the language model); returns how many tensors were frozen."""
    frozen = 0
    for name, parameter in model.named_parameters():
        parts = name.split(".")
        if "visual" in parts and "merger" not in parts[parts.index("visual"):]:
            parameter.requires_grad_(False)
            frozen += 1
    if not frozen:
        raise ValueError(f"freeze_vision: {type(model).__name__} has no parameter under a 'visual' module")
    return frozen


def latest_checkpoint(output_dir: str | Path) -> str | None:
    """The newest complete checkpoint: the trainer writes `trainer_state.json` last, so a folder without it was cut
    off while saving (a killed run) and cannot be resumed from."""
    checkpoints = sorted((p.parent for p in Path(output_dir).glob("checkpoint-*/trainer_state.json")),
                         key=lambda p: int(p.name.rsplit("-", 1)[1]))
    return str(checkpoints[-1]) if checkpoints else None


def save_final(trainer, directory: Path, family: str) -> None:
    """The policy as a full model + processor, with the prompt family it was trained with; a LoRA adapter is merged
    into a copy of the base weights."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    if trainer.is_deepspeed_enabled:
        state = trainer.accelerator.get_state_dict(trainer.deepspeed)
    else:
        state = None
    if not trainer.accelerator.is_main_process:
        return
    if hasattr(model, "merge_and_unload"):
        import copy

        model = copy.deepcopy(model).merge_and_unload()
        state = None
    model.save_pretrained(directory, state_dict=state)
    trainer.processing_class.save_pretrained(directory)
    record_family(directory, family)


def train(config: TrainConfig, view=None, extra_rewards: list | None = None,
          callbacks: list | None = None) -> TrainResult:
    """Run GRPO as configured on `view` (default: the configured dataset); returns where the final model and the
    metrics log are. `callbacks` are extra `transformers.TrainerCallback`s (progress reporting)."""
    from accelerate import PartialState

    state = PartialState(cpu=config.use_cpu)  # first, so every later PartialState() is this one
    output_dir = prepare_output_dir(config, state)
    policy, segmenter = resolve_models(config)
    if state.is_main_process:
        ran = dataclasses.replace(config, policy=policy, segmenter=segmenter)
        (output_dir / "config.yaml").write_text(yaml.safe_dump(config_to_dict(ran), sort_keys=False))
    state.wait_for_everyone()
    import torch

    threads = torch.get_num_threads()
    if config.torch_threads:
        torch.set_num_threads(config.torch_threads)
    try:
        return _train(config, view, output_dir, extra_rewards, callbacks)
    finally:
        torch.set_num_threads(threads)


def _train(config: TrainConfig, view, output_dir: Path, extra_rewards, callbacks) -> TrainResult:
    trainer, records = build_trainer(config, view, callbacks=callbacks, extra_rewards=extra_rewards)
    resume = config.resume_from_checkpoint
    if resume == "latest":
        resume = latest_checkpoint(output_dir)
        if resume is None:
            logger.warning("resume_from_checkpoint='latest' but %s holds no checkpoint: starting fresh", output_dir)
    elif resume and not Path(resume).is_dir():
        raise FileNotFoundError(f"checkpoint to resume from not found: {resume}")
    trainer.train(resume_from_checkpoint=resume)
    final = output_dir / "final"
    save_final(trainer, final, policy_family(resolve_models(config)[0]).name)
    trainer.accelerator.wait_for_everyone()
    return TrainResult(output_dir=output_dir, final_model=final, metrics_log=output_dir / "metrics.jsonl",
                       global_step=trainer.state.global_step, num_records=len(records))


def prepare_output_dir(config: TrainConfig, state) -> Path:
    """The output folder, made; one that holds another run is refused unless this run resumes it or overwrites it
    (then that run's files are removed). Every process reads the folder before the main process changes it."""
    output_dir = Path(config.output_dir)
    earlier = earlier_run_files(output_dir)
    state.wait_for_everyone()
    if earlier and not config.resume_from_checkpoint:
        if not config.overwrite_output_dir:
            raise FileExistsError(f"{output_dir} holds another run ({', '.join(p.name for p in earlier[:4])}): "
                                  "resume it (resume_from_checkpoint, --resume), overwrite it (overwrite_output_dir, "
                                  "--overwrite) or choose another output_dir")
        if state.is_main_process:
            for path in earlier:
                shutil.rmtree(path) if path.is_dir() else path.unlink()
    if state.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
    state.wait_for_everyone()
    return output_dir


def earlier_run_files(output_dir: Path) -> list[Path]:
    """What a run leaves in its output folder (generated tiny scenes aside), sorted."""
    names = ("config.yaml", "metrics.jsonl", "final", "runs")
    return sorted(p for p in output_dir.glob("*") if p.name in names or p.name.startswith("checkpoint-"))


def set_offline_defaults() -> None:
    """Tiny runs need no network: keep the Hub client from trying."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
