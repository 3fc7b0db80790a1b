"""Supervised fine-tuning through TRL's SFTTrainer: the stage before DPO/RPO (RPO starts from a model fine-tuned
on the chosen responses of its data). Same options, outputs and conventions as ipo/training/dpo.py."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from ipo import IpoError
from ipo.modeling import load_tokenizer, resolve_device, split_gguf
from ipo.runs import atomic_write_json, atomic_write_jsonl
from ipo.training.config import build_lora_config, build_sft_config
from ipo.training.distributed import save_trained_model
from ipo.training.dpo import TrainResult, free_memory, load_policy_model, resume_checkpoint, train_from
from ipo.training.options import (
    ADAPTER_CONFIG,
    ADAPTER_DIR,
    CHECKPOINT_DIR,
    FULL_MODEL_DIR,
    SFT_CONFIG_FILE,
    TRAIN_LOG_FILE,
    TrainingOptions,
)

logger = logging.getLogger("ipo")


def train_sft(
    model_name_or_path: str,
    train_records: Sequence[dict],
    options: TrainingOptions,
    output_dir: str | os.PathLike,
    eval_records: Sequence[dict] | None = None,
    callbacks=None,
    device: str = "auto",
    extra_config: dict | None = None,
) -> TrainResult:
    """SFT on {prompt, completion} records (text or messages) into ``output_dir/adapter``; resumable.

    The same outputs and conventions as ``train_dpo``: ``sft_config.json``, ``checkpoints/``,
    ``train_log.jsonl``, then ``adapter/`` (``model/`` with --no_lora), written only once complete; its
    presence means the stage is done.
    """
    import datasets
    from trl import SFTTrainer

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
    model = load_policy_model(model_name_or_path, options, device)
    output_dir.mkdir(parents=True, exist_ok=True)
    try:
        trainer = SFTTrainer(
            model=model,
            args=config,
            train_dataset=datasets.Dataset.from_list(list(train_records)),
            eval_dataset=datasets.Dataset.from_list(list(eval_records)) if eval_records else None,
            processing_class=load_tokenizer(model_name_or_path),
            peft_config=lora_config,
            callbacks=callbacks,
        )
    except (OSError, ValueError) as err:
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise IpoError(f"could not set up SFT on {model_name_or_path}: {message}")
    n_train = len(trainer.train_dataset)
    n_eval = len(trainer.eval_dataset) if trainer.eval_dataset is not None else 0
    lora = None
    if lora_config is not None:
        lora = {
            "r": lora_config.r,
            "alpha": lora_config.lora_alpha,
            "dropout": lora_config.lora_dropout,
            "target_modules": options.lora_target_modules,
        }
    atomic_write_json(
        output_dir / SFT_CONFIG_FILE,
        {
            "stage": "sft",
            "loss": "token-mean NLL on the completion tokens (TRL SFTTrainer)",
            "model": str(model_name_or_path),
            "max_length": config.max_length,
            "learning_rate": config.learning_rate,
            "weights_dtype": str(model.dtype).replace("torch.", ""),
            "load_in_4bit": options.load_in_4bit,
            "lora": lora,
            "n_train_examples": n_train,
            "n_eval_examples": n_eval,
            **(extra_config or {}),
            **({"trainer_overrides": dict(options.trainer_overrides)} if options.trainer_overrides else {}),
            "trainer": json.loads(json.dumps(config.to_dict(), default=str)),
        },
    )
    last = resume_checkpoint(output_dir / CHECKPOINT_DIR)
    if last:
        logger.info("resuming SFT from %s", last)
    metrics = train_from(trainer, last)
    if trainer.eval_dataset is not None:
        metrics.update(trainer.evaluate())
    atomic_write_jsonl(output_dir / TRAIN_LOG_FILE, trainer.state.log_history)
    save_trained_model(trainer, adapter_dir)
    del trainer
    free_memory()
    return TrainResult(adapter_dir, metrics, resumed_from=last, n_train=n_train, n_eval=n_eval)
