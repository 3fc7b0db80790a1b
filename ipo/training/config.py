"""The trainer configs: the only module that names TRL's and PEFT's arguments.

    build_dpo_config(options, out_dir)    -> trl.DPOConfig (precision, lengths, checkpoints, logging resolved)
    build_sft_config(options, out_dir)    -> trl.SFTConfig with the same Trainer settings
    build_lora_config(options)            -> peft.LoraConfig
    describe_config(config, lora, ...)    the resolved settings as a JSON-able dict (dpo_config.json)
    trainer_fields(kind)                  the TRL settings a user may set beyond TrainingOptions (flags, recipes)

The paper's self-improvement step is plain DPO, ``loss_type="sigmoid"`` (Rafailov et al. 2023, eq. 7:
-log sigmoid(beta * margin)), with beta 0.1, LoRA r 256 / alpha 128 / dropout 0.05 on all linear layers,
lr 5e-5, cosine schedule, warmup 0.1, batch 6, one epoch, grad-clip 0.3 (upstream DPO/ours.py). TRL's
``loss_type="ipo"`` is Identity-PO (Azar et al.), a different loss; it is reachable only by asking for it.

Every field of TRL's ``DPOConfig`` / ``SFTConfig`` (with transformers' ``TrainingArguments``) and ``ModelConfig``
can be set under its own name. ``TrainingOptions`` carries the project's settings with the paper's defaults;
a TRL field it does not cover travels in ``options.trainer_overrides`` and is applied last, so a run that sets
none gets exactly the configs above. The tables below say which TRL names the project takes itself (its flags),
which it refuses (with the reason), which it accepts at its own value only, and its aliases.
"""

from __future__ import annotations

import copy
import dataclasses
import enum
import json
import logging
import os
import types
import typing
from dataclasses import fields, replace

import torch
from peft import LoraConfig
from transformers import TrainingArguments
from trl import DPOConfig, ModelConfig, SFTConfig

from ipo import IpoError
from ipo.modeling import resolve_device
from ipo.training.options import TrainingOptions, check_options, lora_targets

logger = logging.getLogger("ipo")

TRAINER_CONFIGS = {"dpo": DPOConfig, "sft": SFTConfig}
# TRL names that the scripts' own flags take (TrainingOptions' fields that are TRL names are taken too:
# learning_rate, beta, lora_r, save_total_limit, ...): never added a second time.
SCRIPT_FLAGS = frozenset(
    {
        "output_dir",  # the parent of the run folder; the trainer's output_dir is <run folder>/checkpoints
        "run_name",
        "seed",
        "log_level",
        "model_name_or_path",
        "dtype",
        "trust_remote_code",
        "use_peft",  # --use_peft / --no_lora
        "push_to_hub",
        "hub_model_id",  # uploads go through ipo.hub after training, not through the Trainer
    }
)
# Other names the project's flags answer to: alias -> the project's flag.
ALIASES = {"torch_dtype": "dtype", "dataset_name": "dataset", "hub_model_id": "hub_repo_id"}
# TRL names that cannot be set here, and why (a one-line error names the reason).
REFUSED = {
    "hub_token": "the token comes from HF_TOKEN or `hf auth login`, never from a flag",
    "hub_strategy": "the Trainer uploads nothing; --push_to_hub uploads the final model",
    "hub_private_repo": "the Trainer uploads nothing; --push_to_hub uploads the final model (private)",
    "hub_always_push": "the Trainer uploads nothing; --push_to_hub uploads the final model",
    "hub_revision": "the Trainer uploads nothing; --push_to_hub uploads the final model",
    "use_cpu": "it follows --device",
    "model_init_kwargs": "the model is loaded by the project (--dtype, --load_in_4bit, --attn_implementation)",
    "parallelism_config": "an object, not a value; use an accelerate config (recipes/accelerate_configs/)",
    "resume_from_checkpoint": "a run resumes from its last checkpoint by itself",
}
# ModelConfig loading settings the project does one way only: accepted at that value, refused otherwise.
FIXED = {
    "model_revision": "main",
    "load_in_8bit": False,
    "bnb_4bit_quant_type": "nf4",  # --load_in_4bit: NF4 with double quantisation (the paper's QLoRA)
    "use_bnb_nested_quant": True,
    "bnb_4bit_quant_storage": None,
    "lora_task_type": "CAUSAL_LM",
}
# ModelConfig's other LoRA settings -> peft.LoraConfig's names.
LORA_FIELDS = {
    "lora_target_parameters": "target_parameters",
    "lora_modules_to_save": "modules_to_save",
    "use_rslora": "use_rslora",
    "use_dora": "use_dora",
}
MODEL_FIELDS = ("attn_implementation",)  # applied to the loaded model (apply_model_settings)


@dataclasses.dataclass(frozen=True)
class TrainerField:
    """A TRL setting a user may set: its name, resolved type, TRL's help text, and the dataclass field."""

    name: str
    type: object
    help: str
    field: dataclasses.Field


def trainer_fields(kind: str = "dpo") -> dict[str, TrainerField]:
    """The fields of TRL's DPOConfig (kind "dpo") or SFTConfig ("sft"), and of ModelConfig, that a user may set
    beyond TrainingOptions: neither a TrainingOptions field nor a script flag nor refused."""
    taken = {f.name for f in fields(TrainingOptions)} | SCRIPT_FLAGS | set(REFUSED)
    found = {}
    for cls in (TRAINER_CONFIGS[kind], ModelConfig):
        hints = typing.get_type_hints(cls)
        for f in fields(cls):
            if f.init and f.name not in taken and f.name not in found:
                found[f.name] = TrainerField(f.name, hints[f.name], f.metadata.get("help", ""), f)
    return found


def setting_names() -> set[str]:
    """Every TRL name a recipe may hold beyond TrainingOptions' (either trainer, plus ModelConfig, plus aliases)."""
    return set(trainer_fields("dpo")) | set(trainer_fields("sft")) | set(ALIASES)


def hf_field(setting: TrainerField) -> dataclasses.Field:
    """A copy of the dataclass field with its type resolved, as transformers.HfArgumentParser wants it."""
    copied = copy.copy(setting.field)
    copied.type = setting.type
    return copied


def check_setting(name: str, value):
    """``value`` of the TRL setting ``name`` (a recipe's or a flag's), converted to the field's type; a one-line
    IpoError when it does not fit, or when the project refuses the setting or accepts only its own value."""
    if name in REFUSED:
        raise IpoError(f"{name} cannot be set here: {REFUSED[name]}")
    setting = trainer_fields("dpo").get(name) or trainer_fields("sft").get(name)
    if setting is None:
        raise IpoError(f"unknown TRL setting {name!r}")
    try:
        value = _convert(setting.type, value)
    except (TypeError, ValueError):
        raise IpoError(f"{name} must be {_type_name(setting.type)}, got {value!r}")
    if name in FIXED and value != FIXED[name]:
        raise IpoError(f"{name}: only {FIXED[name]!r} is supported (the project loads the model itself)")
    return value


def _convert(hint, value):
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union or origin is types.UnionType:
        if value is None and type(None) in args:
            return None
        for option in sorted((a for a in args if a is not type(None)), key=lambda a: a is str):  # str last
            try:
                return _convert(option, value)
            except (TypeError, ValueError):
                pass
        raise ValueError(value)
    if origin is typing.Literal:
        if value in args:
            return value
        raise ValueError(value)
    if origin is list or hint is list:
        inner = args[0] if args else typing.Any
        return [_convert(inner, item) for item in (value if isinstance(value, list) else [value])]
    if origin is dict or hint is dict:
        if isinstance(value, dict):
            return value
        raise TypeError(value)
    if hint is typing.Any:
        return value
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return hint(value).value
    if hint is bool:
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        if isinstance(value, bool):
            return value
        raise TypeError(value)
    if hint in (int, float):
        if isinstance(value, bool):
            raise TypeError(value)
        if isinstance(value, (int, float, str)):
            converted = hint(value)
            if hint is int and isinstance(value, float) and converted != value:
                raise ValueError(value)
            return converted
        raise TypeError(value)
    if hint is str:
        if isinstance(value, str):
            return value
        raise TypeError(value)
    raise TypeError(value)


def _type_name(hint) -> str:
    names = {bool: "true or false", int: "an integer", float: "a number", str: "text"}
    if hint in names:
        return names[hint]
    return str(hint).replace("typing.", "")


def trainer_overrides(options: TrainingOptions, kind: str) -> dict:
    """The settings of ``options.trainer_overrides`` that go to the trainer config, checked."""
    config_fields = {f.name for f in fields(TRAINER_CONFIGS[kind]) if f.init}
    found = {}
    for name, value in options.trainer_overrides.items():
        value = check_setting(name, value)
        if name in FIXED or name in LORA_FIELDS or name in MODEL_FIELDS:
            continue
        if name not in config_fields:
            raise IpoError(f"{name} is not a setting of TRL's {TRAINER_CONFIGS[kind].__name__}")
        found[name] = value
    return found


def _picked(options: TrainingOptions, names) -> dict:
    return {name: check_setting(name, value) for name, value in options.trainer_overrides.items() if name in names}


def _build(cls, settings: dict):
    """``cls(**settings)`` with TRL's and transformers' own checks as one-line errors."""
    try:
        return cls(**settings)
    except (TypeError, ValueError) as err:
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise IpoError(f"{cls.__name__}: {message}")


def apply_model_settings(model, options: TrainingOptions) -> None:
    """The ModelConfig settings that act on the loaded model (attn_implementation)."""
    settings = _picked(options, MODEL_FIELDS)
    if "attn_implementation" in settings:
        try:
            model.set_attn_implementation(settings["attn_implementation"])
        except (ImportError, ValueError) as err:
            raise IpoError(f"attn_implementation {settings['attn_implementation']!r}: {str(err).splitlines()[0]}")


def resolve_precision(dtype: str, device: str) -> tuple[str, bool, bool]:
    """(weights dtype name, bf16 autocast, fp16 autocast) for training.

    auto: bf16 on GPUs that have it natively (compute capability 8.0+; V100 and T4 only emulate it, slowly and
    without fast attention, so they get fp16, the paper's dtype), fp32 on CPU (TRL's bf16 default fails on
    CPU, and bf16 matmuls are slow there). The weights dtype is what the model is loaded in, except for full
    fine-tuning in half precision (training_weights_dtype).
    """
    if dtype == "auto":
        if device.startswith("cuda"):
            dtype = "bfloat16" if torch.cuda.is_bf16_supported(including_emulation=False) else "float16"
        else:
            dtype = "float32"
    return dtype, dtype == "bfloat16", dtype == "float16"


def training_weights_dtype(options: TrainingOptions, device: str, sharded_by: str | None = None) -> str:
    """The dtype the trained model's weights are loaded in.

    LoRA: the resolved dtype (the frozen base may be bf16; PEFT keeps the adapter weights in float32).
    Full fine-tuning in bf16 or fp16: float32 master weights, with the Trainer's autocast doing the half-precision
    compute: an optimizer step on bf16 weights rounds away almost every update at the paper's learning rates
    (3 DPO steps at lr 5e-7 with RMSprop on CPU moved 0.9% of SmolLM2-135M's weights in bf16, 89% with float32
    masters; tests/test_training_trust.py checks it on the tiny model). ``sharded_by`` ("DeepSpeed" or "FSDP", ipo.training.distributed.
    fp32_master_launcher): those keep float32 masters of half-precision weights themselves, so the weights
    are loaded in the half-precision dtype there (half the memory while loading).
    """
    dtype = resolve_precision(options.dtype, device)[0]
    if options.use_lora or dtype == "float32":
        return dtype
    if sharded_by:
        logger.info("full fine-tuning in %s weights: %s keeps float32 master weights", dtype, sharded_by)
        return dtype
    logger.info(
        "full fine-tuning: float32 master weights with %s autocast (half-precision weights would round "
        "away most updates)",
        dtype,
    )
    return "float32"


def build_lora_config(options: TrainingOptions):
    """peft.LoraConfig for a causal LM (the paper: r 256, alpha 128, dropout 0.05, all linear layers)."""
    settings = dict(
        r=options.lora_r,
        lora_alpha=options.lora_alpha,
        lora_dropout=options.lora_dropout,
        target_modules=lora_targets(options.lora_target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
    lora = {LORA_FIELDS[name]: value for name, value in _picked(options, LORA_FIELDS).items()}
    return _build(LoraConfig, {**settings, **lora})


def build_dpo_config(
    options: TrainingOptions, output_dir: str | os.PathLike, device: str = "auto", has_eval: bool = False
):
    """trl.DPOConfig with every setting explicit, checkpoints every ``save_steps`` under ``output_dir``;
    ``options.trainer_overrides`` last."""
    check_options(options)
    device = resolve_device(device)
    dtype, bf16, fp16 = resolve_precision(options.dtype, device)
    report_to = [] if options.report_to == "none" else [options.report_to]
    if options.report_to == "wandb" and options.wandb_project:
        # transformers' WandbCallback reads the project from the environment when training starts.
        os.environ["WANDB_PROJECT"] = options.wandb_project
    settings = dict(
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
    return _build(DPOConfig, {**settings, **trainer_overrides(options, "dpo")})


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
    if options is not None and options.trainer_overrides:  # only when set: a run without any keeps its file
        headline["trainer_overrides"] = dict(options.trainer_overrides)
    headline["trainer"] = json.loads(json.dumps(config.to_dict(), default=str))
    return headline


def build_sft_config(
    options: TrainingOptions, output_dir: str | os.PathLike, device: str = "auto", has_eval: bool = False
):
    """trl.SFTConfig with the same Trainer settings as build_dpo_config; the loss is TRL's token-mean NLL on
    the completion only (prompt tokens masked); ``options.trainer_overrides`` last."""
    overrides = trainer_overrides(options, "sft")
    base = replace(options, loss_type="sigmoid", trainer_overrides={})
    dpo_config = build_dpo_config(base, output_dir, device=device, has_eval=has_eval)
    shared = {f.name: getattr(dpo_config, f.name) for f in fields(TrainingArguments) if f.init}
    settings = dict(
        **shared,
        model_init_kwargs=dpo_config.model_init_kwargs,
        max_length=options.max_length,
        truncation_mode="keep_start",
        completion_only_loss=True,
    )
    return _build(SFTConfig, {**settings, **overrides})
