"""Training recipes: flat YAML files of settings in the alignment-handbook's shape, plus an optional sweep grid.

A recipe (see recipes/README.md) holds settings under the names the training scripts take on the command
line: the project's own (``RECIPE_KEYS``: ``learning_rate``, ``per_device_train_batch_size``, ``beta``,
``loss_type``, ...), any other field of TRL's ``DPOConfig`` / ``SFTConfig`` / ``ModelConfig`` under its TRL name
(``weight_decay``, ``adam_beta2``, ``save_strategy``, ...; ipo/training/config.py), and the aliases that
handbook recipes use (``torch_dtype``, ``dataset_name``, ``hub_model_id``). Optionally ``sweep: {name: [values,
...]}``, a grid that ``DPO/sweep.py`` expands into one run per point. An unknown name is a one-line error
that names the closest known one.
"""

from __future__ import annotations

import difflib
import itertools
from pathlib import Path

import yaml

from ipo import IpoError
from ipo.training.config import ALIASES, REFUSED, check_setting, setting_names
from ipo.training.losses import LOSS_TYPES

_NUMBER = (int, float)
# name -> accepted YAML types. Every name is a flag of the training scripts (without "--"); they follow
# transformers.TrainingArguments / TRL DPOConfig / TRL ModelConfig where one exists.
RECIPE_KEYS: dict[str, type | tuple[type, ...]] = {
    # model (TRL ModelConfig names)
    "model_name_or_path": str,
    "dtype": str,
    "use_peft": bool,
    "lora_target_modules": str,
    "lora_r": int,
    "lora_alpha": int,
    "lora_dropout": _NUMBER,
    "load_in_4bit": bool,
    # data
    "dataset": str,
    "dataset_split": str,
    "dataset_format": str,
    "unpaired": bool,
    "as_messages": bool,
    "eval_dataset": str,
    "eval_split": str,
    "max_length": int,
    "max_prompt_length": int,
    # loss (TRL DPOConfig names, plus the RPO settings)
    "loss_type": str,
    "beta": _NUMBER,
    "label_smoothing": _NUMBER,
    "precompute_ref_log_probs": bool,
    "rpo_distance_temperature": _NUMBER,
    "rpo_embedding_model": str,
    "rpo_diagonal_weight": _NUMBER,
    # optimisation (TrainingArguments names)
    "learning_rate": _NUMBER,
    "lr_scheduler_type": str,
    "warmup_ratio": _NUMBER,
    "warmup_steps": int,
    "optim": str,
    "max_grad_norm": _NUMBER,
    "num_train_epochs": _NUMBER,
    "max_steps": int,
    "per_device_train_batch_size": int,
    "per_device_eval_batch_size": int,
    "gradient_accumulation_steps": int,
    "gradient_checkpointing": bool,
    "dataloader_num_workers": int,
    "seed": int,
    # logging and outputs
    "logging_steps": int,
    "save_steps": int,
    "save_total_limit": int,
    "eval_steps": int,
    "output_dir": str,
    "run_name": str,
    "report_to": str,
    "wandb_project": str,
    "merge_adapters": bool,
    # Hub (the scripts' upload after training; TRL's own uploads stay off)
    "push_to_hub": bool,
    "hub_repo_id": str,
}
SWEEP_KEY = "sweep"


def load_recipe(path: str | Path) -> tuple[dict, dict[str, list]]:
    """(settings, grid) from a recipe file; one-line IpoError on an unknown name or a wrongly typed value."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise IpoError(f"{path}: cannot be read ({err.strerror or err})")
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise IpoError(f"{path}: not valid YAML{where}")
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise IpoError(f"{path}: a recipe is a mapping of setting names to values")
    grid = data.pop(SWEEP_KEY, None) or {}
    if not isinstance(grid, dict):
        raise IpoError(f"{path}: '{SWEEP_KEY}' must map setting names to lists of values")
    settings, given_as = {}, {}
    for key, value in data.items():
        name = ALIASES.get(key, key)
        if name in settings:
            raise IpoError(f"{path}: {given_as[name]} and {key} are the same setting; keep one")
        settings[name], given_as[name] = _checked(path, key, value, name=name), key
    checked_grid = {}
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise IpoError(f"{path}: {SWEEP_KEY}.{key} must be a non-empty list of values")
        name = ALIASES.get(key, key)
        checked_grid[name] = [_checked(path, f"{SWEEP_KEY}.{key}", value, name=name) for value in values]
    return settings, checked_grid


def _checked(path: Path, where: str, value, name: str | None = None):
    name = name or where
    if name not in RECIPE_KEYS:
        if name not in setting_names() and name not in REFUSED:
            known = sorted({*RECIPE_KEYS, *setting_names()})
            close = difflib.get_close_matches(where.rpartition(".")[2], known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise IpoError(
                f"{path}: unknown setting {where!r}{hint}; a recipe takes the training scripts' flags "
                "and TRL's DPOConfig/SFTConfig/ModelConfig fields (recipes/README.md)"
            )
        try:
            return check_setting(name, value)
        except IpoError as err:
            raise IpoError(f"{path}: {where}: {err}")
    expected = RECIPE_KEYS[name]
    # YAML reads 5e-7 (no dot) as text; accept it for numbers, as the HF argument parsers do
    if expected is _NUMBER and isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    # the handbook's shapes: lora_target_modules as a list, report_to as a list of one
    if name == "lora_target_modules" and isinstance(value, list) and all(isinstance(v, str) for v in value):
        value = ",".join(value)
    if name == "report_to" and isinstance(value, list) and len(value) == 1:
        value = value[0]
    if isinstance(value, bool) and expected is not bool or not isinstance(value, expected):
        kinds = expected.__name__ if isinstance(expected, type) else "number"
        raise IpoError(f"{path}: {where} must be {kinds}, got {value!r}")
    if name == "loss_type" and value not in LOSS_TYPES:
        raise IpoError(f"{path}: {where}: unknown loss_type {value!r}; choose one of {', '.join(LOSS_TYPES)}")
    return value


def expand_grid(settings: dict, grid: dict[str, list]) -> list[tuple[str, dict]]:
    """Every point of the grid as (name, settings with the point applied), in row-major order of the grid.

    The name (e.g. ``loss_type-ipo__beta-0.1``) is unique per point and safe as a folder name.
    """
    keys = list(grid)
    points = []
    for values in itertools.product(*(grid[key] for key in keys)):
        point = dict(zip(keys, values))
        name = "__".join(f"{key}-{value}" for key, value in point.items()) or "base"
        points.append((name.replace("/", "_"), {**settings, **point}))
    return points
