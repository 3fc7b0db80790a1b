"""DPO training through TRL: build the trainer, train (resuming from the last checkpoint), save the adapter.

    build_trainer(...)                    -> a DPOTrainer (or any subclass passed as ``trainer_class``)
    train_dpo(...)                        train (resuming from the last checkpoint) and save the adapter
    train_summary(log_history)            the last logged values a sweep compares
    free_memory()                         release a model before loading the next one

The settings arrive as ``TrainingOptions`` (ipo/training/options.py); the trainer config is built by
ipo/training/config.py. A custom loss plugs in as a DPOTrainer subclass that overrides ``compute_loss``
and is passed to ``build_trainer`` / ``train_dpo`` as ``trainer_class``; ``loss_type`` travels to the
config unchanged. The project's own losses (ipo_sum, kto_pair, rpo_*) are picked automatically
(ipo/training/trainer.py).
"""

from __future__ import annotations

import gc
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from trl import DPOTrainer

from ipo import IpoError
from ipo.modeling import load_model, load_tokenizer, resolve_device, split_gguf
from ipo.runs import atomic_write_json, atomic_write_jsonl
from ipo.training.config import (
    apply_model_settings,
    build_dpo_config,
    build_lora_config,
    describe_config,
    resolve_precision,
)
from ipo.training.distributed import model_load_device, save_trained_model
from ipo.training.options import (
    ADAPTER_CONFIG,
    ADAPTER_DIR,
    CHECKPOINT_DIR,
    CONFIG_FILE,
    TRAIN_LOG_FILE,
    TrainingOptions,
    check_options,
    check_records_for_loss,
)
from ipo.training.trainer import RPO_SKIPPED, custom_trainer_class

logger = logging.getLogger("ipo")


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
    apply_model_settings(model, options)
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
