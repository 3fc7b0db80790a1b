"""LoRA adapters after training: read an adapter folder, apply it to its base, merge it into a separate folder."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

from ipo import IpoError
from ipo.modeling import load_model, load_tokenizer
from ipo.runs import TEMPORARY_NAME, atomic_write_dir
from ipo.training.options import ADAPTER_CONFIG

logger = logging.getLogger("ipo")

HALF_OR_FULL = ("float32", "bfloat16", "float16")
LOST_UPDATE_WARNING = 0.10  # above this share of the update lost to the rounding, the merge log is a warning


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


def load_peft_model(
    adapter_dir: str | os.PathLike,
    base_model: str | None = None,
    dtype: str = "auto",
    device: str = "cpu",
    load_dtype: str | None = None,
):
    """The base model (unquantised) with the adapter applied. Returns (peft_model, base_model_path).

    The base is loaded in ``load_dtype`` if given, else in ``dtype_for_merge(base, dtype)``; PEFT keeps the adapter
    weights in float32 over a half-precision base (``autocast_adapter_dtype``)."""
    from peft import PeftModel

    adapter_config = read_adapter_config(adapter_dir)
    base = base_model or adapter_config.get("base_model_name_or_path")
    if not base:
        raise IpoError(f"{adapter_dir}/{ADAPTER_CONFIG} names no base model; pass --base_model")
    model, _, _ = load_model(base, dtype=load_dtype or dtype_for_merge(base, dtype), device=device)
    try:
        return PeftModel.from_pretrained(model, str(adapter_dir)), base
    except Exception as err:
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise IpoError(f"could not apply the adapter {adapter_dir} to {base}: {message}")


def saved_dtype(base: str) -> str | None:
    """The dtype the base checkpoint was saved in, from its config.json (a local folder's, or a Hub model's from
    the Hub or its cache); None when it cannot be read or names none."""
    config_file = Path(base) / "config.json"
    if config_file.is_file():
        text = config_file.read_text(encoding="utf-8")
    elif Path(base).exists():
        return None
    else:
        text = _hub_config(base)
    try:
        config = json.loads(text) if text else {}
    except ValueError:
        return None
    saved = (config.get("dtype") or config.get("torch_dtype")) if isinstance(config, dict) else None
    return saved if saved in HALF_OR_FULL else None


def _hub_config(repo_id: str) -> str | None:
    """A Hub model's config.json (downloaded once into the Hub cache, or read from it offline), or None."""
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(repo_id, "config.json")).read_text(encoding="utf-8")
    except Exception:  # no network, no such repo, gated: the dtype is unknown
        return None


def dtype_for_merge(base: str, dtype: str) -> str:
    """The dtype of a merged model: ``dtype``, or for auto the dtype the base checkpoint was saved in (bf16 for
    most 7B models, fp32 for SmolLM2; a Hub id's from its config.json); "auto" when unknown."""
    if dtype != "auto":
        return dtype
    return saved_dtype(base) or "auto"


def merge_in_float32(peft_model, dtype):
    """Merge every LoRA layer in float32 and store it in ``dtype``: one rounding of the final weight, as
    float32 merge then cast, while only one layer at a time is held in float32. Returns (the model without its
    LoRA layers, the norm of what the rounding to ``dtype`` lost of the adapter's update relative to the update).

    PEFT's own merge adds the update in the base weights' dtype: in bf16 the update is rounded, then the sum is
    rounded again, and a half-precision base merged into another dtype is rounded twice too.
    """
    from peft.tuners.lora import LoraLayer

    lost = update = 0.0
    for module in peft_model.modules():
        if not isinstance(module, LoraLayer) or module.merged:
            continue
        weight = getattr(module.get_base_layer(), "weight", None)
        if weight is None:  # a LoRA on parameters rather than a layer: PEFT's own merge
            module.merge()
            continue
        before = weight.data.float()
        weight.data = before.clone()
        module.merge()  # in float32: the base weight now is, and the adapter weights are
        merged = weight.data
        stored = merged.to(dtype)
        lost += float((stored.float() - merged).pow(2).sum())
        update += float((merged - before).pow(2).sum())
        weight.data = stored
        del before, merged
    model = peft_model.unload().to(dtype)
    return model, (lost / update) ** 0.5 if update else 0.0


def merge_adapter(
    adapter_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    base_model: str | None = None,
    dtype: str = "auto",
    device: str = "cpu",
    tokenizer_from: str | None = None,
):
    """Merge a LoRA adapter into its (unquantised) base and save model + tokenizer to ``output_dir``.

    The merge runs in float32 (merge_in_float32) and the model is saved in ``dtype``; auto: the dtype the base
    checkpoint was saved in (from its config.json, also for a Hub id), float32 when that is unknown (logged:
    4 bytes per parameter). ``output_dir`` must not be the adapter folder, lie inside it or contain it (upstream
    saved the merged weights into the adapter folder, which left a folder that is both; replacing a folder that
    holds the adapter would delete it). The folder appears only once complete; what a killed merge into it left
    is removed first (the caller holds the lock of the folder it is written into). Returns the merged model.
    """
    import torch

    adapter_dir, output_dir = Path(adapter_dir), Path(output_dir)
    check_merge_output(adapter_dir, output_dir)
    clean_merge_leftovers(output_dir)
    base = base_model or read_adapter_config(adapter_dir).get("base_model_name_or_path")
    save = dtype_for_merge(base, dtype) if base else dtype
    if save == "auto":
        save = "float32"
        logger.warning(
            "the dtype of %s is unknown (its config.json names none or cannot be read): saving the merged model "
            "in float32, 4 bytes per parameter; pass --dtype bfloat16 (or float16) for half",
            base,
        )
    checkpoint = (saved_dtype(base) if base else None) or "float32"
    logger.info("merging the adapter %s into its base model in float32 (saved in %s) ...", adapter_dir, save)
    peft_model, base = load_peft_model(adapter_dir, base_model, device=device, load_dtype=checkpoint)
    merged, lost = merge_in_float32(peft_model, getattr(torch, save))
    if save != "float32":  # a small update next to large weights is partly below half precision's resolution
        level = logging.WARNING if lost > LOST_UPDATE_WARNING else logging.INFO
        message = "rounding the merged weights to %s loses %.1f%% of the adapter's update (relative norm); %s"
        logger.log(level, message, save, 100 * lost, "--dtype float32 keeps all of it")
    source = tokenizer_from or (str(adapter_dir) if (adapter_dir / "tokenizer_config.json").is_file() else base)
    tokenizer = load_tokenizer(source)
    atomic_write_dir(
        output_dir,
        lambda tmp: (
            merged.save_pretrained(tmp, safe_serialization=True, max_shard_size="2GB"),
            tokenizer.save_pretrained(tmp),
        ),
    )
    logger.info("merged %s into %s -> %s", adapter_dir, base, output_dir)
    return merged


def check_merge_output(adapter_dir: str | os.PathLike, output_dir: str | os.PathLike) -> None:
    """One line (IpoError) unless ``output_dir`` is a folder apart from the adapter: not the adapter folder, not
    inside it, and not a folder that contains it (replacing that, e.g. the adapter's run folder with --overwrite,
    would delete the adapter and the run)."""
    adapter, output = Path(adapter_dir).resolve(), Path(output_dir).resolve()
    if output == adapter:
        raise IpoError("the merged model must go to another folder than the adapter")
    if adapter.is_relative_to(output):
        raise IpoError(
            f"{output_dir} contains the adapter {adapter_dir}: merging there would replace the adapter (and its "
            "run); pass an --output_dir outside it"
        )
    if output.is_relative_to(adapter):
        raise IpoError(f"{output_dir} lies inside the adapter folder {adapter_dir}; pass an --output_dir outside it")


def clean_merge_leftovers(output_dir: str | os.PathLike) -> int:
    """Remove the temporary folders a killed merge into ``output_dir`` left next to it (``.<name>.<random>.tmp``,
    or ``.<name>.<random>`` from before the suffix, of ipo.runs.atomic_write_dir: a whole model's size each).
    Only this merge's own leftovers: other names in the parent folder are not touched. Returns how many."""
    output = Path(output_dir)
    prefix = f".{output.name}."
    if not output.parent.is_dir():
        return 0
    removed = 0
    for entry in output.parent.iterdir():
        rest = entry.name[len(prefix) :]
        own = entry.name.startswith(prefix) and "." not in rest.removesuffix(".tmp")
        if own and TEMPORARY_NAME.fullmatch(entry.name):
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
            removed += 1
    if removed:
        logger.info("removed %d temporary folder(s) left by an interrupted merge into %s", removed, output)
    return removed
