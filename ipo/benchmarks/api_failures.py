"""What a judge behind an HTTP API adds to a benchmark run: requests that failed for good.

A failed example stays in predictions.jsonl with its failure kind (so the run's numbers count it, as
wrong) and is tried again by the next run of the same command (answers already paid for come from the
response cache). The benchmarks' writers (ipo.benchmarks.rewardbench.write_outputs,
ipo.benchmarks.rmbench.write_outputs, given ``api=ApiUsage.of(client)``) add the failure counts, the
metrics over answered examples only and this section of results.md.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from ipo import IpoError
from ipo.data import Example
from ipo.report import pct
from ipo.runs import RecordLog, RunDir

logger = logging.getLogger("ipo")


@dataclass(frozen=True)
class ApiUsage:
    """The endpoint an API judge used and its usage counters for this invocation (ApiClient.usage())."""

    model: str
    base_url: str
    usage: dict

    @classmethod
    def of(cls, client) -> ApiUsage:
        """Read now from an ipo.judges API client (its ``model``, ``base_url`` and ``usage()``)."""
        return cls(client.model, client.base_url, client.usage())


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
    return {
        "n_total": len(records),
        "n_answered": len(records) - n_failed,
        "n_failed": n_failed,
        "failures_by_kind": dict(kinds),
    }


def answered_records(records: Sequence[dict]) -> tuple[dict, list[dict]]:
    """(failure_summary, the answered records); one line if nothing was answered."""
    summary = failure_summary(records)
    answered = [r for r in records if not r.get("failure")]
    if not answered:
        raise IpoError(
            f"no example was answered (failures: {summary['failures_by_kind']}); see the warnings "
            "above, then re-run the same command to try them again"
        )
    return summary, answered


def failure_metrics(summary: dict) -> dict:
    """The metrics.json keys of a failure_summary: n_answered, n_failed, failures_by_kind."""
    return {key: summary[key] for key in ("n_answered", "n_failed", "failures_by_kind")}


def usage_markdown(
    api: ApiUsage, summary: dict, accuracy_all: float | None, accuracy_answered: float | None, label: str = "Accuracy"
) -> str:
    """The results.md section on the API: endpoint, failures, both accuracies (``label`` names the headline
    value, e.g. RM-Bench's average), this invocation's requests."""
    usage = api.usage
    failures = ", ".join(f"{k}: {v}" for k, v in sorted(summary["failures_by_kind"].items())) or "none"
    lines = [
        "## API judge\n",
        f"Model `{api.model}` at `{api.base_url}`. {summary['n_total']} examples: {summary['n_answered']} "
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


def api_markdown(extra_markdown: str, usage_section: str) -> str:
    """The end of an API run's results.md: the caller's own section (if any), then the API section."""
    return (extra_markdown + "\n" if extra_markdown else "") + usage_section
