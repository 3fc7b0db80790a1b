"""Loading models and tokenizers from a Hub id, a local folder, or a local .gguf file.

Every load goes through here so that device/dtype resolution (``--device shard`` included: one model over
several GPUs), 4-bit quantisation, padding side and error messages are the same in every script. The judges
read a few rows of a model's output layer in float32 through ``linear_rows`` / ``apply_rows`` (whatever the
model's dtype and wherever accelerate placed the layer) and guard their scores with ``check_finite``.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ipo import IpoError

logger = logging.getLogger("ipo")


# --device value for a model larger than one GPU: its layers are spread over every visible GPU by
# transformers' ``device_map="auto"`` (inference only: a judge, a reward model, a sampler).
SHARD = "shard"


def resolve_device(device: str = "auto", shardable: bool = False) -> str:
    """The device a model goes to: auto = cuda, then mps, then cpu. ``shard`` (SHARD) is returned as is where
    the caller can place a model over several devices (``shardable``), and refused elsewhere (training)."""
    import torch

    if device == SHARD:
        if not shardable:
            raise IpoError(f"--device {SHARD} spreads one model over several GPUs for inference; not usable here")
        return SHARD
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
    """auto: bf16 on GPUs that support it, fp16 on other GPUs, fp32 on CPU (bf16 matmuls are slow there).

    Only native bf16 counts (compute capability 8.0+, or ROCm): ``is_bf16_supported()`` alone also says yes on
    V100 and T4, which emulate it (slowly, and without fast attention), so the fp16 fallback never happened.
    """
    import torch

    if dtype == "auto":
        if device.startswith("cuda") or (device == SHARD and torch.cuda.is_available()):
            return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16
        return torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]


# what the Hub accepts as a model id: `name` or `org/name` (no leading '.', '/', '~' or more parts)
HUB_ID = re.compile(r"[A-Za-z0-9_][\w.-]*(/[A-Za-z0-9_][\w.-]*)?")


def split_gguf(name_or_path: str) -> tuple[str, str | None]:
    """('folder', 'file.gguf') for a local .gguf file, else (name_or_path, None)."""
    if name_or_path.endswith(".gguf"):
        path = Path(name_or_path).expanduser()
        if not path.is_file():
            raise IpoError(f"{name_or_path}: no such .gguf file")
        return str(path.parent), path.name
    return name_or_path, None


def _load_error(kind: str, name: str, err: Exception) -> IpoError:
    if not os.path.exists(os.path.expanduser(name)) and not HUB_ID.fullmatch(name):
        # no Hub id (org/name) either: a local folder that is not there; the Hub's repo-id rules would confuse
        return IpoError(f"could not load {kind} {name!r}: no such folder")
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
        import bitsandbytes  # noqa: F401
        from transformers import BitsAndBytesConfig
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

    device = resolve_device(device, shardable=True)
    torch_dtype = resolve_dtype(dtype, device)
    folder, gguf_file = split_gguf(name_or_path)
    kwargs: dict = {"dtype": torch_dtype, "trust_remote_code": trust_remote_code}
    if gguf_file:
        kwargs["gguf_file"] = gguf_file
    if quantized:
        kwargs["quantization_config"] = quantization_config(torch_dtype)
    if device == SHARD:
        kwargs["device_map"] = "auto"  # layers spread over the visible GPUs (all on the CPU where there are none)
    elif device != "cpu":
        kwargs["device_map"] = {"": device}
    cls = AutoModelForCausalLM if kind == "causal_lm" else AutoModelForSequenceClassification
    try:
        model, loading_info = cls.from_pretrained(folder, output_loading_info=True, **kwargs)
    except Exception as err:
        raise _load_error("model", name_or_path, err)
    if kind == "sequence_classification" and loading_info.get("missing_keys"):
        # transformers would silently give a causal LM a fresh, random classification head.
        missing = sorted(loading_info["missing_keys"])
        raise IpoError(
            f"{name_or_path} is not a trained sequence-classification reward model: its weights lack "
            f"{', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}, which would be random"
        )
    model.eval()
    if device == SHARD:
        placed = sorted({str(where) for where in (getattr(model, "hf_device_map", None) or {"": "cpu"}).values()})
        logger.info("%s placed over %s", name_or_path, ", ".join(placed))
    return model, device, torch_dtype


@dataclass(frozen=True)
class ModelSpec:
    """Which model to load and how: the values of the shared model flags (cli.add_model_args)."""

    name_or_path: str  # Hub id, local folder, or local .gguf file
    dtype: str = "auto"  # auto = bf16 on GPUs that have it, fp16 on other GPUs, fp32 on CPU
    device: str = "auto"  # auto, cpu, cuda, cuda:N, mps, or shard (SHARD: over every visible GPU)
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
    logger.info(
        "loaded %s (%s, %s%s)",
        spec.name_or_path,
        device,
        str(torch_dtype).replace("torch.", ""),
        ", 4-bit" if spec.quantized else "",
    )
    return model, tokenizer, device, torch_dtype


# ---------------------------------------------------------------------------------------------------
# Reading a few output rows in float32 (the judges' heads), and the half-precision overflow guard
# ---------------------------------------------------------------------------------------------------
def decoder_of(model):
    """The module that turns token ids into the last hidden state (before the output layer): the body of a
    causal LM or of a sequence classifier (``get_decoder()``, else ``base_model``)."""
    return model.get_decoder() if hasattr(model, "get_decoder") else model.base_model


def linear_rows(layer, rows: Sequence[int]):
    """Float32 copies of some output rows of a linear layer: (weight (R, H), bias (R,) or None), or None
    when the layer is not a plain floating-point linear map (a quantised one). The rows are read where the
    layer keeps them, also from an accelerate-offloaded layer (its weights then sit on the meta device)."""
    import torch

    weight = getattr(layer, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or not weight.is_floating_point():
        return None
    if weight.device.type == "meta":
        if not hasattr(layer, "_hf_hook"):
            return None
        # accelerate is what offloaded the layer (transformers' device_map), so it is installed.
        from accelerate.utils import align_module_device

        with align_module_device(layer):
            return linear_rows(layer, rows)
    index = torch.tensor(list(rows), dtype=torch.long, device=weight.device)
    bias = getattr(layer, "bias", None)
    bias = bias.detach().index_select(0, index).float().clone() if isinstance(bias, torch.Tensor) else None
    return weight.detach().index_select(0, index).float().clone(), bias


def apply_rows(hidden, rows):
    """``hidden`` (B, H), any dtype and device, through ``linear_rows``' rows in float32: (B, R) on its device."""
    weight, bias = rows
    out = hidden.float() @ weight.to(hidden.device).T
    return out if bias is None else out + bias.to(hidden.device)


def close_in_dtype(ours, theirs, dtype) -> bool:
    """Whether float32 values ``ours`` agree with the model's own ``theirs`` up to rounding in ``dtype``
    (a few units of its precision, relative, or 1e-4 in float32). A check that a shortcut reads the same
    head as the model's forward, not an exactness test."""
    import torch

    tolerance = max(1e-4, 4 * torch.finfo(dtype).eps)
    ours, theirs = ours.detach().float().cpu(), theirs.detach().float().cpu()
    return bool(((ours - theirs).abs() <= tolerance * (1 + theirs.abs())).all())


def non_finite_error(dtype, what: str) -> IpoError:
    """The one-line error for a NaN or infinite value in a model's output, with the ``--dtype`` to try."""
    name = str(dtype).replace("torch.", "")
    advice = {
        "float16": "rerun with --dtype bfloat16 or --dtype float32 (float16 overflows)",
        "bfloat16": "rerun with --dtype float32",
    }.get(name, "the checkpoint's weights may hold NaN")
    return IpoError(f"{what} is NaN or infinite in {name}; {advice}")


def check_finite(values, dtype, what: str) -> None:
    """An IpoError (``non_finite_error``) when ``values`` hold a NaN or an infinity, typically a float16
    overflow: a NaN score is neither better, worse nor a tie, so it must never reach a comparison."""
    import torch

    if not bool(torch.isfinite(values).all()):
        raise non_finite_error(dtype, what)


def cpu_has_native_bf16() -> bool:
    """True where this CPU multiplies bfloat16 in hardware (AVX512-BF16 or AMX tiles; oneDNN then runs bf16
    matmuls at 2-4x float32's rate). ``torch.backends.cpu.get_cpu_capability()`` names only the vector
    width ("AVX512" here, also on CPUs without bf16), so torch.cpu's feature checks decide."""
    import torch

    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(check() for check in checks if check is not None)


# Shapes of random-weight models for speed checks: speed does not depend on the weights, so no download is
# needed. "qwen2.5-0.5b" is Qwen/Qwen2.5-0.5B-Instruct's config.json; "tiny" is for CPU dry runs of the
# same code. Vocabularies cover the embedded SmolLM2 tokenizer's 49,152 ids, whose text the checks feed in.
RANDOM_SHAPES = {
    "qwen2.5-0.5b": dict(
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        vocab_size=151936,
        max_position_embeddings=32768,
        rope_theta=1000000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
    ),
    "tiny": dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=49152,
        max_position_embeddings=4096,
        rope_theta=10000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
    ),
}


def random_causal_lm(shape: str, device: str = "cpu", dtype: str = "bfloat16", tokenizer=None, seed: int = 0):
    """A Qwen2 model with random weights (seeded) and the shape RANDOM_SHAPES[shape], on ``device`` in ``dtype``.

    ``tokenizer``: its EOS and pad ids go into the config (so that generation stops where the text's
    tokenizer says) and its ids must fit the vocabulary."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    if shape not in RANDOM_SHAPES:
        raise IpoError(f"unknown random model shape {shape!r}; choose from {', '.join(RANDOM_SHAPES)}")
    special = {}
    if tokenizer is not None:
        if len(tokenizer) > RANDOM_SHAPES[shape]["vocab_size"]:
            raise IpoError(f"the tokenizer's {len(tokenizer)} ids do not fit the {shape} vocabulary")
        special = {"eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}
    config = Qwen2Config(**RANDOM_SHAPES[shape], **special)
    torch.manual_seed(seed)
    with torch.device(resolve_device(device)):
        model = Qwen2ForCausalLM(config).to(resolve_dtype(dtype, resolve_device(device)))
    return model.eval()
