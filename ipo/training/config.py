"""The trainer configs: the only module that names TRL's and PEFT's arguments.

    build_dpo_config(options, out_dir)    -> trl.DPOConfig (precision, lengths, checkpoints, logging resolved)
    build_sft_config(options, out_dir)    -> trl.SFTConfig with the same Trainer settings
    build_lora_config(options)            -> peft.LoraConfig
    describe_config(config, lora, ...)    the resolved settings as a JSON-able dict (dpo_config.json)

The paper's self-improvement step is plain DPO, ``loss_type="sigmoid"`` (Rafailov et al. 2023, eq. 7:
-log sigmoid(beta * margin)), with beta 0.1, LoRA r 256 / alpha 128 / dropout 0.05 on all linear layers,
lr 5e-5, cosine schedule, warmup 0.1, batch 6, one epoch, grad-clip 0.3 (upstream DPO/ours.py). TRL's
``loss_type="ipo"`` is Identity-PO (Azar et al.), a different loss; it is reachable only by asking for it.
"""

from __future__ import annotations

import json
import os
from dataclasses import fields, replace

from ipo.modeling import resolve_device
from ipo.training.options import TrainingOptions, check_options, lora_targets


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



def build_sft_config(options: TrainingOptions, output_dir: str | os.PathLike, device: str = "auto",
                     has_eval: bool = False):  # fmt: skip
    """trl.SFTConfig with the same Trainer settings as build_dpo_config; the loss is TRL's token-mean NLL on
    the completion only (prompt tokens masked)."""
    from transformers import TrainingArguments
    from trl import SFTConfig

    dpo_config = build_dpo_config(replace(options, loss_type="sigmoid"), output_dir, device=device, has_eval=has_eval)
    shared = {f.name: getattr(dpo_config, f.name) for f in fields(TrainingArguments) if f.init}
    return SFTConfig(**shared, model_init_kwargs=dpo_config.model_init_kwargs, max_length=options.max_length,
                     truncation_mode="keep_start", completion_only_loss=True)  # fmt: skip

