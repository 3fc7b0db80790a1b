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

The paper's self-improvement step is plain DPO, ``loss_type="sigmoid"`` (Rafailov et al. 2023, eq. 7:
-log sigmoid(beta * margin)), with beta 0.1, LoRA r 256 / alpha 128 / dropout 0.05 on all linear layers,
lr 5e-5, cosine schedule, warmup 0.1, batch 6, one epoch, grad-clip 0.3 (upstream DPO/ours.py). TRL's
``loss_type="ipo"`` is Identity-PO (Azar et al.), a different loss; it is reachable only by asking for it.

A custom loss plugs in as a DPOTrainer subclass that overrides ``compute_loss`` and is passed to
``build_trainer`` / ``train_dpo`` as ``trainer_class``; ``loss_type`` travels to the config unchanged.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Sequence

from ipo import IpoError

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
        help="pairs per device per step (paper: 6)")
    add("--per_device_eval_batch_size", type=int, default=d["per_device_eval_batch_size"],
        help="pairs per device per evaluation step (paper: 3)")
    add("--gradient_accumulation_steps", type=int, default=d["gradient_accumulation_steps"],
        help="micro-batches per optimizer step (paper: 1)")
    add("--lr_scheduler_type", default=d["lr_scheduler_type"], help="learning-rate schedule (paper: cosine)")
    add("--warmup_ratio", type=float, default=d["warmup_ratio"], help="fraction of steps spent warming up (paper: 0.1)")
    add("--max_grad_norm", type=float, default=d["max_grad_norm"], help="gradient clipping norm (paper: 0.3)")
    add("--optim", default=d["optim"],
        help="optimizer name as transformers spells it (paper: adamw_torch_fused, which also runs on CPU)")
    add("--beta", "--dpo_beta", dest="beta", type=float, default=d["beta"],
        help="DPO temperature beta (paper: 0.1); --dpo_beta is upstream's name, which upstream ignored")
    add("--loss_type", default=d["loss_type"],
        help="TRL loss type; the paper trains with 'sigmoid' (DPO). 'ipo' is TRL's Identity-PO (Azar et al.), "
             "not the paper's method")
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
    add("--eval_steps", type=int, default=d["eval_steps"], help="evaluate on the held-out pairs every N steps (paper: 300)")
    add("--report_to", default=d["report_to"], choices=list(REPORT_TO),
        help="where training metrics go; nothing leaves the machine unless you pick wandb (upstream: always wandb)")
    add("--wandb_project", default=d["wandb_project"],
        help="wandb project used with --report_to wandb (upstream parsed it but used $WANDB_PROJECT)")
    add("--merge_adapters", action="store_true", default=d["merge_adapters"],
        help="after training, merge the adapter into the base weights in a separate folder (upstream ignored this flag)")
    add("--dataloader_num_workers", type=int, default=d["dataloader_num_workers"],
        help="data-loading worker processes (upstream: 4; the pairs are pre-tokenised, so 0 is enough)")


def options_from_args(args: argparse.Namespace) -> TrainingOptions:
    """TrainingOptions from parsed flags; names that a parser lacks keep their defaults."""
    values = {f.name: getattr(args, f.name) for f in fields(TrainingOptions) if hasattr(args, f.name)}
    return TrainingOptions(**values)


def check_options(options: TrainingOptions) -> None:
    """One-line errors for settings TRL would reject late (after loading the model and the data)."""
    if options.loss_type not in TRL_LOSS_TYPES:
        raise IpoError(f"unknown --loss_type {options.loss_type!r}; TRL knows {', '.join(TRL_LOSS_TYPES)}")
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
        warmup_steps=options.warmup_ratio,  # a float in [0, 1) is a ratio of the total steps
        max_grad_norm=options.max_grad_norm,
        optim=options.optim,
        # loss
        loss_type=[options.loss_type],
        beta=options.beta,
        label_smoothing=options.label_smoothing,
        # data
        max_length=options.max_length,
        truncation_mode="keep_start",
        # precision, memory, device
        model_init_kwargs={"dtype": dtype},
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
        "num_train_epochs": config.num_train_epochs,
        "max_steps": config.max_steps,
        "per_device_train_batch_size": config.per_device_train_batch_size,
        "gradient_accumulation_steps": config.gradient_accumulation_steps,
        "bf16": config.bf16,
        "fp16": config.fp16,
        "weights_dtype": (config.model_init_kwargs or {}).get("dtype"),
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
    is loaded by TRL from the path (4-bit when ``load_in_4bit``); with LoRA the reference model is the
    same weights with the adapter disabled, so no second copy is held. Checkpoints go to
    ``output_dir/checkpoints``. Returns (trainer, dpo_config, lora_config).
    """
    import datasets
    from trl import DPOTrainer

    from ipo.modeling import load_tokenizer, quantization_config, resolve_device, split_gguf

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
    bnb = None
    if options.load_in_4bit:
        import torch

        compute = getattr(torch, resolve_precision(options.dtype, device)[0])
        bnb = quantization_config(compute)
    if tokenizer is None:
        tokenizer = load_tokenizer(model_name_or_path)
    train_dataset = datasets.Dataset.from_list(list(train_records))
    eval_dataset = datasets.Dataset.from_list(list(eval_records)) if eval_records else None
    trainer_class = trainer_class or DPOTrainer
    try:
        trainer = trainer_class(
            model=str(model_name_or_path),
            args=config,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=tokenizer,
            peft_config=lora_config,
            quantization_config=bnb,
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

    from ipo.runs import atomic_write_dir, atomic_write_json, atomic_write_jsonl

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
    atomic_write_json(output_dir / CONFIG_FILE, describe_config(
        config, lora_config, options, model=str(model_name_or_path), trainer_class=type(trainer).__name__,
        n_train_pairs=n_train, n_eval_pairs=n_eval, **(extra_config or {}),
    ))  # fmt: skip
    checkpoint_root = output_dir / CHECKPOINT_DIR
    last = get_last_checkpoint(str(checkpoint_root)) if checkpoint_root.is_dir() else None
    if last:
        logger.info("resuming training from %s", last)
    train_output = trainer.train(resume_from_checkpoint=last)
    metrics = dict(train_output.metrics)
    if trainer.eval_dataset is not None:
        metrics.update(trainer.evaluate())
    atomic_write_jsonl(output_dir / TRAIN_LOG_FILE, trainer.state.log_history)
    atomic_write_dir(adapter_dir, lambda tmp: trainer.save_model(str(tmp)))
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
    peft_model, base = load_peft_model(adapter_dir, base_model, dtype=dtype, device=device)
    merged = peft_model.merge_and_unload()
    source = tokenizer_from or (str(adapter_dir) if (adapter_dir / "tokenizer_config.json").is_file() else base)
    tokenizer = load_tokenizer(source)
    atomic_write_dir(output_dir, lambda tmp: (merged.save_pretrained(tmp, safe_serialization=True, max_shard_size="2GB"),
                                              tokenizer.save_pretrained(tmp)))  # fmt: skip
    logger.info("merged %s into %s -> %s", adapter_dir, base, output_dir)
    return merged
