"""What a run is, said in its metrics.json: the top-level "run" object that every writer of metrics.json adds,
so that a collector (Preference_Comparison/collect.py) reads a run folder from metrics.json alone:

    "run": {"benchmark": "rewardbench" | "rmbench" | "selfimprove" | "downstream" | "preference_training",
            "method": a short stable id (METHODS),
            "model": the model path or id as given, "model_short": its last path part,
            "scoring": "upstream" | "chat" | None (the prompt format; None where a method has none),
            "backend": "hf" | "server" ("hf" unless the run's arguments name another),
            "data": {"source": the dataset(s) as given, "split": ..., "n": examples the metrics cover},
            "coverage": the same object as metrics["coverage"] (ipo.data.Coverage.metrics), or None}

``run_description`` builds it from values; ``describe_run`` builds it from a run folder's config.json (the
arguments the run started with), which is how the benchmark writers (ipo.benchmarks.rewardbench and
rmbench ``write_outputs``) call it, so a script passes only its method id.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

BENCHMARKS = ("rewardbench", "rmbench", "selfimprove", "downstream", "preference_training")

# The method ids in use, with what they are; a new method picks a new id of the same shape.
METHODS = {
    "ipo": "IPO Yes/No judge on a local model (the paper's method)",
    "self_rewarding": "5-point Self-Rewarding judge on a local model (the paper's baseline)",
    "reward_model": "sequence-classification reward model (the paper's external-RM baseline)",
    "api_ipo": "IPO Yes/No judge through an API's log-probabilities",
    "api_self_rewarding": "5-point judge through an API",
    "api_binary": "pairwise judge through an API (which response is better)",
    "prompt_search": "IPO judge over candidate judge questions",
    "dpo_loop_ipo": "self-improvement: DPO on pairs the model judged with IPO",
    "dpo_loop_self_rewarding": "self-improvement: DPO on pairs the 5-point judge chose",
    "dpo_loop_reward_model": "self-improvement: DPO on pairs a reward model chose",
    "downstream": "downstream benchmarks of a model (lm-eval tasks, AlpacaEval-style win rate)",
}
_METHOD_ID = re.compile(r"^[a-z][a-z0-9_]*$")

# Where each value sits in config.json's "args", over the project's scripts (first present wins).
MODEL_ARGS = ("model_name", "model", "model_id", "model_name_or_path")
SOURCE_ARGS = ("dataset", "dataset_name", "prompts", "data")
SPLIT_ARGS = ("split", "split_name", "dataset_split")
SCORING_ARGS = ("scoring", "prompt_format", "input_format")  # input_format: the reward models


def model_short_name(model: str) -> str:
    """Upstream's ``model_name.split('/')[-1]``, also dropping a .gguf suffix and trailing slashes."""
    name = str(model).rstrip("/").split("/")[-1]
    return name[: -len(".gguf")] if name.endswith(".gguf") else name


def run_description(
    benchmark: str,
    method: str,
    model: str | None,
    *,
    scoring: str | None = None,
    backend: str | None = None,
    source: str | Sequence[str] | None = None,
    split: str | None = None,
    n: int | None = None,
    coverage: dict | None = None,
) -> dict:
    """metrics.json's "run" object from values (the module docstring has its fields).

    ``benchmark`` one of BENCHMARKS; ``method`` an id like those of METHODS (lower case, digits, _);
    ``model`` as the user gave it; ``source`` the data as given (one or several); ``n`` the examples the
    metrics cover; ``coverage`` metrics["coverage"]. Raises ValueError on an unknown benchmark or a
    malformed method id (a programming error, not a user's).
    """
    if benchmark not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {benchmark!r}; one of {', '.join(BENCHMARKS)}")
    if not _METHOD_ID.match(method or ""):
        raise ValueError(f"method id {method!r} must be lower case letters, digits and _")
    if source is not None and not isinstance(source, str):
        source = list(source)
        source = source[0] if len(source) == 1 else source
    return {
        "benchmark": benchmark,
        "method": method,
        "model": None if model is None else str(model),
        "model_short": None if model is None else model_short_name(model),
        "scoring": scoring,
        "backend": backend or "hf",
        "data": {"source": source, "split": split, "n": n},
        "coverage": coverage,
    }


def _first(arguments: dict, names: Sequence[str]):
    return next((arguments[k] for k in names if arguments.get(k) is not None), None)


def describe_run(
    run_path: str | os.PathLike,
    benchmark: str,
    method: str,
    n: int | None = None,
    coverage: dict | None = None,
    **overrides,
) -> dict:
    """metrics.json's "run" object of the run folder ``run_path``, from the arguments in its config.json.

    The model, prompt format (``scoring``), backend, data source and split are read from config.json's
    "args" under the names the project's scripts use (MODEL_ARGS, SCORING_ARGS, SOURCE_ARGS, SPLIT_ARGS,
    "backend"); ``overrides`` (any keyword of run_description: model, scoring, backend, source, split)
    replace what config.json says, e.g. ``scoring=None`` for a method without a prompt format. A folder
    without a readable config.json gives the overrides alone.
    """
    try:
        config = json.loads((Path(run_path) / "config.json").read_text(encoding="utf-8"))
        arguments = config.get("args") or {}
    except (OSError, ValueError, AttributeError):
        arguments = {}
    values = {
        "model": _first(arguments, MODEL_ARGS),
        "scoring": _first(arguments, SCORING_ARGS),
        "backend": arguments.get("backend"),
        "source": _first(arguments, SOURCE_ARGS),
        "split": _first(arguments, SPLIT_ARGS),
    }
    values.update(overrides)
    model = values.pop("model")
    return run_description(benchmark, method, model, n=n, coverage=coverage, **values)
