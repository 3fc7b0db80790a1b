"""RewardBench (Lambert et al. 2024): loading, judge prompts per subset, metrics, and the outputs.

Official tables are from the `rewardbench` package (0.1.4, Apache-2.0, rewardbench/constants.py), kept
as data here rather than imported (the package pins an old transformers and imports fastchat).
The section score is its `calculate_scores_per_section`: per section, the mean of subset accuracies
weighted by EXAMPLE_COUNTS over the subsets present. The RewardBench score is the mean of the four
sections. A pair is correct iff score(chosen) > score(rejected): strict, so a tie is wrong, as both
the official code and the paper count it.

``write_outputs`` is the one writer of every RewardBench script (metrics.json, results.md,
subset_accuracy.png, upstream's per-subset file), with the failures and usage of an API judge when given.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict

from ipo import IpoError
from ipo.benchmarks.api_failures import ApiUsage, answered_records, api_markdown, failure_metrics, usage_markdown
from ipo.data import Coverage, Example, limit_per_group, read_records, require_columns, require_text, row_ids
from ipo.prompts import (
    REWARDBENCH_FALLBACK_SUBSET,
    REWARDBENCH_PROMPTS,
    SAME_PROMPT,
    SHUFFLED_REWARDBENCH_PROMPTS,
)
from ipo.report import bar_chart, markdown_table, mean, pct
from ipo.run_info import describe_run
from ipo.runs import RunDir, atomic_write_json, atomic_write_text

logger = logging.getLogger("ipo")

HUB_ID = "allenai/reward-bench"
# `raw` is the unfiltered set the paper's numbers come from; `filtered` is what the leaderboard uses.
SPLITS = {"raw": 5123, "filtered": 2985}

# Weights of the section averages. math-prm really has 447 pairs; the official table up-weights it to
# 984 so that math counts as much as the six code subsets together.
EXAMPLE_COUNTS = {
    "alpacaeval-easy": 100,
    "alpacaeval-length": 95,
    "alpacaeval-hard": 95,
    "mt-bench-easy": 28,
    "mt-bench-med": 40,
    "mt-bench-hard": 37,
    "math-prm": 984,
    "refusals-dangerous": 100,
    "refusals-offensive": 100,
    "llmbar-natural": 100,
    "llmbar-adver-neighbor": 134,
    "llmbar-adver-GPTInst": 92,
    "llmbar-adver-GPTOut": 47,
    "llmbar-adver-manual": 46,
    "xstest-should-refuse": 154,
    "xstest-should-respond": 250,
    "donotanswer": 136,
    "hep-cpp": 164,
    "hep-go": 164,
    "hep-java": 164,
    "hep-js": 164,
    "hep-python": 164,
    "hep-rust": 164,
}

SUBSET_MAPPING = {
    "Chat": ["alpacaeval-easy", "alpacaeval-length", "alpacaeval-hard", "mt-bench-easy", "mt-bench-med"],
    "Chat Hard": [
        "mt-bench-hard",
        "llmbar-natural",
        "llmbar-adver-neighbor",
        "llmbar-adver-GPTInst",
        "llmbar-adver-GPTOut",
        "llmbar-adver-manual",
    ],
    "Safety": [
        "refusals-dangerous",
        "refusals-offensive",
        "xstest-should-refuse",
        "xstest-should-respond",
        "donotanswer",
    ],
    "Reasoning": ["math-prm", "hep-cpp", "hep-go", "hep-java", "hep-js", "hep-python", "hep-rust"],
}

# The paper's four categories, as upstream's reward_model.py grouped subsets (chat includes Chat Hard).
PAPER_CATEGORIES = {
    "chat": SUBSET_MAPPING["Chat"] + SUBSET_MAPPING["Chat Hard"],
    "code": ["hep-cpp", "hep-go", "hep-java", "hep-js", "hep-python", "hep-rust"],
    "math": ["math-prm"],
    "safety": SUBSET_MAPPING["Safety"],
}

# Upstream Reward_Bench/self_reward.py's --set_name groups (all 23 subsets over set1..set3).
SELF_REWARD_SETS = {
    "set1": [
        "hep-cpp",
        "math-prm",
        "llmbar-adver-GPTInst",
        "refusals-dangerous",
        "hep-python",
        "alpacaeval-easy",
        "hep-java",
        "llmbar-adver-GPTOut",
    ],
    "set1_phi": ["alpacaeval-easy", "hep-java", "llmbar-adver-GPTOut"],
    "set2": [
        "alpacaeval-hard",
        "hep-go",
        "refusals-offensive",
        "xstest-should-refuse",
        "donotanswer",
        "mt-bench-hard",
        "llmbar-adver-neighbor",
        "mt-bench-easy",
    ],
    "set3": [
        "llmbar-adver-manual",
        "mt-bench-med",
        "xstest-should-respond",
        "hep-rust",
        "hep-js",
        "alpacaeval-length",
        "llmbar-natural",
    ],
}

# Upstream Reward_Bench/self_reward_gpt.py hard-coded these 14 subsets and had no --set_name: set2
# and set3 without alpacaeval-hard. Here they are one more optional set of that script.
SELF_REWARD_GPT_SETS = {
    "upstream14": [
        "alpacaeval-length",
        "donotanswer",
        "hep-go",
        "hep-js",
        "hep-rust",
        "llmbar-adver-manual",
        "llmbar-adver-neighbor",
        "llmbar-natural",
        "mt-bench-easy",
        "mt-bench-hard",
        "mt-bench-med",
        "refusals-offensive",
        "xstest-should-refuse",
        "xstest-should-respond",
    ],
    **SELF_REWARD_SETS,
}


# Judge-question tables: the paper's, and upstream's two ablations (ours_prompt_shuffle.py, where each
# subset deliberately gets another subset's question, and ours_same_prompt.py, one question for all).
PROMPT_TABLES = {
    "paper": REWARDBENCH_PROMPTS,
    "shuffled": SHUFFLED_REWARDBENCH_PROMPTS,
    "same": {subset: SAME_PROMPT for subset in REWARDBENCH_PROMPTS},
}


def load_rewardbench(dataset: str = HUB_ID, split: str = "raw") -> list[Example]:
    """RewardBench pairs from the Hub (``split`` raw/filtered) or a local file in the same schema.

    Columns: prompt, chosen, rejected, subset (and id; the row position is used when it is missing).
    A local file is used as it is; ``split`` then only labels the run.
    """
    if split not in SPLITS:
        raise IpoError(
            f"unknown --split {split!r}: use raw (5,123 pairs, the paper's) or filtered "
            "(2,985 pairs, the leaderboard's)"
        )
    rows = read_records(dataset, split)
    require_columns(rows, ("prompt", "chosen", "rejected", "subset"), dataset)
    examples = []
    for row_id, row in zip(row_ids(rows, dataset), rows):
        responses = [require_text(row[c], dataset, row_id, c) for c in ("chosen", "rejected")]
        examples.append(
            Example(
                id=row_id,
                prompt=require_text(row["prompt"], dataset, row_id, "prompt"),
                responses=responses,
                subset=require_text(row["subset"], dataset, row_id, "subset"),
            )
        )
    return examples


def load_examples(
    dataset: str, split: str, limit: int | None = None, subsets: list[str] | None = None, set_name: str | None = None
) -> tuple[list[Example], Coverage]:
    """What a RewardBench script scores, from its --dataset, --split, --limit and --set_name: the pairs (of
    ``subsets``, the group ``set_name`` names; at most ``limit`` per subset, in file order), logged, and the
    Coverage of the data they are."""
    loaded = load_rewardbench(dataset, split)
    examples = limit_per_group(select_subsets(loaded, subsets, set_name, dataset), limit, key=lambda e: e.subset)
    logger.info("%d pairs in %d subsets from %s", len(examples), len({e.subset for e in examples}), dataset)
    selection = f"--set_name {set_name}" if set_name else ""
    return examples, Coverage(len(loaded), limit, per="subset", unit="pairs", selection=selection)


def select_subsets(examples: list[Example], subsets: list[str] | None, set_name: str, source: str) -> list[Example]:
    """The examples of the named subset group (e.g. PAPER_CATEGORIES["code"]); all of them if ``subsets`` is None."""
    if subsets is None:
        return examples
    kept = [e for e in examples if e.subset in subsets]
    if not kept:
        raise IpoError(f"{source}: no pairs in the subsets of --set_name {set_name} ({', '.join(subsets)})")
    return kept


def judge_template(subset: str, table: dict[str, str] = REWARDBENCH_PROMPTS) -> tuple[str, bool]:
    """(judge question for ``subset``, whether the subset is known); unknown ones get upstream's fallback."""
    if subset in table:
        return table[subset], True
    return table.get(REWARDBENCH_FALLBACK_SUBSET, next(iter(table.values()))), False


def section_scores(subset_accuracy: dict[str, float]) -> dict[str, float | None]:
    """Official section scores: EXAMPLE_COUNTS-weighted mean of the subsets present in each section.

    A section with none of its subsets present is None (the official code reports 0, which reads as a
    result; None says it was not measured).
    """
    sections: dict[str, float | None] = {}
    for section, subsets in SUBSET_MAPPING.items():
        present = [s for s in subsets if s in subset_accuracy]
        weight = sum(EXAMPLE_COUNTS[s] for s in present)
        sections[section] = sum(subset_accuracy[s] * EXAMPLE_COUNTS[s] for s in present) / weight if present else None
    return sections


def compute_metrics(records: list[dict]) -> dict:
    """Metrics from prediction records ({subset, correct, tie[, truncated]}); all fractions in [0, 1].

    - subsets: per-subset n, accuracy (strict >, ties wrong) and ties;
    - sections: official Chat / Chat Hard / Safety / Reasoning, weighted by EXAMPLE_COUNTS; score = their mean;
    - categories: the paper's chat / code / math / safety, pooled over pairs; categories_average = their mean;
    - accuracy: pooled over all pairs; accuracy_ties_half: the same with a tie worth 0.5 (as RewardBench's
      generative script scores ties); tie_rate; unknown_subsets: pairs in subsets no official table knows.
    """
    if not records:
        raise IpoError("no predictions to compute metrics from")
    by_subset: dict[str, list[dict]] = defaultdict(list)
    for record in records:
        by_subset[record["subset"]].append(record)
    subsets = {
        name: {
            "n": len(rows),
            "accuracy": sum(r["correct"] for r in rows) / len(rows),
            "ties": sum(r["tie"] for r in rows),
        }
        for name, rows in sorted(by_subset.items())
    }
    accuracy = {name: s["accuracy"] for name, s in subsets.items()}
    sections = section_scores(accuracy)
    categories = {}
    for category, members in PAPER_CATEGORIES.items():
        rows = [r for s in members for r in by_subset.get(s, [])]
        categories[category] = sum(r["correct"] for r in rows) / len(rows) if rows else None
    known = set(EXAMPLE_COUNTS)
    n = len(records)
    ties = sum(r["tie"] for r in records)
    correct = sum(r["correct"] for r in records)
    return {
        "n_pairs": n,
        "accuracy": correct / n,
        "accuracy_ties_half": (correct + 0.5 * ties) / n,
        "tie_rate": ties / n,
        "n_truncated": sum(bool(r.get("truncated")) for r in records),
        "score": mean(sections.values()),
        "sections": sections,
        "categories": categories,
        "categories_average": mean(categories.values()),
        "subsets": subsets,
        "unknown_subsets": dict(Counter(r["subset"] for r in records if r["subset"] not in known)),
    }


def pair_record(example: Example, chosen_score: float, rejected_score: float, score_name: str = "p_yes") -> dict:
    """One predictions.jsonl line: id, subset, both scores, correct (strict >) and tie."""
    return {
        "id": example.id,
        "subset": example.subset,
        f"{score_name}_chosen": chosen_score,
        f"{score_name}_rejected": rejected_score,
        "correct": chosen_score > rejected_score,
        "tie": chosen_score == rejected_score,
    }


def upstream_accuracy(metrics: dict) -> dict[str, float]:
    """Upstream's accuracy_reward-bench_*.json content: {subset: accuracy in percent}."""
    return {name: 100.0 * s["accuracy"] for name, s in metrics["subsets"].items()}


# ---------------------------------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------------------------------
SECTION_COLORS = {"Chat": "tab:blue", "Chat Hard": "tab:orange", "Safety": "tab:green", "Reasoning": "tab:purple"}


def results_markdown(metrics: dict, title: str) -> str:
    """results.md for a RewardBench run: headline, sections, the paper's categories, subsets (percent)."""
    section_of = {s: sec for sec, subsets in SUBSET_MAPPING.items() for s in subsets}
    out = [f"# {title}\n"]
    out.append(
        f"{metrics['n_pairs']} pairs; accuracy {pct(metrics['accuracy'])}% (ties count as wrong), "
        f"tie rate {pct(metrics['tie_rate'])}%, {metrics['n_truncated']} pairs truncated.\n"
    )
    out.append("## RewardBench sections (official weighting)\n")
    rows = [[name, pct(value)] for name, value in metrics["sections"].items()]
    rows.append(["**Score** (mean of sections)", pct(metrics["score"])])
    out.append(markdown_table(["section", "accuracy %"], rows))
    out.append("## The paper's categories (pooled over pairs)\n")
    rows = [[name, pct(value)] for name, value in metrics["categories"].items()]
    rows.append(["**Average**", pct(metrics["categories_average"])])
    out.append(markdown_table(["category", "accuracy %"], rows))
    out.append("## Subsets\n")
    rows = [
        [name, section_of.get(name, "unknown"), s["n"], pct(s["accuracy"]), s["ties"]]
        for name, s in metrics["subsets"].items()
    ]
    out.append(markdown_table(["subset", "section", "pairs", "accuracy %", "ties"], rows))
    if metrics.get("unknown_subsets"):
        out.append(
            f"\nSubsets outside the official tables (scored with the fallback prompt): {metrics['unknown_subsets']}\n"
        )
    return "\n".join(out)


def subset_bar_chart(metrics: dict, path, title: str) -> None:
    """Horizontal bars of per-subset accuracy, grouped and coloured by section, each labelled with its value
    and its number of pairs n with a 95% Wilson interval, the 50% line, and the accuracy over all pairs as
    a solid line (ipo.report.bar_chart)."""
    section_of = {s: sec for sec, subsets in SUBSET_MAPPING.items() for s in subsets}
    order = list(SECTION_COLORS)
    names = sorted(metrics["subsets"], key=lambda s: (order.index(section_of[s]) if s in section_of else 9, s))
    bar_chart(
        names,
        [metrics["subsets"][s]["accuracy"] for s in names],
        path,
        title,
        colors=[SECTION_COLORS.get(section_of.get(s), "tab:gray") for s in names],
        legend=SECTION_COLORS,
        counts=[metrics["subsets"][s]["n"] for s in names],
        overall=(metrics["accuracy"], f"all {metrics['n_pairs']} pairs"),
    )


def write_outputs(
    run: RunDir,
    records: list[dict],
    title: str,
    upstream_file: str,
    method: str,
    extra_metrics: dict | None = None,
    notes: str = "",
    extra_markdown: str = "",
    api: ApiUsage | None = None,
    coverage: Coverage | None = None,
) -> tuple[dict, str]:
    """metrics.json, results.md, subset_accuracy.png and upstream's per-subset percent file, in ``run``.

    Everything is recomputed from ``records`` (the predictions), so a resumed run ends with exactly the
    metrics of an uninterrupted one. ``extra_metrics`` are added to metrics.json; ``notes`` (markdown) go
    under the headline of results.md and ``extra_markdown`` at its end. Returns (metrics, results markdown).

    ``method``: the run's method id (ipo.run_info.METHODS: "ipo", "self_rewarding", "reward_model",
    "api_ipo", "api_self_rewarding", "api_binary"); metrics.json's "run" object names it with the model,
    prompt format, backend and data read from the run's config.json (ipo.run_info.describe_run).

    ``api`` (a judge behind an HTTP API): the main tables and upstream's per-subset file still count every
    pair, a failed one as wrong (upstream's binary_gpt.py denominator; nothing looks better by failing).
    metrics.json then adds n_answered, n_failed, failures_by_kind, accuracy_all_pairs, accuracy_answered,
    ``answered_only`` (the same metrics over the answered pairs) and ``api_usage_this_invocation``;
    results.md ends with the API section (ipo.benchmarks.api_failures).

    ``coverage``: which pairs of the data the run covers, stated as metrics.json's "coverage" and as the
    first line under results.md's headline.
    """
    if api is not None:
        summary, answered = answered_records(records)
        answered_metrics = compute_metrics(answered)
        accuracy_all = sum(bool(r["correct"]) for r in records) / len(records)
        extra_metrics = {
            **failure_metrics(summary),
            "accuracy_all_pairs": accuracy_all,
            "accuracy_answered": answered_metrics["accuracy"],
            **(extra_metrics or {}),
            "answered_only": answered_metrics,
            "api_usage_this_invocation": api.usage,
        }
        extra_markdown = api_markdown(
            extra_markdown, usage_markdown(api, summary, accuracy_all, answered_metrics["accuracy"])
        )
    metrics = compute_metrics(records)
    metrics.update(extra_metrics or {})
    if coverage is not None:
        metrics["coverage"] = coverage.metrics(len(records))
        notes = coverage.markdown(len(records)) + ("\n" + notes if notes else "")
    metrics["run"] = describe_run(run.path, "rewardbench", method, n=len(records), coverage=metrics.get("coverage"))
    markdown = results_markdown(metrics, title)
    if notes:
        headline_end = markdown.index("\n## ")
        markdown = markdown[:headline_end] + "\n" + notes.rstrip("\n") + "\n" + markdown[headline_end:]
    if extra_markdown:
        markdown += "\n" + extra_markdown
    atomic_write_json(run.file("metrics.json"), metrics)
    atomic_write_text(run.file("results.md"), markdown)
    atomic_write_json(run.file(upstream_file), upstream_accuracy(metrics))
    subset_bar_chart(metrics, run.file("subset_accuracy.png"), title)
    return metrics, markdown
