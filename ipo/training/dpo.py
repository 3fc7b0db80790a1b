"""DPO training through TRL: build the trainer, train (resuming from the last checkpoint), save the adapter.

    build_trainer(...)                    -> a DPOTrainer (or any subclass passed as ``trainer_class``)
    train_dpo(...)                        train (resuming from the last checkpoint) and save the adapter
    train_summary(log_history)            the last logged values a sweep compares
    resume_checkpoint(checkpoint_root)    the newest complete checkpoint (an interrupted save is skipped)
    train_from(trainer, checkpoint)       train; the metrics' train_loss covers every step, also after a resume
    free_memory()                         release a model before loading the next one

The settings arrive as ``TrainingOptions`` (ipo/training/options.py); the trainer config is built by
ipo/training/config.py. A custom loss plugs in as a DPOTrainer subclass that overrides ``compute_loss``
and is passed to ``build_trainer`` / ``train_dpo`` as ``trainer_class``; ``loss_type`` travels to the
config unchanged. The project's own losses (ipo_sum, kto_pair, rpo_*) are picked automatically
(ipo/training/trainer.py).
"""

from __future__ import annotations

import gc
import json
import logging
import math
import os
import re
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
    training_weights_dtype,
)
from ipo.training.distributed import fp32_master_launcher, model_load_device, save_trained_model
from ipo.training.options import (
    ADAPTER_CONFIG,
    ADAPTER_DIR,
    CHECKPOINT_DIR,
    CONFIG_FILE,
    TRAIN_LOG_FILE,
    TrainingOptions,
    check_options,
    check_records_for_loss,
    warmup_warning,
)
from ipo.training.trainer import RPO_SKIPPED, custom_trainer_class

logger = logging.getLogger("ipo")

TRAINER_STATE = "trainer_state.json"  # the Trainer writes it last in a checkpoint: its presence marks a complete save
WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin", "model.safetensors", "pytorch_model.bin")
WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
WEIGHT_FOLDERS = ("global_step", "pytorch_model_fsdp")  # DeepSpeed's and FSDP's sharded states


@dataclass
class TrainResult:
    adapter_dir: Path
    metrics: dict  # train (and eval) metrics of this run; {} when the adapter already existed
    resumed_from: str | None = None
    skipped: bool = False
    n_train: int = 0  # pairs left after TRL's length filter
    n_eval: int = 0


def load_policy_model(model_name_or_path: str | os.PathLike, options: TrainingOptions, device: str):
    """The model to train, in the dtype its weights train in (float32 masters for full fine-tuning outside
    DeepSpeed/FSDP), on this process's device, with the options' model settings applied."""
    weights_dtype = training_weights_dtype(options, device, fp32_master_launcher(options.trainer_overrides))
    model, _, _ = load_model(
        str(model_name_or_path),
        dtype=weights_dtype,
        device=model_load_device(device, options.load_in_4bit),
        quantized=options.load_in_4bit,
    )
    apply_model_settings(model, options)
    return model


def build_trainer(
    model_name_or_path: str,
    train_records: Sequence[dict],
    options: TrainingOptions,
    output_dir: str | os.PathLike,
    eval_records: Sequence[dict] | None = None,
    trainer_class=None,
    tokenizer=None,
    callbacks=None,
    device: str = "auto",
):
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
    model = load_policy_model(model_name_or_path, options, device)
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


def train_dpo(
    model_name_or_path: str,
    train_records: Sequence[dict],
    options: TrainingOptions,
    output_dir: str | os.PathLike,
    eval_records: Sequence[dict] | None = None,
    trainer_class=None,
    callbacks=None,
    device: str = "auto",
    extra_config: dict | None = None,
) -> TrainResult:
    """Train an adapter into ``output_dir/adapter`` (with its tokenizer); resume from the last complete checkpoint.

    Writes, in ``output_dir``: ``dpo_config.json`` (resolved settings, before training starts),
    ``checkpoints/checkpoint-N`` every ``save_steps`` steps, ``train_log.jsonl`` (the trainer's log
    history) and finally ``adapter/``, which appears only once it is complete (written to a temporary
    folder, then renamed). An existing ``adapter/`` means the stage is done: nothing is retrained.
    """
    output_dir = Path(output_dir)
    adapter_dir = output_dir / ADAPTER_DIR
    if (adapter_dir / ADAPTER_CONFIG).is_file() or (adapter_dir / "config.json").is_file():
        logger.info("adapter already trained: %s", adapter_dir)
        return TrainResult(adapter_dir, {}, skipped=True)
    check_options(options)
    output_dir.mkdir(parents=True, exist_ok=True)
    trainer, config, lora_config = build_trainer(
        model_name_or_path,
        train_records,
        options,
        output_dir,
        eval_records=eval_records,
        trainer_class=trainer_class,
        callbacks=callbacks,
        device=device,
    )
    n_train = len(trainer.train_dataset)
    n_eval = len(trainer.eval_dataset) if trainer.eval_dataset is not None else 0
    if n_train < len(train_records):
        logger.warning(
            "%d of %d training pairs dropped: their prompt alone fills --max_length %d",
            len(train_records) - n_train,
            len(train_records),
            options.max_length,
        )
    if n_train == 0:
        raise IpoError(f"every training pair's prompt is longer than --max_length {options.max_length}")
    warning = warmup_warning(options, planned_steps(trainer))
    if warning:
        logger.warning(warning)
    weights_dtype = str(trainer.model.get_base_model().dtype if options.use_lora else trainer.model.dtype)
    atomic_write_json(
        output_dir / CONFIG_FILE,
        describe_config(
            config,
            lora_config,
            options,
            model=str(model_name_or_path),
            trainer_class=type(trainer).__name__,
            weights_dtype=weights_dtype.replace("torch.", ""),
            n_train_pairs=n_train,
            n_eval_pairs=n_eval,
            **(extra_config or {}),
        ),
    )
    last = resume_checkpoint(output_dir / CHECKPOINT_DIR)
    if last:
        logger.info("resuming training from %s", last)
    metrics = train_from(trainer, last)
    if trainer.eval_dataset is not None:
        final_evals = [
            e for e in trainer.state.log_history if "eval_loss" in e and e.get("step") == trainer.state.global_step
        ]
        metrics.update(
            {k: v for k, v in final_evals[-1].items() if k.startswith("eval_")} if final_evals else trainer.evaluate()
        )
    atomic_write_jsonl(output_dir / TRAIN_LOG_FILE, trainer.state.log_history)
    save_trained_model(trainer, adapter_dir)
    if options.use_lora and not (adapter_dir / ADAPTER_CONFIG).is_file():
        raise IpoError(f"training finished but {adapter_dir} has no {ADAPTER_CONFIG}")
    del trainer
    free_memory()
    return TrainResult(adapter_dir, metrics, resumed_from=last, n_train=n_train, n_eval=n_eval)


def checkpoint_problem(folder: str | os.PathLike) -> str | None:
    """Why ``checkpoint-N/`` cannot be resumed from (a save killed part-way), or None when it is complete: the
    Trainer writes the weights, the optimizer, the RNG states and, last, trainer_state.json."""
    folder = Path(folder)
    try:
        json.loads((folder / TRAINER_STATE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return f"no {TRAINER_STATE}"
    except (OSError, ValueError):
        return f"{TRAINER_STATE} is cut off"
    names = set(os.listdir(folder))
    if names & set(WEIGHT_FILES) or any(name.startswith(WEIGHT_FOLDERS) for name in names):
        return None
    for index in (name for name in WEIGHT_INDEXES if name in names):
        try:
            shards = set(json.loads((folder / index).read_text(encoding="utf-8"))["weight_map"].values())
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return f"{index} is unreadable"
        missing = sorted(shard for shard in shards if not (folder / shard).is_file())
        return f"no {missing[0]}" if missing else None
    return "no model or adapter weights"


def resume_checkpoint(checkpoint_root: str | os.PathLike) -> str | None:
    """The newest complete ``checkpoint-N`` under ``checkpoint_root``, or None (start from the beginning).

    A kill during a save leaves a newest checkpoint without trainer_state.json (or empty): it is skipped, with
    one log line naming it and what it lacks, and the resumed run writes that step's checkpoint again.
    """
    root = Path(checkpoint_root)
    if not root.is_dir():
        return None
    numbered = ((re.fullmatch(r"checkpoint-(\d+)", entry.name), entry) for entry in root.iterdir())
    found = sorted(((int(m.group(1)), entry) for m, entry in numbered if m and entry.is_dir()), reverse=True)
    skipped = []
    for _, folder in found:
        problem = checkpoint_problem(folder)
        if problem is None:
            break
        skipped.append(f"{folder.name} ({problem})")
    else:
        folder = None
    if skipped:
        then = f"resuming from {folder.name}" if folder else "starting from the beginning"
        logger.warning(
            "skipping incomplete checkpoint(s) left by an interrupted save: %s; %s", ", ".join(skipped), then
        )
    return str(folder) if folder else None


def whole_run_train_loss(
    log_history: Sequence[dict], session_loss: float, resumed_step: int, global_step: int
) -> float | None:
    """The mean training loss over every step of a run resumed at ``resumed_step``, from its log history.

    The Trainer's own ``train_loss`` covers only the steps run since the resume. Each logged ``loss`` is the
    mean over its logging window (the steps since the previous log; after a resume, since the resume), and
    ``session_loss`` (this session's train_loss) gives the steps after the last log. Steps between the last log
    and the checkpoint of an interrupted session were never logged and are left out (none when save_steps is a
    multiple of logging_steps, as by default).
    """
    total = covered = in_session = 0.0
    previous = 0
    for entry in log_history:
        if "loss" not in entry or "step" not in entry or any(key.startswith("eval_") for key in entry):
            continue
        step = entry["step"]
        if step > resumed_step:
            previous = max(previous, resumed_step)
            in_session += entry["loss"] * (step - previous)
        total += entry["loss"] * (step - previous)
        covered += step - previous
        previous = step
    rest = global_step - max(previous, resumed_step)
    if rest > 0:
        total += session_loss * (global_step - resumed_step) - in_session
        covered += rest
    return total / covered if covered else None


def train_from(trainer, checkpoint: str | None) -> dict:
    """``trainer.train()`` from ``checkpoint`` (resume_checkpoint's; None: from the start) and its metrics. After a
    resume, ``train_loss`` (in the metrics and in the log history's last entry, so train_log.jsonl and
    train_summary agree) covers the whole run, not only this session (whole_run_train_loss)."""
    resumed_step = 0
    if checkpoint:  # read now: the checkpoint may be rotated away during training
        resumed_step = json.loads((Path(checkpoint) / TRAINER_STATE).read_text(encoding="utf-8"))["global_step"]
    metrics = dict(trainer.train(resume_from_checkpoint=checkpoint).metrics)
    if not checkpoint or "train_loss" not in metrics:
        return metrics
    history = trainer.state.log_history
    whole = whole_run_train_loss(history, metrics["train_loss"], resumed_step, trainer.state.global_step)
    if whole is not None:
        metrics["train_loss"] = whole
        final = [entry for entry in history if "train_loss" in entry]
        if final:
            final[-1]["train_loss"] = whole
    return metrics


def planned_steps(trainer) -> int:
    """The optimizer steps the trainer will run: --max_steps, else the epochs over its training data (batches
    of per-device size on every process, accumulated; RPO's balanced unpaired batches may drop a few more)."""
    config = trainer.args
    if config.max_steps > 0:
        return config.max_steps
    batches = math.ceil(len(trainer.train_dataset) / (config.per_device_train_batch_size * config.world_size))
    return math.ceil(math.ceil(batches / config.gradient_accumulation_steps) * config.num_train_epochs)


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
