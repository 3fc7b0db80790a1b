"""LoRA adapters after training: read an adapter folder, apply it to its base, merge it into a separate folder."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from ipo import IpoError
from ipo.modeling import load_model, load_tokenizer
from ipo.runs import atomic_write_dir
from ipo.training.options import ADAPTER_CONFIG

logger = logging.getLogger("ipo")


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
