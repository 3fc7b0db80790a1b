"""Several processes (``accelerate launch``): who loads the weights where, who writes which file.

Under one process every helper is a no-op or returns the single process's answer. Which process is which,
and waiting for the others, come from ``ipo.parallel``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ipo.parallel import process_state


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


def fp32_master_launcher(trainer_overrides: dict | None = None) -> str | None:
    """ "DeepSpeed" or "FSDP" when the run is launched under one of them (accelerate launch with a DeepSpeed or
    FSDP config, or TRL's ``deepspeed`` / ``fsdp`` settings), else None. Both keep float32 master weights of
    half-precision weights (DeepSpeed's bf16/fp16 optimizers; accelerate upcasts FSDP's parameters to float32
    when mixed precision is on), so full fine-tuning may load bf16 weights there."""
    overrides = trainer_overrides or {}

    def flag(name: str) -> bool:
        return os.environ.get(name, "false").strip().lower() in ("1", "true", "yes")

    if flag("ACCELERATE_USE_DEEPSPEED") or overrides.get("deepspeed"):
        return "DeepSpeed"
    if flag("ACCELERATE_USE_FSDP") or overrides.get("fsdp"):
        return "FSDP"
    return None


def save_trained_model(trainer, target: str | os.PathLike) -> None:
    """``trainer.save_model`` into ``target``, which appears only once complete, also under several processes.

    Every process takes part in the save (ZeRO-3 and FSDP gather the weights), the main one writes a
    temporary folder and renames it; each process having its own temporary folder (upstream's and a plain
    ``atomic_write_dir``) would let an empty folder replace the saved one.
    """
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
