"""Run helpers of the API judges: pending work, failures, their metrics and outputs, RM-Bench style pairs.

(Cut out of ipo/judges/api.py during the redesign; to be merged into the benchmarks' own writers.)
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Callable, Sequence

from ipo import IpoError
from ipo.benchmarks.rmbench import FLAT_COLUMNS as STYLE_SLOTS, N_STYLES
from ipo.data import Example
from ipo.judges.api import PAIRWISE_ORDERS, ApiClient, pairwise_fields, pairwise_requests
from ipo.runs import RecordLog, RunDir

logger = logging.getLogger("ipo")


# ---------------------------------------------------------------------------------------------------
# Run helpers: pending work, failures, metrics
# ---------------------------------------------------------------------------------------------------
def pending_examples(examples: Sequence[Example], run: RunDir, overwrite: bool, key: str = "id") -> list[Example]:
    """Examples the run still has to judge: not in its predictions, or failed there (they are retried).
    ``key``: the predictions' key field (RM-Bench's is "key", ipo.benchmarks.rmbench.RECORD_KEY)."""
    path = run.file("predictions.jsonl")
    if overwrite or not path.exists():
        return list(examples)
    done = {k for k, r in RecordLog(path, key=key).records.items() if not r.get("failure")}
    return [e for e in examples if str(e.id) not in done]


def forget_failures(log: RecordLog) -> int:
    """Drop failed records from the predictions so this run tries them again (answers already paid for
    come from the cache). Returns how many."""
    failed = [k for k, r in log.records.items() if r.get("failure")]
    if failed:
        logger.info("trying again %d example(s) that failed in an earlier run", len(failed))
        log.discard(failed)
    return len(failed)


def failure_summary(records: Sequence[dict]) -> dict:
    """n_total, n_answered, n_failed and failures_by_kind of prediction records (``failure`` field)."""
    kinds = Counter(r["failure"] for r in records if r.get("failure"))
    n_failed = sum(kinds.values())
    return {"n_total": len(records), "n_answered": len(records) - n_failed, "n_failed": n_failed,
            "failures_by_kind": dict(kinds)}  # fmt: skip


def usage_markdown(client: ApiClient, summary: dict, accuracy_all: float | None,
                   accuracy_answered: float | None, label: str = "Accuracy") -> str:  # fmt: skip
    """The results.md section on the API: endpoint, failures, both accuracies (``label`` names the headline
    value, e.g. RM-Bench's average), this invocation's requests."""
    from ipo.report import pct

    usage = client.usage()
    failures = ", ".join(f"{k}: {v}" for k, v in sorted(summary["failures_by_kind"].items())) or "none"
    lines = [
        "## API judge\n",
        f"Model `{client.model}` at `{client.base_url}`. {summary['n_total']} examples: {summary['n_answered']} "
        f"answered, {summary['n_failed']} failed ({failures}). Failed examples are kept in predictions.jsonl "
        "with their failure kind and tried again by the next run of the same command.\n",
        f"{label} over all examples (a failure counts as wrong; the tables above): {pct(accuracy_all)}%; "
        f"over answered examples only: {pct(accuracy_answered)}%.\n",
        f"This invocation: {usage['requests_sent']} requests sent, {usage['answered']} answered, "
        f"{usage['cache_hits']} cache hits, {usage['retries']} retries, "
        f"{sum(usage['gave_up_by_kind'].values())} given up; {usage['prompt_tokens']} prompt and "
        f"{usage['completion_tokens']} completion tokens.\n",
    ]
    return "\n".join(lines)


def write_rewardbench_outputs(run: RunDir, records: list[dict], client: ApiClient, title: str,
                              upstream_file: str, extra_metrics: dict | None = None,
                              extra_markdown: str = "") -> tuple[dict, str]:  # fmt: skip
    """RewardBench outputs of an API judge (ipo.report.write_rewardbench_outputs) plus its failures.

    The main tables and upstream's per-subset file count every pair, a failed one as wrong (upstream's
    binary_gpt.py denominator; nothing looks better by failing). metrics.json adds n_answered, n_failed,
    failures_by_kind, accuracy_all_pairs, accuracy_answered, ``answered_only`` (the same metrics over the
    answered pairs) and ``api_usage_this_invocation``.
    """
    from ipo import report
    from ipo.benchmarks import rewardbench

    summary, answered = _answered(records)
    answered_metrics = rewardbench.compute_metrics(answered)
    accuracy_all = sum(bool(r["correct"]) for r in records) / len(records)
    extra = {
        **_failure_metrics(summary),
        "accuracy_all_pairs": accuracy_all,
        "accuracy_answered": answered_metrics["accuracy"],
        **(extra_metrics or {}),
        "answered_only": answered_metrics,
        "api_usage_this_invocation": client.usage(),
    }
    markdown = (extra_markdown + "\n" if extra_markdown else "") + usage_markdown(
        client, summary, accuracy_all, answered_metrics["accuracy"])
    return report.write_rewardbench_outputs(run, records, title, upstream_file, extra_metrics=extra,
                                            extra_markdown=markdown)  # fmt: skip


def _answered(records: Sequence[dict]) -> tuple[dict, list[dict]]:
    """(failure_summary, the answered records); one line if nothing was answered."""
    summary = failure_summary(records)
    answered = [r for r in records if not r.get("failure")]
    if not answered:
        raise IpoError(f"no example was answered (failures: {summary['failures_by_kind']}); see the warnings "
                       "above, then re-run the same command to try them again")  # fmt: skip
    return summary, answered


def _failure_metrics(summary: dict) -> dict:
    return {key: summary[key] for key in ("n_answered", "n_failed", "failures_by_kind")}


def write_rmbench_outputs(run: RunDir, records: list[dict], client: ApiClient, title: str, upstream_file: str,
                          score_name: str = "p_yes", matrices: Callable | None = None,
                          extra_metrics: dict | None = None, extra_markdown: str = "") -> tuple[dict, str]:  # fmt: skip
    """RM-Bench outputs of an API judge (ipo.benchmarks.rmbench.write_outputs) plus its failures.

    The main metrics count every prompt: a failed response (None score) loses every comparison it is in,
    a failed pairwise comparison is wrong; upstream's level file likewise. metrics.json adds n_answered,
    n_failed, failures_by_kind (per prompt), ``answered_only`` (the same metrics over the prompts whose
    requests all succeeded) and ``api_usage_this_invocation``. ``matrices``: as ipo.benchmarks.rmbench.compute_metrics.
    """
    from ipo.benchmarks import rmbench

    summary, answered = _answered(records)
    answered_metrics = rmbench.compute_metrics(answered, score_name, matrices)
    all_metrics = rmbench.compute_metrics(records, score_name, matrices)
    # The headline: the official average where all of hard/normal/easy were measured, else normal (the
    # diagonal, upstream's levels averaged).
    headline = "average" if all_metrics["average"] is not None else "normal"
    extra = {**_failure_metrics(summary), **(extra_metrics or {}), "answered_only": answered_metrics,
             "api_usage_this_invocation": client.usage()}  # fmt: skip
    markdown = (extra_markdown + "\n" if extra_markdown else "") + usage_markdown(
        client, summary, all_metrics[headline], answered_metrics[headline], label=f"RM-Bench {headline}")
    return rmbench.write_outputs(run, records, title, upstream_file, score_name, matrices=matrices,
                                 extra_metrics=extra, extra_markdown=markdown)  # fmt: skip


# ---------------------------------------------------------------------------------------------------
# RM-Bench: six responses per prompt ([chosen x3, rejected x3] in style order)
# ---------------------------------------------------------------------------------------------------
def style_answer_fields(extra: dict, keys: Sequence[str]) -> dict:
    """Record fields of ApiScorer's ``extra`` for the six responses of an RM-Bench prompt: failure, failed
    (slot names chosen_1 .. rejected_3) and, per Answer.info key, ``<key>_chosen`` / ``<key>_rejected``
    lists of 3 (None for a failed request)."""
    fields = {"failure": extra["failure"], "failed": [STYLE_SLOTS[slot] for slot in extra["failed"]]}
    for key in keys:
        values = [info.get(key) for info in extra["info"]]
        fields[f"{key}_chosen"], fields[f"{key}_rejected"] = values[:N_STYLES], values[N_STYLES:]
    return fields


# Which (chosen style, rejected style) pairs the pairwise judge compares: upstream's RM_Bench/binary_gpt.py
# asked chosen_k vs rejected_k (the diagonal, 3 per prompt); all 9 give the official hard/normal/easy.
STYLE_PAIRS = {
    "diagonal": tuple((k, k) for k in range(N_STYLES)),
    "all": tuple((i, j) for i in range(N_STYLES) for j in range(N_STYLES)),
}


def style_pair_requests(scoring: str, template: str, example: Example, cells: Sequence[tuple[int, int]],
                        orders=PAIRWISE_ORDERS) -> list[dict]:  # fmt: skip
    """The pairwise requests of one RM-Bench prompt: for each (i, j) in ``cells``, chosen style i against
    rejected style j, in each order (slot = cell index * len(orders) + order index)."""
    chosen, rejected = example.responses[:N_STYLES], example.responses[N_STYLES:]
    bodies = []
    for i, j in cells:
        bodies += pairwise_requests(scoring, template, example.prompt, chosen[i], rejected[j], orders)
    return bodies


def style_pair_fields(verdicts: Sequence[int | None], extra: dict, cells: Sequence[tuple[int, int]],
                      orders=PAIRWISE_ORDERS) -> dict:  # fmt: skip
    """Record fields of one RM-Bench prompt judged pairwise (style_pair_requests' slots).

    ``correct`` / ``tie`` and ``verdict_<order>`` / ``judge_text_<order>``: (3, 3) nested lists, [i][j] for
    chosen style i vs rejected style j, None where not compared (ipo.benchmarks.rmbench.pairwise_matrices reads them).
    Each cell as pairwise_fields: correct when every order picks the chosen response, a tie when the orders
    disagree, a failed comparison wrong and not a tie. failed: "chosen_<i>-rejected_<j>/<order>" names.
    """
    names = [name for name, _ in orders]
    matrix = lambda: [[None] * N_STYLES for _ in range(N_STYLES)]  # noqa: E731
    fields = {"correct": matrix(), "tie": matrix(), **{f"{key}_{name}": matrix()
                                                       for key in ("verdict", "judge_text") for name in names}}
    failed = []
    for c, (i, j) in enumerate(cells):
        slots = range(c * len(orders), (c + 1) * len(orders))
        kinds = [extra["kinds"][s] for s in slots]
        cell_extra = {"failure": next((k for k in kinds if k), None), "failed": [n for n, k in enumerate(kinds) if k],
                      "info": [extra["info"][s] for s in slots]}  # fmt: skip
        cell = pairwise_fields([verdicts[s] for s in slots], cell_extra, orders)
        fields["correct"][i][j], fields["tie"][i][j] = cell["correct"], cell["tie"]
        for key in ("verdict", "judge_text"):
            for name in names:
                fields[f"{key}_{name}"][i][j] = cell[f"{key}_{name}"]
        failed += [f"chosen_{i + 1}-rejected_{j + 1}/{name}" for name in cell["failed"]]
    return {**fields, "failure": extra["failure"], "failed": failed}


def style_pair_order_records(records: Sequence[dict], cells: Sequence[tuple[int, int]], orders=PAIRWISE_ORDERS
                             ) -> list[dict]:  # fmt: skip
    """One {verdict_<order>: ...} per comparison of RM-Bench pairwise records, for order_metrics."""
    return [{f"verdict_{name}": r[f"verdict_{name}"][i][j] for name, _ in orders} for r in records for i, j in cells]

