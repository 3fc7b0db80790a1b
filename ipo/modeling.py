"""Loading models and tokenizers from a Hub id, a local folder, or a local .gguf file.

Every load goes through here so that device/dtype resolution, 4-bit quantisation, padding side and
error messages are the same in every script.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
import os
from pathlib import Path

from ipo import IpoError

logger = logging.getLogger("ipo")


def resolve_device(device: str = "auto") -> str:
    import torch

    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise IpoError(f"--device {device} was asked for, but no CUDA GPU is visible")
    return device


def resolve_dtype(dtype: str, device: str):
    """auto: bf16 on GPUs that support it, fp16 on other GPUs, fp32 on CPU (bf16 matmuls are slow there)."""
    import torch

    if dtype == "auto":
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]


def split_gguf(name_or_path: str) -> tuple[str, str | None]:
    """('folder', 'file.gguf') for a local .gguf file, else (name_or_path, None)."""
    if name_or_path.endswith(".gguf"):
        path = Path(name_or_path).expanduser()
        if not path.is_file():
            raise IpoError(f"{name_or_path}: no such .gguf file")
        return str(path.parent), path.name
    return name_or_path, None


def _load_error(kind: str, name: str, err: Exception) -> IpoError:
    message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    hint = ""
    if os.environ.get("HF_HUB_OFFLINE") == "1" and not os.path.exists(name):
        hint = " (HF_HUB_OFFLINE=1 is set: only local folders and files can be loaded)"
    return IpoError(f"could not load {kind} {name!r}: {message}{hint}")


def load_tokenizer(name_or_path: str, padding_side: str = "left", trust_remote_code: bool = False):
    """The model's tokenizer, left-padded (the last position is then the same column in every row).

    A tokenizer without a pad token gets its EOS as pad; padded positions are always masked out, so
    this only matters for training data, where TRL handles it.
    """
    from transformers import AutoTokenizer

    folder, gguf_file = split_gguf(name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file, trust_remote_code=trust_remote_code)
    except Exception as err:
        raise _load_error("the tokenizer of", name_or_path, err)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = padding_side
    return tokenizer


def quantization_config(compute_dtype):
    """4-bit NF4 with double quantisation, as the paper's QLoRA (bitsandbytes)."""
    try:
        from transformers import BitsAndBytesConfig
        import bitsandbytes  # noqa: F401
    except ImportError as err:
        raise IpoError(f"4-bit loading needs bitsandbytes ({err}); pip install bitsandbytes")
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
    )


def load_model(
    name_or_path: str,
    dtype: str = "auto",
    device: str = "auto",
    quantized: bool = False,
    trust_remote_code: bool = False,
    kind: str = "causal_lm",
):
    """Load a model for inference, in eval mode, on ``device``.

    kind: "causal_lm" (judge, sampling) or "sequence_classification" (reward-model baseline).
    Returns (model, resolved_device, resolved_torch_dtype).
    """
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    folder, gguf_file = split_gguf(name_or_path)
    kwargs: dict = {"dtype": torch_dtype, "trust_remote_code": trust_remote_code}
    if gguf_file:
        kwargs["gguf_file"] = gguf_file
    if quantized:
        kwargs["quantization_config"] = quantization_config(torch_dtype)
    if device != "cpu":
        kwargs["device_map"] = {"": device}
    cls = AutoModelForCausalLM if kind == "causal_lm" else AutoModelForSequenceClassification
    try:
        model, loading_info = cls.from_pretrained(folder, output_loading_info=True, **kwargs)
    except Exception as err:
        raise _load_error("model", name_or_path, err)
    if kind == "sequence_classification" and loading_info.get("missing_keys"):
        # transformers would silently give a causal LM a fresh, random classification head.
        missing = sorted(loading_info["missing_keys"])
        raise IpoError(f"{name_or_path} is not a trained sequence-classification reward model: its weights lack "
                       f"{', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}, which would be random")  # fmt: skip
    model.eval()
    return model, device, torch_dtype


@dataclass(frozen=True)
class ModelSpec:
    """Which model to load and how: the values of the shared model flags (cli.add_model_args)."""

    name_or_path: str  # Hub id, local folder, or local .gguf file
    dtype: str = "auto"  # auto = bf16 on GPUs that have it, fp16 on other GPUs, fp32 on CPU
    device: str = "auto"
    quantized: bool = False  # 4-bit NF4 through bitsandbytes
    trust_remote_code: bool = False


def load_model_and_tokenizer(spec: ModelSpec, kind: str = "causal_lm"):
    """Load a model and its tokenizer. Returns (model, tokenizer, device, dtype)."""
    tokenizer = load_tokenizer(spec.name_or_path, trust_remote_code=spec.trust_remote_code)
    model, device, torch_dtype = load_model(
        spec.name_or_path,
        dtype=spec.dtype,
        device=spec.device,
        quantized=spec.quantized,
        trust_remote_code=spec.trust_remote_code,
        kind=kind,
    )
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    logger.info("loaded %s (%s, %s%s)", spec.name_or_path, device, str(torch_dtype).replace("torch.", ""),
                ", 4-bit" if spec.quantized else "")  # fmt: skip
    return model, tokenizer, device, torch_dtype
