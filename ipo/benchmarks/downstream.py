"""Downstream benchmarks of a model through EleutherAI's lm-evaluation-harness (``lm-eval``, pinned 0.4.13).

The paper (Garg et al., arXiv 2502.16182) evaluates the self-improved Mistral-7B on BBH, ARC-Easy, MMLU and
IFEval (with an AlpacaEval win rate, ipo.benchmarks.alpaca_eval), but states neither the harness nor the
shot settings, and the authors' code has none. Here each task runs through lm-eval's Python API
(``lm_eval.simple_evaluate`` with a ``TaskManager``) with the task's own settings in lm-eval 0.4.13 unless
``num_fewshot`` overrides them; the settings used are read back from lm-eval's results and recorded:

  bbh       the 27 BIG-Bench Hard tasks, 3-shot chain-of-thought (lm-eval's ``bbh`` group =
            bbh_cot_fewshot_*), greedy, exact match of the text after "the answer is" (size-weighted mean)
  arc_easy  ARC-Easy test, 0-shot, log-likelihood of each choice: accuracy
  mmlu      the 57 MMLU subjects, 0-shot, log-likelihood of A/B/C/D: accuracy (size-weighted mean)
  ifeval    IFEval, 0-shot, greedy up to 1,280 tokens: prompt-level strict accuracy

The model is the one the caller loaded (ipo.modeling, a PEFT adapter applied or not), wrapped in lm-eval's
``HFLM``, so every task and the win rate's generation share one load. Each task's results are written to
``lm_eval/<task>.json`` (and its per-example samples to ``lm_eval/<task>.samples.jsonl``) as soon as it ends,
so a resumed run skips finished tasks; lm-eval's request cache (``lm_eval/cache_rank0.db``) keeps the model's
answers of a task killed halfway. Task names are lm-eval's: the Hub tasks above, or local YAML tasks under
``include_path`` (``dataset_path: json`` with ``data_files``), checked before any model loads.

``write_outputs`` is the run's one writer of metrics.json and results.md: "scores" {task: percent} (the win
rate as "alpaca_eval"), "metric_names" {task: the lm-eval metric behind it}, "tasks" (shots, sizes, standard
errors, every metric), "alpaca_eval", "coverage" and the "run" object of ipo.run_info.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from ipo import IpoError
from ipo.benchmarks.alpaca_eval import win_rate_markdown
from ipo.data import Coverage
from ipo.report import markdown_table
from ipo.run_info import run_description
from ipo.runs import atomic_write_json, atomic_write_jsonl, atomic_write_text

logger = logging.getLogger("ipo")

# The paper's downstream benchmarks, as lm-eval names them.
PAPER_TASKS = ("bbh", "arc_easy", "mmlu", "ifeval")
# The score reported for each known task: lm-eval's "metric,filter" key, and why that one.
HEADLINE_METRICS = {
    "bbh": "exact_match,get-answer",  # the bbh group's own aggregate (answer after "the answer is")
    "arc_easy": "acc,none",  # plain accuracy, the first metric of lm-eval's arc_easy (acc_norm is kept too)
    "mmlu": "acc,none",  # the mmlu group's size-weighted accuracy
    "ifeval": "prompt_level_strict_acc,none",  # all of a prompt's instructions followed, strictly checked
}


# ---------------------------------------------------------------------------------------------------
# Flags into values (pure)
# ---------------------------------------------------------------------------------------------------
def parse_task_list(text: str) -> list[str]:
    """ "bbh,arc_easy" -> ["bbh", "arc_easy"]; "none" or "" -> [] (the win rate alone); duplicates dropped."""
    names = [t.strip() for t in text.split(",") if t.strip()]
    if names == ["none"]:
        return []
    return list(dict.fromkeys(names))


def parse_num_fewshot(items: Sequence[str], tasks: Sequence[str]) -> dict[str, int]:
    """["mmlu=5", "bbh=0"] -> {"mmlu": 5, "bbh": 0}; one line for a malformed item or a task not run."""
    out: dict[str, int] = {}
    for item in items or ():
        name, sep, value = item.partition("=")
        if not sep or not value.strip().isdigit():
            raise IpoError(f"--num_fewshot takes TASK=N (e.g. mmlu=5), got {item!r}")
        if name not in tasks:
            raise IpoError(f"--num_fewshot {item}: {name!r} is not among --tasks ({', '.join(tasks) or 'none'})")
        out[name] = int(value)
    return out


# ---------------------------------------------------------------------------------------------------
# Tasks
# ---------------------------------------------------------------------------------------------------
def task_manager(tasks: Sequence[str], include_path: str | None = None):
    """lm-eval's TaskManager that knows every name in ``tasks``; one line naming the unknown ones and the
    close names lm-eval has (read from its installed YAML index: no network).

    With ``include_path``, the local tasks are indexed alone first; lm-eval's ~14,000 built-in configs
    (about 8 s to index) are added only when a name is not among the local ones.
    """
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from lm_eval.tasks import TaskManager

    if include_path is not None and not Path(include_path).is_dir():
        raise IpoError(f"--include_path {include_path}: no such folder (it holds lm-eval task YAML files)")
    if include_path is not None:
        local = TaskManager(include_path=include_path, include_defaults=False)
        if all(name in local.all_tasks for name in tasks):
            return local
    manager = TaskManager(include_path=include_path)
    unknown = [name for name in tasks if name not in manager.all_tasks]
    if unknown:
        hints = []
        for name in unknown:
            close = difflib.get_close_matches(name, manager.all_tasks, n=4, cutoff=0.6)
            hints.append(f"{name!r} (close: {', '.join(close)})" if close else repr(name))
        raise IpoError(
            f"unknown lm-eval task(s): {'; '.join(hints)}; the paper's are {','.join(PAPER_TASKS)}, and "
            "--include_path DIR adds local task YAML files"
        )
    return manager


def check_task_requirements(tasks: Sequence[str]) -> None:
    """What lm-eval's IFEval imports only when its task loads (after the model has loaded): the
    ``lm-eval[ifeval]`` extras and NLTK's ``punkt_tab`` data, which lm-eval downloads at that point. Checked
    (and the data fetched, once) before any model loads; one line when it cannot be had."""
    if not any("ifeval" in name for name in tasks):
        return
    import importlib.util

    missing = [m for m in ("langdetect", "immutabledict", "nltk") if importlib.util.find_spec(m) is None]
    if missing:
        raise IpoError(f"IFEval needs {', '.join(missing)}: pip install 'lm-eval[ifeval]==0.4.13'")
    import nltk

    try:
        nltk.data.find("tokenizers/punkt_tab")
    except LookupError:
        logger.info("IFEval: fetching NLTK's punkt_tab data (once; lm-eval would fetch it after the model loads)")
        if not nltk.download("punkt_tab", quiet=True):
            raise IpoError(
                "IFEval needs NLTK's punkt_tab data and it could not be downloaded: on a machine with network, run "
                "python -c \"import nltk; nltk.download('punkt_tab')\" and copy ~/nltk_data here (or set NLTK_DATA)"
            )


def headline(task: str, task_results: dict) -> tuple[str, float | None, float | None]:
    """(metric key, value, standard error) of a task's lm-eval results: HEADLINE_METRICS for known tasks,
    else the first "metric,filter" key lm-eval reported."""
    key = HEADLINE_METRICS.get(task)
    if key is None or key not in task_results:
        keys = [k for k in task_results if "," in k and "_stderr," not in k]
        if not keys:
            raise IpoError(f"lm-eval reported no metric for {task!r}: {sorted(task_results)}")
        key = keys[0]
    metric, _, filt = key.partition(",")
    stderr = task_results.get(f"{metric}_stderr,{filt}")
    value = task_results[key]
    return key, _number(value), _number(stderr)


def _number(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and value == value else None


def leaf_tasks(results: dict, task: str) -> list[str]:
    """The leaf tasks lm-eval ran for ``task`` (itself, or a group's subtasks at any depth)."""
    group_subtasks = results.get("group_subtasks") or {}
    if task not in group_subtasks:
        return [task]
    leaves: list[str] = []
    for child in group_subtasks[task]:
        leaves += leaf_tasks(results, child)
    return leaves


def task_summary(task: str, results: dict, limit: int | None) -> dict:
    """What metrics.json keeps of one task's lm-eval output: the headline score in percent, its metric,
    standard error, the shots and sizes used, and every metric lm-eval reported."""
    task_results = (results.get("groups") or {}).get(task) or results["results"][task]
    key, value, stderr = headline(task, task_results)
    leaves = leaf_tasks(results, task)
    n_samples = results.get("n-samples") or {}
    shots = {results.get("n-shot", {}).get(leaf) for leaf in leaves}
    return {
        "score": None if value is None else round(100 * value, 2),
        "metric": key,
        "stderr": None if stderr is None else round(100 * stderr, 2),
        "num_fewshot": shots.pop() if len(shots) == 1 else sorted(s for s in shots if s is not None),
        "n": sum((n_samples.get(leaf) or {}).get("effective", 0) for leaf in leaves),
        "n_in_data": sum((n_samples.get(leaf) or {}).get("original", 0) for leaf in leaves),
        "n_subtasks": len(leaves) if leaves != [task] else 0,
        "limit": limit,
        "metrics": {k: v for k, v in task_results.items() if "," in k},
    }


# ---------------------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------------------
class _LoadedModelWarnings(logging.Filter):
    """Drops HFLM's two warnings about being given a loaded model, which this project does on purpose (one
    process, one load shared with the win rate); their advice ("do not launch via accelerate") misleads here."""

    PREFIXES = (
        "`pretrained` model kwarg is not of type `str`",
        "Passed an already-initialized model through `pretrained`",
    )

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.PREFIXES)


def lm_eval_model(model, tokenizer, batch_size: int | str, max_length: int | None = None):
    """lm-eval's HFLM around a model already loaded (PEFT adapters included); ``batch_size`` an int or
    "auto" (lm-eval finds the largest that fits)."""
    from lm_eval.models.huggingface import HFLM

    hflm_logger, quiet = logging.getLogger("lm_eval.models.huggingface"), _LoadedModelWarnings()
    hflm_logger.addFilter(quiet)
    try:
        return HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=max_length)
    finally:
        hflm_logger.removeFilter(quiet)


def run_task(
    lm,
    manager,
    task: str,
    folder: str | os.PathLike,
    *,
    num_fewshot: int | None = None,
    limit: int | None = None,
    apply_chat_template: bool = False,
) -> dict:
    """Run one task (or group) through lm_eval.simple_evaluate; write ``<task>.json`` (lm-eval's results
    without the samples) and ``<task>.samples.jsonl`` in ``folder``; return task_summary."""
    from lm_eval import simple_evaluate

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    results = simple_evaluate(
        model=lm,
        tasks=[task],
        num_fewshot=num_fewshot,
        limit=limit,
        task_manager=manager,
        use_cache=str(folder / "cache"),
        log_samples=True,
        apply_chat_template=apply_chat_template,
    )
    if results is None:  # a process other than the main one of a distributed lm-eval run
        raise IpoError("lm-eval returned no results (run this script as one process)")
    samples = results.pop("samples", {}) or {}
    atomic_write_jsonl(
        folder / f"{task}.samples.jsonl",
        (json.loads(json.dumps({"task": name, **s}, default=str)) for name, rows in samples.items() for s in rows),
    )
    keep = {k: results.get(k) for k in ("results", "groups", "group_subtasks", "configs", "versions", "n-shot")}
    keep.update({k: results.get(k) for k in ("n-samples", "higher_is_better", "lm_eval_version", "config")})
    keep = json.loads(json.dumps(keep, default=str))
    summary = task_summary(task, keep, limit)
    atomic_write_json(
        folder / f"{task}.json",
        {
            "task": task,
            "requested": {"num_fewshot": num_fewshot, "limit": limit, "apply_chat_template": apply_chat_template},
            "summary": summary,
            "lm_eval": keep,
        },
    )
    return summary


def finished_task(folder: str | os.PathLike, task: str, settings: dict) -> dict | None:
    """The summary of ``task`` from an earlier run in ``folder`` made with the same ``settings``
    (num_fewshot, limit, apply_chat_template), else None (it runs again)."""
    path = Path(folder) / f"{task}.json"
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return saved.get("summary") if saved.get("requested") == settings else None


# ---------------------------------------------------------------------------------------------------
# The run's outputs
# ---------------------------------------------------------------------------------------------------
WIN_RATE_METRIC = "win_rate (percent of instructions won, both orders, ties half)"


def downstream_metrics(
    model: str, tasks: dict[str, dict], win: dict | None, reference_outputs: str | None, limit: int | None
) -> dict:
    """metrics.json of a downstream run: "run" (ipo.run_info), "scores" {task: percent} with the win rate as
    "alpaca_eval", "metric_names" {task: the lm-eval "metric,filter" behind the score}, "tasks" (task_summary
    each), "alpaca_eval" (ipo.benchmarks.alpaca_eval.win_rate_metrics, or None) and "coverage"."""
    scores = {task: s["score"] for task, s in tasks.items()}
    metric_names = {task: s["metric"] for task, s in tasks.items()}
    if win is not None:
        scores["alpaca_eval"] = win["win_rate"]
        metric_names["alpaca_eval"] = WIN_RATE_METRIC
    coverage = Coverage(
        n_in_data=sum(s["n_in_data"] for s in tasks.values()) + (win["n_in_data"] if win else 0),
        limit=limit,
        per="task",
        unit="examples",
    ).metrics(sum(s["n"] for s in tasks.values()) + (win["n_judged"] if win else 0))
    sources = list(tasks) + ([reference_outputs] if reference_outputs else [])
    return {
        "run": run_description(
            "downstream", "downstream", model, scoring=None, source=sources, n=coverage["n_scored"], coverage=coverage
        ),
        "scores": scores,
        "metric_names": metric_names,
        "tasks": tasks,
        "alpaca_eval": win,
        "coverage": coverage,
    }


def results_markdown(name: str, tasks: dict[str, dict], win: dict | None, limit: int | None, chat: bool) -> str:
    """results.md: one row per task (score, standard error, metric, shots, examples), then the win rate."""
    rows = [[task, s["score"], s["stderr"], s["metric"], s["num_fewshot"], s["n"]] for task, s in tasks.items()]
    if win is not None:
        rows.append(
            ["alpaca_eval", win["win_rate"], win["win_rate_stderr"], "win rate, both orders", 0, win["n_judged"]]
        )
    text = f"# Downstream evaluation: {name}\n\n" + markdown_table(
        ["task", "score %", "stderr", "lm-eval metric", "shots", "examples"], rows
    )
    if tasks:
        text += (
            "\nlm-eval tasks with lm-eval's own settings unless --num_fewshot says otherwise"
            + (", through the chat template" if chat else "")
            + (f"; at most {limit} examples per task (not comparable with full runs)" if limit else "")
            + ".\n"
        )
    if win is not None:
        text += "\n" + win_rate_markdown(win)
    return text


def write_outputs(
    run_path: str | os.PathLike,
    model: str,
    name: str,
    tasks: dict[str, dict],
    win: dict | None,
    *,
    reference_outputs: str | None = None,
    limit: int | None = None,
    apply_chat_template: bool = False,
) -> str:
    """Write metrics.json (downstream_metrics) and results.md into the run folder; returns results.md."""
    run_path = Path(run_path)
    atomic_write_json(run_path / "metrics.json", downstream_metrics(model, tasks, win, reference_outputs, limit))
    markdown = results_markdown(name, tasks, win, limit, apply_chat_template)
    atomic_write_text(run_path / "results.md", markdown)
    return markdown
