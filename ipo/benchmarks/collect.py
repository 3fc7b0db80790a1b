"""The collector: many run folders into the paper's tables, the published value beside each reproduced one.

``collect(paths, output_dir)`` (Preference_Comparison/collect.py) finds every run folder under the paths
(a folder holding metrics.json; its sub-folders, e.g. a DPO run's round_1/, are the same run), reads the
"run" object each writer puts in metrics.json (ipo.run_info), and writes to ``output_dir``:

    paper_tables.md        one section per table, in the paper's shape:
                           RewardBench (model x method: Chat / Code / Math / Safety / Avg, the paper's
                           categories, each cell "reproduced / published (difference)"), then the official
                           sections (Chat / Chat Hard / Safety / Reasoning / Score); RM-Bench (per domain,
                           hard / normal / easy / average); self-improvement (the judge's mean score on the
                           held-out prompts before / after DPO); downstream (BBH, ARC-Easy, AlpacaEval, MMLU,
                           IFEval)
    paper_tables.csv       the same values in long form: one line per (table, row, column)
    paper_comparison.png   reproduced against published for every cell that has both

Every row the paper has (ipo/paper_results.csv, ipo.paper) is shown, with empty reproduced cells where no
run matches it yet; runs of models or methods the paper lacks are added as rows of their own. A run is
compared with the paper (a difference computed) only when it covers the paper's data: all 5,123 pairs of
RewardBench's raw split (a --limit, a --set_name, the filtered split or the demo file are shown, marked by
their coverage, with no difference). RewardBench runs of one model and method over disjoint --set_name groups
(upstream's set1, set2, set3 of the 5-point judge) are combined into one row first. Values are percent (judge scores of the self-improvement table as the
judge gives them: P(Yes) or 1-5).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from ipo import IpoError
from ipo.benchmarks.rewardbench import PAPER_CATEGORIES, SPLITS, section_scores
from ipo.benchmarks.rmbench import OFFICIAL_SIZES
from ipo.paper import COLUMNS, paper_model, paper_rows, published
from ipo.report import comparison_plot, markdown_table, mean
from ipo.run_info import describe_run
from ipo.runs import atomic_write_text

logger = logging.getLogger("ipo")

METRICS = "metrics.json"
PAPER_SPLIT = "raw"  # RewardBench: the paper's numbers come from the unfiltered split
RMBENCH_PROMPTS = sum(OFFICIAL_SIZES.values())  # 1,327 prompts in the official release
RB_CATEGORIES = dict(zip(COLUMNS["rewardbench"], ("chat", "code", "math", "safety", None)))  # Avg: the mean
RB_SECTIONS = ("Chat", "Chat Hard", "Safety", "Reasoning")
RM_COLUMNS = ("chat", "math", "code", "safety", "hard", "normal", "easy", "average")
SI_COLUMNS = ("before", "after", "change")
# lm-eval task names (ipo.benchmarks.downstream) and the win rate (ipo.benchmarks.alpaca_eval) -> the paper's columns
DOWNSTREAM_TASKS = {
    "bbh": "BBH",
    "arc_easy": "ARC-Easy",
    "alpaca_eval": "AlpacaEval",
    "mmlu": "MMLU",
    "ifeval": "IFEval",
}
# The method column of rows the paper lacks (paper rows take their label from ipo/paper_results.csv).
METHOD_LABELS = {
    "ipo": "IPO",
    "self_rewarding": "Self-Rewarding",
    "reward_model": "Reward model",
    "api_ipo": "IPO (API)",
    "api_self_rewarding": "Self-Rewarding (API)",
    "api_binary": "Pairwise (API)",
    "dpo_loop_ipo": "Ours (IPO)",
    "dpo_loop_self_rewarding": "Self-Rewarding",
    "dpo_loop_reward_model": "Reward model",
    "downstream": "untrained",  # a downstream run of a model no collected self-improvement run trained
}
TABLE_TITLES = {
    "rewardbench": "RewardBench: the paper's categories (accuracy %)",
    "rewardbench_sections": "RewardBench: official sections (accuracy %)",
    "rmbench": "RM-Bench (accuracy %)",
    "selfimprove": "Self-improvement: the judge on held-out prompts before and after DPO",
    "downstream": "Downstream scores of the trained models (%)",
}


@dataclass
class Run:
    """One run folder: its metrics.json and the "run" object in it."""

    path: Path
    metrics: dict
    info: dict

    @property
    def benchmark(self) -> str:
        return self.info.get("benchmark") or "unknown"

    @property
    def method(self) -> str:
        return self.info.get("method") or "unknown"

    @property
    def model(self) -> str | None:
        return self.info.get("model")


@dataclass
class Row:
    """One row of a table: a paper row, a run, or both; cells {column: value} in percent (or judge units)."""

    table: str
    model: str
    method: str
    run: Run | None = None
    paper_model: str | None = None
    label: str = ""
    reproduced: dict = field(default_factory=dict)
    published: dict = field(default_factory=dict)
    comparable: bool = False
    coverage: str = ""

    def difference(self, column: str) -> float | None:
        mine, theirs = self.reproduced.get(column), self.published.get(column)
        if not self.comparable or mine is None or theirs is None:
            return None
        return round(mine - theirs.value, 2)


# ---------------------------------------------------------------------------------------------------
# Finding and reading runs
# ---------------------------------------------------------------------------------------------------
def _guess_benchmark(metrics: dict) -> str | None:
    """The benchmark of a metrics.json written before the "run" object existed."""
    if "sections" in metrics and "subsets" in metrics:
        return "rewardbench"
    if "domains" in metrics and "hard" in metrics:
        return "rmbench"
    if "rounds" in metrics:
        return "selfimprove"
    return None


def read_run(folder: Path) -> Run | None:
    """The Run in ``folder`` (which holds metrics.json), or None with a warning when it cannot be read."""
    try:
        metrics = json.loads((folder / METRICS).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        logger.warning("skipping %s: unreadable %s (%s)", folder, METRICS, error)
        return None
    if not isinstance(metrics, dict):
        logger.warning("skipping %s: %s is not an object", folder, METRICS)
        return None
    info = metrics.get("run")
    if not isinstance(info, dict):
        benchmark = _guess_benchmark(metrics)
        if benchmark is None:
            logger.warning('skipping %s: %s names no run (no "run" object) and is no known benchmark', folder, METRICS)
            return None
        info = describe_run(folder, benchmark, "unknown", coverage=metrics.get("coverage"))
        logger.warning('%s: %s has no "run" object (an older run); method unknown', folder, METRICS)
    return Run(folder, metrics, info)


def find_runs(paths: list[str | os.PathLike]) -> list[Run]:
    """Every run folder in or under ``paths``, in path order; one line (IpoError) for a path with none."""
    runs: list[Run] = []
    seen: set[Path] = set()
    for given in paths:
        root = Path(given)
        if not root.exists():
            raise IpoError(f"{root} does not exist")
        folders = []
        for current, subdirs, files in os.walk(root):
            subdirs.sort()
            if METRICS in files:
                folders.append(Path(current))
                subdirs.clear()  # a run's own sub-folders (rounds, checkpoints) belong to it
        found = [run for run in map(read_run, folders) if run is not None]
        if not found:
            raise IpoError(f"{root}: no run folder in it or under it (a folder with a readable {METRICS})")
        for run in found:
            if run.path.resolve() not in seen:
                seen.add(run.path.resolve())
                runs.append(run)
    return runs


def combine_set_runs(runs: list[Run]) -> list[Run]:
    """``runs`` with RewardBench runs of one model, method and settings over disjoint --set_name groups
    (upstream ran its 5-point judge as set1, set2, set3) replaced by one run over their union: its subsets as
    they were, the sections and the paper's categories recomputed from them (pooled over pairs, as
    ipo.benchmarks.rewardbench.compute_metrics does). Groups that overlap (set1 and set1_phi) stay apart."""
    groups: dict[str, list[Run]] = {}
    for run in runs:
        coverage = run.info.get("coverage") or {}
        if run.benchmark == "rewardbench" and str(coverage.get("selection") or "").startswith("--set_name"):
            info = {k: v for k, v in run.info.items() if k != "coverage"}
            info["data"] = {**(info.get("data") or {}), "n": None}
            key = json.dumps([info, coverage.get("limit")], sort_keys=True, default=str)
            groups.setdefault(key, []).append(run)
    replaced: dict[Path, Run | None] = {}
    for parts in groups.values():
        subsets = [set(p.metrics.get("subsets") or {}) for p in parts]
        if len(parts) < 2 or sum(map(len, subsets)) != len(set().union(*subsets)):
            continue
        merged = {name: s for p in parts for name, s in p.metrics["subsets"].items()}
        n = sum(s["n"] for s in merged.values())
        categories = {}
        for category, members in PAPER_CATEGORIES.items():
            present = [merged[m] for m in members if m in merged]
            total = sum(s["n"] for s in present)
            categories[category] = sum(s["accuracy"] * s["n"] for s in present) / total if total else None
        sections = section_scores({name: s["accuracy"] for name, s in merged.items()})
        metrics = {
            "n_pairs": n,
            "subsets": merged,
            "sections": sections,
            "score": mean(sections.values()),
            "categories": categories,
            "categories_average": mean(categories.values()),
        }
        limit = (parts[0].info.get("coverage") or {}).get("limit")
        selections = " + ".join(str((p.info.get("coverage") or {}).get("selection")) for p in parts)
        coverage = {"n_scored": n, "limit": limit, "selection": None if n == SPLITS[PAPER_SPLIT] else selections}
        info = {**parts[0].info, "coverage": coverage, "data": {**(parts[0].info.get("data") or {}), "n": n}}
        info["combined_from"] = selections
        combined = Run(Path(" + ".join(str(p.path) for p in parts)), metrics, info)
        replaced.update({p.path: None for p in parts[1:]})
        replaced[parts[0].path] = combined
    return [replaced.get(run.path, run) for run in runs if replaced.get(run.path, run) is not None]


# ---------------------------------------------------------------------------------------------------
# Coverage: is a run on the paper's data?
# ---------------------------------------------------------------------------------------------------
def _count(run: Run, fallback_key: str) -> int | None:
    coverage = run.info.get("coverage") or run.metrics.get("coverage") or {}
    return coverage.get("n_scored") or (run.info.get("data") or {}).get("n") or run.metrics.get(fallback_key)


def rewardbench_coverage(run: Run) -> tuple[bool, str]:
    """(whether the run covers the paper's data, what it covers in words)."""
    data = run.info.get("data") or {}
    split, n = data.get("split"), _count(run, "n_pairs")
    coverage = run.info.get("coverage") or {}
    how = []
    if coverage.get("selection"):
        how.append(coverage["selection"])
    if coverage.get("limit"):
        how.append(f"--limit {coverage['limit']}")
    source = data.get("source")
    text = (
        f"{n} pairs, {split or '?'} split" + (f", {source}" if source else "") + (f" ({', '.join(how)})" if how else "")
    )
    full = split == PAPER_SPLIT and n == SPLITS[PAPER_SPLIT] and not how
    if split in SPLITS and split != PAPER_SPLIT:
        text += f"; the paper used the {PAPER_SPLIT} split"
    elif not full:
        text += f"; partial: the paper's data is {SPLITS[PAPER_SPLIT]} pairs"
    if run.info.get("combined_from"):
        text += f"; combined from {len(run.info['combined_from'].split(' + '))} runs ({run.info['combined_from']})"
    failed = run.metrics.get("n_failed")
    if failed:
        text += f"; {failed} API failures counted wrong"
    return full, text


def rmbench_coverage(run: Run) -> tuple[bool, str]:
    n = _count(run, "n_prompts")
    full = run.metrics.get("complete") and n == RMBENCH_PROMPTS
    missing = run.metrics.get("domains_missing") or []
    text = f"{n} prompts" + (f", domains missing: {', '.join(missing)}" if missing else "")
    return bool(full), text + ("" if full else f"; partial: the official release has {RMBENCH_PROMPTS} prompts")


# ---------------------------------------------------------------------------------------------------
# Rows
# ---------------------------------------------------------------------------------------------------
def _percent(value) -> float | None:
    return None if value is None else round(100 * value, 2)


def rewardbench_values(metrics: dict) -> tuple[dict, dict]:
    """({paper column: percent}, {official section or Score: percent}) of a RewardBench metrics.json."""
    categories = metrics.get("categories") or {}
    paper = {col: _percent(categories.get(key)) for col, key in RB_CATEGORIES.items() if key}
    paper["Avg"] = _percent(metrics.get("categories_average"))
    sections = {name: _percent((metrics.get("sections") or {}).get(name)) for name in RB_SECTIONS}
    sections["Score"] = _percent(metrics.get("score"))
    return paper, sections


def rmbench_values(metrics: dict) -> dict:
    domains = metrics.get("domains") or {}
    values = {name: _percent((domains.get(name) or {}).get("score")) for name in ("chat", "math", "code", "safety")}
    values.update({key: _percent(metrics.get(key)) for key in ("hard", "normal", "easy", "average")})
    return values


def selfimprove_values(metrics: dict) -> tuple[dict, str]:
    """The judge's held-out before / after / change (metrics.json "held_out", else the last round's "after"
    on its "test" part), and the coverage in words."""
    held = metrics.get("held_out")
    if not held:
        for m in reversed(metrics.get("rounds") or []):
            before, after = ((m.get("after") or {}).get(k) or {} for k in ("before", "after"))
            if (after.get("test") or {}).get("n_prompts"):
                old, new = (before.get("test") or {}).get("mean"), after["test"].get("mean")
                held = {"before": old, "after": new, "n_prompts": after["test"]["n_prompts"], "round": m.get("round")}
                held["change"] = None if old is None or new is None else new - old
                break
    if not held:
        return {}, "no held-out before/after (run with --judge_after and held-out prompts)"
    values = {k: None if held.get(k) is None else round(held[k], 4) for k in SI_COLUMNS}
    return values, f"{held.get('n_prompts')} held-out prompts, round {held.get('round', '?')}"


def downstream_values(metrics: dict) -> tuple[dict, bool, str]:
    """({paper column: percent}, whether every task ran in full, coverage in words) of a downstream
    metrics.json: "tasks" {lm-eval task: {"score" (percent), "n", "n_in_data", "limit"}} and the AlpacaEval-style
    win rate under "alpaca_eval" {"win_rate" (percent), "n_judged", "n_in_data"} (DPO/Evals/downstream.py)."""
    tasks = dict(metrics.get("tasks") or {})
    if isinstance(metrics.get("alpaca_eval"), dict):
        tasks.setdefault("alpaca_eval", metrics["alpaca_eval"])
    values, parts, full = {}, [], True
    for task, column in DOWNSTREAM_TASKS.items():
        entry = tasks.get(task)
        if not isinstance(entry, dict):
            continue
        score = entry.get("score", entry.get("win_rate"))
        values[column] = None if score is None else round(float(score), 2)
        n, total = entry.get("n", entry.get("n_judged")), entry.get("n_in_data")
        partial = bool(entry.get("limit")) or (n is not None and total is not None and n < total)
        full = full and not partial
        parts.append(f"{column} {n}" + (f"/{total}" if total else "") + (" (partial)" if partial else ""))
    for task, entry in sorted(tasks.items()):  # tasks the paper did not run get columns of their own
        if task in DOWNSTREAM_TASKS or not isinstance(entry, dict) or entry.get("score") is None:
            continue
        values[task] = round(float(entry["score"]), 2)
        n, total = entry.get("n"), entry.get("n_in_data")
        partial = bool(entry.get("limit")) or (n is not None and total is not None and n < total)
        parts.append(f"{task} {n}" + (f"/{total}" if total else "") + (" (partial)" if partial else ""))
    five = [values.get(column) for column in DOWNSTREAM_TASKS.values()]
    if None not in five:  # the paper's Avg: the mean of its five columns
        values["Avg"] = round(sum(five) / len(five), 2)
    return values, full and bool(values), ", ".join(parts) or "no task scores"


def _trained_by(run: Run, by_path: dict[Path, Run]) -> Run | None:
    """The self-improvement run whose folder holds the model a downstream run evaluated, if any."""
    model = run.model
    if not model or not os.path.exists(model):
        return None
    for parent in Path(model).resolve().parents:
        if parent in by_path and by_path[parent].benchmark == "selfimprove":
            return by_path[parent]
    return None


def build_rows(runs: list[Run]) -> dict[str, list[Row]]:
    """{table: rows}: every paper row (with its matching runs, or none) and every other run."""
    by_path = {run.path.resolve(): run for run in runs}
    tables: dict[str, list[Row]] = {name: [] for name in TABLE_TITLES}
    for table in ("rewardbench", "downstream"):
        for model, method, label in paper_rows(table):
            tables[table].append(Row(table, model, method, paper_model=model, label=label))
    for run in runs:
        who, method = paper_model(run.model), run.method
        name = who or run.info.get("model_short") or run.model or "?"
        if run.benchmark == "rewardbench" and "categories" not in run.metrics:
            logger.info("%s: a %s run has no row in the paper's RewardBench tables", run.path, method)
        elif run.benchmark == "rewardbench":
            full, text = rewardbench_coverage(run)
            paper_values, sections = rewardbench_values(run.metrics)
            _place(
                tables["rewardbench"],
                Row("rewardbench", name, method, run, who, reproduced=paper_values, comparable=full, coverage=text),
            )
            tables["rewardbench_sections"].append(
                Row("rewardbench_sections", name, method, run, who, reproduced=sections, coverage=text)
            )
        elif run.benchmark == "rmbench":
            full, text = rmbench_coverage(run)
            tables["rmbench"].append(
                Row(
                    "rmbench",
                    name,
                    method,
                    run,
                    who,
                    reproduced=rmbench_values(run.metrics),
                    comparable=full,
                    coverage=text,
                )
            )
        elif run.benchmark == "selfimprove":
            values, text = selfimprove_values(run.metrics)
            tables["selfimprove"].append(Row("selfimprove", name, method, run, who, reproduced=values, coverage=text))
        elif run.benchmark == "downstream":
            trainer = _trained_by(run, by_path)
            if trainer is not None:
                who, method = paper_model(trainer.model), trainer.method
                name = who or trainer.info.get("model_short") or "?"
            values, full, text = downstream_values(run.metrics)
            _place(
                tables["downstream"],
                Row("downstream", name, method, run, who, reproduced=values, comparable=full, coverage=text),
            )
        else:
            logger.warning("skipping %s: benchmark %r has no table", run.path, run.benchmark)
    for rows in tables.values():
        for row in rows:
            if row.paper_model and not row.published:
                row.published = published(row.table, row.paper_model, row.method)
    return tables


def _place(rows: list[Row], row: Row) -> None:
    """Fill the paper's empty row of the same model and method with ``row``, or add it (after its kin)."""
    for k, existing in enumerate(rows):
        if existing.paper_model and existing.paper_model == row.paper_model and existing.method == row.method:
            if existing.run is None:
                row.label = existing.label
                rows[k] = row
            else:
                row.label = existing.label
                rows.insert(k + 1, row)
            return
    rows.append(row)


# ---------------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------------
def columns_of(table: str, rows: list[Row] = ()) -> tuple[str, ...]:
    """The table's columns: the paper's, then (downstream) any task of ``rows`` the paper did not run."""
    fixed = {
        "rewardbench": COLUMNS["rewardbench"],
        "rewardbench_sections": (*RB_SECTIONS, "Score"),
        "rmbench": RM_COLUMNS,
        "selfimprove": SI_COLUMNS,
        "downstream": COLUMNS["downstream"],
    }[table]
    extra = sorted({column for row in rows for column in row.reproduced} - set(fixed))
    return (*fixed, *extra)


def method_label(row: Row) -> str:
    return row.label or METHOD_LABELS.get(row.method, row.method)


def _num(value, digits: int = 2) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def cell(row: Row, column: str) -> str:
    """A markdown cell: "reproduced / published (difference)"; "-" for a value not there."""
    digits = 4 if row.table == "selfimprove" else 2
    mine = row.reproduced.get(column)
    text = "-" if mine is None else _num(mine, digits)
    theirs = row.published.get(column)
    if theirs is not None:
        text += f" / {theirs.value:.2f}" + ("*" if theirs.secondary else "")
        diff = row.difference(column)
        if diff is not None:
            text += f" ({diff:+.2f})"
    return text


def markdown(tables: dict[str, list[Row]]) -> str:
    out = [
        "# The paper's tables, reproduced\n",
        "Cells: reproduced / published (difference, reproduced - published, in points); '-': no run yet. A "
        "published value marked * was read from a secondary transcription (ipo/paper_results.csv says which). A "
        "difference is given only for a run over the paper's data; other runs say what they cover.\n",
    ]
    for table, rows in tables.items():
        if not rows:
            continue
        out.append(f"## {TABLE_TITLES[table]}\n")
        columns = columns_of(table, rows)
        body = [
            [
                row.model,
                method_label(row),
                (row.run.info.get("scoring") or "") if row.run else "",
                (row.run.info.get("backend") or "hf") if row.run else "",
                *(cell(row, c) for c in columns),
                row.coverage.replace("partial:", "**partial:**") if row.run else "no run yet",
                str(row.run.path) if row.run else "",
            ]
            for row in rows
        ]
        out.append(markdown_table(["model", "method", "scoring", "backend", *columns, "data", "run"], body))
        if table == "rmbench":
            out.append("\nThe paper's RM-Bench numbers are not in ipo/paper_results.csv: reproduced values only.\n")
        if table == "selfimprove":
            out.append(
                "\nThe judge's mean score (P(Yes), or 1-5 for the 5-point judge) on held-out prompts, never trained "
                "on, for the model before and after the round's DPO; the paper reports no such number.\n"
            )
    return "\n".join(out)


CSV_FIELDS = (
    "table",
    "model",
    "paper_model",
    "method",
    "scoring",
    "backend",
    "column",
    "reproduced",
    "published",
    "difference",
    "comparable",
    "coverage",
    "transcription",
    "run",
)


def csv_text(tables: dict[str, list[Row]]) -> str:
    handle = io.StringIO()
    writer = csv.writer(handle, lineterminator="\n")
    writer.writerow(CSV_FIELDS)
    for table, rows in tables.items():
        for row in rows:
            for column in columns_of(table, rows):
                mine, theirs = row.reproduced.get(column), row.published.get(column)
                if mine is None and theirs is None:
                    continue
                info = row.run.info if row.run else {}
                writer.writerow(
                    [
                        table,
                        row.model,
                        row.paper_model or "",
                        row.method,
                        info.get("scoring") or "",
                        info.get("backend") or "",
                        column,
                        "" if mine is None else mine,
                        "" if theirs is None else theirs.value,
                        _num(row.difference(column)),
                        str(row.comparable).lower() if row.run else "",
                        row.coverage,
                        theirs.transcription if theirs else "",
                        str(row.run.path) if row.run else "",
                    ]
                )
    return handle.getvalue()


def comparison_points(tables: dict[str, list[Row]]) -> list[tuple[str, float, float, bool]]:
    """(label, published, reproduced, over the paper's data) of every cell that has both values."""
    points = []
    for rows in tables.values():
        for row in rows:
            for column, theirs in row.published.items():
                mine = row.reproduced.get(column)
                if row.run is not None and mine is not None:
                    points.append((f"{row.model} {row.method} {column}", theirs.value, mine, row.comparable))
    return points


def collect(paths: list[str | os.PathLike], output_dir: str | os.PathLike) -> dict[str, list[Row]]:
    """Find the runs under ``paths`` and write paper_tables.md, paper_tables.csv and paper_comparison.png
    to ``output_dir``; returns the tables."""
    runs = combine_set_runs(find_runs(paths))
    output = Path(output_dir)
    if output.exists() and not output.is_dir():
        raise IpoError(f"--output_dir {output} is a file")
    tables = build_rows(runs)
    output.mkdir(parents=True, exist_ok=True)
    atomic_write_text(output / "paper_tables.md", markdown(tables))
    atomic_write_text(output / "paper_tables.csv", csv_text(tables))
    comparison_plot(
        comparison_points(tables),
        output / "paper_comparison.png",
        f"Reproduced vs published ({len(runs)} runs; hollow: not over the paper's data)",
    )
    logger.info("%d runs collected into %s", len(runs), output)
    return tables
