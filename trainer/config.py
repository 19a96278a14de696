"""Training configuration: one dataclass, read from YAML, defaults as in the paper.

A YAML file mirrors `TrainConfig` (sections `data`, `tasks`, `rewards`, `sampling`, `lora`, `vllm`, and the
top-level fields); unknown keys are errors, so a typo never silently falls back to a default. The top-level fields
named in `GRPO_FIELDS` are `trl.GRPOConfig` fields of the same name with the paper's defaults; `trl` passes any
further `GRPOConfig` / `transformers.TrainingArguments` field through unchanged. `apply_overrides` is the one way
the command line and the App's Train operator change a loaded config.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .rewards import TASKS, RewardConfig
from .tasks import TaskConfig

CONFIG_DIR = Path(__file__).parent / "configs"


@dataclass
class DataConfig:
    """Where the training samples come from: a FiftyOne dataset, optionally narrowed by a serialized view."""

    dataset: str | None = None
    view: list[dict] | None = None  # view stages as `view._serialize()` writes them
    tags: list[str] | None = None  # keep samples with any of these tags (e.g. ["train"])
    prompt_field: str = "query"  # the samples' text query (`query_field` in 0.1, still read, deprecated)
    gt_field: str = "ground_truth"
    max_samples: int | None = None


@dataclass
class SamplingConfig:
    """Dynamic sampling (DAPO-inspired): oversample, then keep a diverse group; off after `steps`."""

    enabled: bool = True
    # candidates generated per kept completion: one number, or one per task (clicks need more than boxes to find
    # the 1:2:2:1 mix), e.g. {grounding: 2, mask: 4, auxiliary: 4}; a task left out gets 2
    oversample: int | dict[str, int] = 2
    nms_iou: float = 0.8
    action_ratio: tuple[float, float, float, float] = (1, 2, 2, 1)  # stop, positive, negative, both
    steps: int = 300
    min_kept_share: float = 0.25  # warn when a task's share of groups meeting the target stays below this ...
    warn_window: int = 10  # ... over this many consecutive generation batches

    def __post_init__(self) -> None:
        values = self.oversample.values() if isinstance(self.oversample, dict) else [self.oversample]
        unknown = set(self.oversample) - set(TASKS) if isinstance(self.oversample, dict) else set()
        if unknown or any(not isinstance(v, int) or v < 1 for v in values):
            raise ValueError(f"sampling.oversample must be an integer >= 1 or a mapping of {TASKS} to such "
                             f"integers, got {self.oversample!r}")

    def factor(self, task: str) -> int:
        """How many times as many candidates as kept completions `task` generates."""
        return self.oversample.get(task, 2) if isinstance(self.oversample, dict) else self.oversample


@dataclass
class LoraConfig:
    enabled: bool = False
    r: int = 64
    alpha: int = 128
    dropout: float = 0.05
    # the language model's projections only (the vision tower's blocks use other names or stay frozen)
    target_modules: str = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
    # replaces `learning_rate` when LoRA is on: the paper's 1e-6 is a full fine-tuning rate, and a low-rank update
    # scaled by alpha / r moves far less per step; LoRA GRPO recipes use 1e-5 to 1e-4
    learning_rate: float = 1e-5


@dataclass
class VllmConfig:
    """Rollouts with vLLM (the `vllm` extra) instead of transformers' `generate`: TRL's `use_vllm`.

    "colocate": a vLLM engine in every training process, sharing its GPU (`gpu_memory_utilization` of it);
    "server": one `trl vllm-serve` process on GPUs of its own, reached at `server_base_url`.
    """

    enabled: bool = False
    mode: str = "colocate"
    gpu_memory_utilization: float = 0.3
    tensor_parallel_size: int = 1
    server_base_url: str | None = None  # e.g. http://10.0.0.5:8000 (server mode)

    def __post_init__(self) -> None:
        if self.mode not in ("colocate", "server"):
            raise ValueError(f"vllm.mode is 'colocate' or 'server', got {self.mode!r}")


@dataclass
class TrainConfig:
    policy: str = "Qwen/Qwen2.5-VL-7B-Instruct"
    segmenter: str = "vit_h"
    output_dir: str = "runs/sam-veteran"
    input_size: tuple[int, int] | None = None  # overrides the family's policy image size, as AgentConfig does
    tiny: bool = False  # tiny local models and a generated dataset: offline smoke runs
    tiny_samples: int = 8
    data: DataConfig = field(default_factory=DataConfig)
    tasks: TaskConfig = field(default_factory=TaskConfig)
    rewards: RewardConfig = field(default_factory=RewardConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    vllm: VllmConfig = field(default_factory=VllmConfig)
    freeze_vision: bool = False  # keep the vision encoder fixed (its merger into the language model still trains)
    # GRPO, as in the paper: 16 prompts x 8 rollouts per step, AdamW lr 1e-6, weight decay 0.01, KL 0.005
    num_generations: int = 8
    per_device_train_batch_size: int = 8
    gradient_accumulation_steps: int = 16
    learning_rate: float = 1e-6
    weight_decay: float = 0.01
    beta: float = 0.005
    temperature: float = 1.0
    max_completion_length: int = 512
    num_train_epochs: float = 1.0
    lr_scheduler_type: str = "constant"  # the paper mentions no decay; "linear" is TRL's default (decays to 0)
    max_steps: int = -1
    save_steps: int = 100
    logging_steps: int = 1
    seed: int = 42
    bf16: bool | None = None  # default: on when a GPU is present
    gradient_checkpointing: bool = True
    deepspeed: str | None = None  # a DeepSpeed JSON config, relative paths resolved against the YAML file
    use_cpu: bool = False
    torch_threads: int | None = None  # CPU threads for torch; 1 is far faster for tiny models on a busy machine
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"])
    resume_from_checkpoint: str | None = None  # a checkpoint folder, or "latest" for the newest in output_dir
    overwrite_output_dir: bool = False  # start afresh in an output_dir that holds another run (its files removed)
    trl: dict[str, Any] = field(default_factory=dict)


# TrainConfig's fields that are `trl.GRPOConfig` fields of the same name, passed through as they are.
GRPO_FIELDS = ("output_dir", "num_generations", "per_device_train_batch_size", "gradient_accumulation_steps",
               "learning_rate", "weight_decay", "beta", "temperature", "max_completion_length", "num_train_epochs",
               "lr_scheduler_type", "max_steps", "save_steps", "logging_steps", "seed", "gradient_checkpointing",
               "deepspeed", "use_cpu", "report_to")

# Old names still read, with a warning, for one release.
DEPRECATED = {("data", "query_field"): "prompt_field"}


def _build(cls, values: dict, where: str):
    """A dataclass from a dict, recursing into nested dataclasses; unknown keys raise with their location."""
    if not isinstance(values, dict):
        raise ValueError(f"{where or 'config'}: expected a mapping, got {type(values).__name__}")
    for (section, old), new in DEPRECATED.items():
        if where == section and old in values:
            warnings.warn(f"{section}.{old} is deprecated: use {section}.{new}", FutureWarning, stacklevel=3)
            values = {(new if k == old else k): v for k, v in values.items()}
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in {where or 'config'}; known: {sorted(fields)}")
    kwargs = {}
    for name, value in values.items():
        default = fields[name].default_factory() if fields[name].default_factory is not dataclasses.MISSING else None
        if dataclasses.is_dataclass(default) and isinstance(value, dict):
            value = _build(type(default), value, f"{where}.{name}" if where else name)
        elif isinstance(value, list) and name in ("input_size", "action_ratio", "iou_gain_tiers", "defect_scale"):
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)


def config_from_dict(values: dict) -> TrainConfig:
    return _build(TrainConfig, values, "")


def apply_overrides(config: TrainConfig, overrides: dict[str, Any]) -> TrainConfig:
    """A copy of `config` with dotted keys set (``{"data.dataset": "x", "max_steps": 5}``); None values are left
    out, so unset command-line options and empty form fields keep the config's value. Checked like a YAML file."""
    values = config_to_dict(config)
    for key, value in overrides.items():
        if value is None:
            continue
        *path, name = key.split(".")
        target = values
        for part in path:
            target = target[part]
        target[name] = value
    return config_from_dict(values)


def load_config(path: str | Path) -> TrainConfig:
    """Read a YAML config; a relative `deepspeed` path is taken relative to the YAML file."""
    path = Path(path)
    config = config_from_dict(yaml.safe_load(path.read_text()) or {})
    if config.deepspeed and not Path(config.deepspeed).is_absolute():
        config.deepspeed = str((path.parent / config.deepspeed).resolve())
    return config


def config_to_dict(config: TrainConfig) -> dict:
    """The config as plain YAML-able data (tuples become lists)."""
    def plain(value):
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(dataclasses.asdict(config))
