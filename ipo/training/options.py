"""The training settings in the project's own names (``TrainingOptions``, the paper's defaults), their
one-line checks, and the file names a training run writes.

TrainingOptions is a plain dataclass: the command-line layer (ipo/cli/training.py) fills it, the trainer
configs are built from it by ipo/training/config.py (the only module that names TRL's arguments).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from ipo import IpoError
from ipo.training.losses import EMBEDDING_LOSS_TYPES, LOSS_TYPES, UNPAIRED_LOSS_TYPES

# TRL 1.16's DPOConfig.loss_type whitelist (trl/trainer/dpo_config.py). TRL only checks it at the first
# training step, after tokenising the whole dataset, so we check it up front.
TRL_LOSS_TYPES = (
    "sigmoid",
    "hinge",
    "ipo",
    "exo_pair",
    "nca_pair",
    "robust",
    "bco_pair",
    "sppo_hard",
    "aot",
    "aot_unpaired",
    "apo_zero",
    "apo_down",
    "discopop",
    "sft",
    "sigmoid_norm",
)
REPORT_TO = ("none", "wandb", "tensorboard")
ADAPTER_CONFIG = "adapter_config.json"
CHECKPOINT_DIR = "checkpoints"
ADAPTER_DIR = "adapter"
CONFIG_FILE = "dpo_config.json"
TRAIN_LOG_FILE = "train_log.jsonl"
SFT_CONFIG_FILE = "sft_config.json"
FULL_MODEL_DIR = "model"  # SFT without LoRA saves a whole model (with LoRA: ADAPTER_DIR)
# Options that mean nothing to SFT: their flags are hidden from DPO/sft.py's --help.
DPO_ONLY_OPTIONS = (
    "beta",
    "loss_type",
    "label_smoothing",
    "precompute_ref_log_probs",
    "max_prompt_length",
    "rpo_distance_temperature",
    "rpo_embedding_model",
    "rpo_diagonal_weight",
)


@dataclass
class TrainingOptions:
    """Our names for the training settings; defaults are the paper's (upstream DPO/ours.py)."""

    learning_rate: float = 5e-5
    num_train_epochs: float = 1.0
    max_steps: int = -1  # -1: run num_train_epochs
    per_device_train_batch_size: int = 6
    per_device_eval_batch_size: int = 3
    gradient_accumulation_steps: int = 1
    lr_scheduler_type: str = "cosine"
    warmup_ratio: float = 0.1
    max_grad_norm: float = 0.3
    optim: str = "adamw_torch_fused"
    loss_type: str = "sigmoid"
    beta: float = 0.1
    label_smoothing: float = 0.0
    max_length: int = 1024
    use_lora: bool = True
    lora_r: int = 256
    lora_alpha: int = 128
    lora_dropout: float = 0.05
    lora_target_modules: str = "all-linear"
    load_in_4bit: bool = False
    dtype: str = "auto"
    gradient_checkpointing: bool = False
    precompute_ref_log_probs: bool = False
    seed: int = 42
    logging_steps: int = 25
    save_steps: int = 500
    save_total_limit: int = 2
    eval_steps: int = 300
    report_to: str = "none"
    wandb_project: str | None = None
    run_name: str | None = None
    dataloader_num_workers: int = 0
    merge_adapters: bool = False
    # Custom preference losses (ipo/training/trainer.py): ipo.training.losses settings and RPO's data options
    max_prompt_length: int | None = None
    warmup_steps: int = 0
    rpo_distance_temperature: float = 0.5
    rpo_embedding_model: str = "all-MiniLM-L6-v2"
    rpo_diagonal_weight: float = 0.8
    # Any other TRL trainer / model setting under TRL's own name (DPOConfig, SFTConfig, ModelConfig), set on the
    # command line or in a recipe: applied last by ipo/training/config.py; empty = the settings above decide.
    trainer_overrides: dict = field(default_factory=dict)


def check_options(options: TrainingOptions) -> None:
    """One-line errors for settings TRL would reject late (after loading the model and the data)."""
    if options.loss_type not in TRL_LOSS_TYPES and options.loss_type not in LOSS_TYPES:
        raise IpoError(
            f"unknown --loss_type {options.loss_type!r}; choose one of "
            f"{', '.join(dict.fromkeys((*LOSS_TYPES, *TRL_LOSS_TYPES)))}"
        )
    check_loss_options(options)
    if options.loss_type == "exo_pair" and options.label_smoothing <= 0:
        raise IpoError("--loss_type exo_pair needs --label_smoothing > 0 (the EXO paper uses 1e-3)")
    for name in (
        "learning_rate",
        "per_device_train_batch_size",
        "per_device_eval_batch_size",
        "gradient_accumulation_steps",
        "beta",
        "max_length",
        "lora_r",
        "lora_alpha",
        "logging_steps",
        "save_steps",
        "eval_steps",
        "num_train_epochs",
    ):
        if getattr(options, name) <= 0:
            raise IpoError(f"--{name} must be positive, got {getattr(options, name)}")
    if options.max_steps == 0 or options.max_steps < -1:  # the Trainer would silently run whole epochs instead
        raise IpoError(f"--max_steps must be positive (or -1: run --num_train_epochs), got {options.max_steps}")
    if not 0 <= options.label_smoothing < 0.5:
        raise IpoError(f"--label_smoothing must be in [0, 0.5), got {options.label_smoothing}")
    if options.max_grad_norm < 0:
        raise IpoError(f"--max_grad_norm must be >= 0 (0: no clipping), got {options.max_grad_norm}")
    if options.dataloader_num_workers < 0:
        raise IpoError(f"--dataloader_num_workers must be >= 0, got {options.dataloader_num_workers}")
    if not 0 <= options.warmup_ratio < 1:
        raise IpoError(f"--warmup_ratio must be in [0, 1), got {options.warmup_ratio}")
    if not 0 <= options.lora_dropout < 1:
        raise IpoError(f"--lora_dropout must be in [0, 1), got {options.lora_dropout}")
    if "lm_head" in lora_targets(options.lora_target_modules):
        raise IpoError("lm_head cannot carry a LoRA adapter in TRL's DPO (it reads lm_head.weight directly)")


# transformers' schedules that ignore the warmup (get_scheduler): every other one starts at learning rate 0
NO_WARMUP_SCHEDULES = ("constant", "reduce_lr_on_plateau")


def warmup_warning(options: TrainingOptions, total_steps: int) -> str | None:
    """A warning when the warmup leaves the run's only optimizer steps at learning rate 0, or never lets the
    learning rate reach its peak; None otherwise.

    transformers' warmup multiplies the peak by step/warmup, so the first step always runs at 0; the warmup is
    --warmup_steps when >= 1, else ceil(total_steps * --warmup_ratio) (TrainingArguments.get_warmup_steps).
    A run of one step with any warmup therefore trains nothing (its single update has learning rate 0)."""
    if total_steps <= 0 or options.lr_scheduler_type in NO_WARMUP_SCHEDULES:
        return None
    warmup = options.warmup_steps if options.warmup_steps >= 1 else math.ceil(total_steps * options.warmup_ratio)
    if warmup <= 0:
        return None
    setting = (
        f"--warmup_steps {options.warmup_steps}"
        if options.warmup_steps >= 1
        else f"--warmup_ratio {options.warmup_ratio}"
    )
    if total_steps == 1:
        return (
            f"the only optimizer step runs at learning rate 0 ({setting} over 1 step: the warmup starts at 0), "
            "so the model does not change; pass --warmup_ratio 0 (and --warmup_steps 0), or more steps"
        )
    if warmup >= total_steps:
        return (
            f"the warmup ({warmup} steps from {setting}) covers all {total_steps} steps: the first runs at learning "
            f"rate 0 and the peak --learning_rate {options.learning_rate:g} is never reached; lower the warmup"
        )
    return None


def lora_targets(spec: str) -> str | list[str]:
    spec = spec.strip()
    if spec == "all-linear":
        return spec
    return [name.strip() for name in spec.split(",") if name.strip()]


def check_loss_options(options: TrainingOptions) -> None:
    """One-line errors for the custom losses' settings (called by check_options)."""
    if not options.rpo_distance_temperature > 0:
        raise IpoError(
            f"--rpo_distance_temperature must be > 0 (RPO divides the prompt distance by it), "
            f"got {options.rpo_distance_temperature}"
        )
    if not 0 <= options.rpo_diagonal_weight <= 1:
        raise IpoError(f"--rpo_diagonal_weight must be in [0, 1], got {options.rpo_diagonal_weight}")
    if options.warmup_steps < 0:
        raise IpoError(f"--warmup_steps must be >= 0, got {options.warmup_steps}")
    if options.max_prompt_length is not None and not 0 < options.max_prompt_length < options.max_length:
        raise IpoError(f"--max_prompt_length must be in [1, --max_length), got {options.max_prompt_length}")
    if options.loss_type in UNPAIRED_LOSS_TYPES:
        size = options.per_device_train_batch_size
        if size < 2 or size % 2:
            raise IpoError(
                f"--loss_type {options.loss_type} needs an even --per_device_train_batch_size >= 2 (half "
                f"desirable, half undesirable examples per micro-batch), got {size}"
            )
        if options.precompute_ref_log_probs:
            raise IpoError(f"--precompute_ref_log_probs is not supported with --loss_type {options.loss_type}")
    if options.loss_type in EMBEDDING_LOSS_TYPES and not options.rpo_embedding_model.strip():
        raise IpoError(f"--loss_type {options.loss_type} needs --rpo_embedding_model")


def check_records_for_loss(records: Sequence[dict], options: TrainingOptions) -> None:
    """Paired losses need {prompt, chosen, rejected} rows, rpo_unpaired needs {prompt, completion, label}."""
    if not records:
        return
    unpaired_rows = "label" in records[0] and "completion" in records[0]
    if options.loss_type in UNPAIRED_LOSS_TYPES and not unpaired_rows:
        raise IpoError(
            f"--loss_type {options.loss_type} trains on unpaired (prompt, completion, label) examples; "
            "split the pairs first (ipo.training.preference_data.to_unpaired, --unpaired)"
        )
    if options.loss_type not in UNPAIRED_LOSS_TYPES and unpaired_rows:
        raise IpoError(f"--loss_type {options.loss_type} needs chosen/rejected pairs, not unpaired examples")
