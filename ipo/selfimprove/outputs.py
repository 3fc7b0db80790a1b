"""What a self-improvement run leaves for its reader: metrics.json, results.md, the figures, and the upload.

    metrics.json         "run" (ipo.run_info: benchmark "selfimprove", the method id, model, prompt format,
                         prompts), "held_out" (the headline: the judge's mean score on the held-out prompts
                         before and after DPO, ipo.selfimprove.judging.held_out_change; null without
                         --judge_after or held-out prompts), "pairs_from" (--pairs_from runs), "rounds" (each
                         round's metrics.json), "stopped_after", "final_model"
    results.md           the held-out change first, then one row per round
    training_curves.png  the last trained round's train_log.jsonl (ipo.training.figures.training_curves)
    before_after.png     the judge before/after DPO per round, held-out prompts and training prompts apart

The names of "held_out" ({"before", "after", "change", "n_prompts", "n_responses", "round"}) are read by the
collector (Preference_Comparison/collect.py) and documented in DPO/README.md: keep them stable.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ipo import IpoError, hub
from ipo.report import markdown_table
from ipo.run_info import describe_run
from ipo.runs import atomic_write_json, atomic_write_text
from ipo.selfimprove.loop import LoopResult
from ipo.training.figures import before_after_figure, training_curves
from ipo.training.options import TRAIN_LOG_FILE

TRAINING_CURVES_FILE = "training_curves.png"
BEFORE_AFTER_FILE = "before_after.png"


def held_out_headline(rounds: Sequence[dict]) -> dict | None:
    """The last round's held-out change, with its round number (metrics.json "held_out"), or None."""
    for m in reversed(rounds):
        if m.get("held_out"):
            return {**m["held_out"], "round": m["round"]}
    return None


def write_outputs(run_path: Path, result: LoopResult, title: str, method: str) -> str:
    """The run's metrics.json (every round), results.md and figures; returns the markdown. ``method``: the
    metrics' method id ("dpo_loop_ipo", "dpo_loop_self_rewarding", "dpo_loop_reward_model")."""
    run_path = Path(run_path)
    n_prompts = result.rounds[0].get("n_prompts") if result.rounds else None
    summary = {
        "run": describe_run(run_path, "selfimprove", method, n=n_prompts),
        "held_out": held_out_headline(result.rounds),
        **(
            {"pairs_from": result.rounds[0]["pairs_from"]} if result.rounds and "pairs_from" in result.rounds[0] else {}
        ),
        "rounds": result.rounds,
        "stopped_after": result.stopped_after,
        "final_model": result.final_model,
    }
    atomic_write_json(run_path / "metrics.json", summary)
    figures = write_figures(run_path, result.rounds, title)
    markdown = loop_markdown(result.rounds, title, figures)
    atomic_write_text(run_path / "results.md", markdown)
    return markdown


def write_figures(run_path: Path, rounds: Sequence[dict], title: str) -> list[str]:
    """training_curves.png and before_after.png in the run folder, where there is something to draw; returns
    the names written."""
    written = []
    trained = [m for m in rounds if (run_path / f"round_{m['round']}" / TRAIN_LOG_FILE).is_file()]
    if trained:
        last = trained[-1]["round"]
        log = run_path / f"round_{last}" / TRAIN_LOG_FILE
        if training_curves(log, run_path / TRAINING_CURVES_FILE, title=f"{title}: training, round {last}"):
            written.append(TRAINING_CURVES_FILE)
    groups = []
    for m in rounds:
        after = m.get("after")
        if not after:
            continue
        for part, what in (("test", "held-out prompts"), ("train", "training prompts")):
            before_part, after_part = (after["before"] or {}).get(part) or {}, after["after"].get(part) or {}
            if after_part.get("n_prompts"):
                groups.append(
                    {
                        "label": f"round {m['round']}: {what}",
                        "before": before_part.get("mean"),
                        "after": after_part.get("mean"),
                        "n": after_part["n_prompts"],
                    }
                )
    if groups and before_after_figure(groups, run_path / BEFORE_AFTER_FILE, f"{title}: the judge before/after DPO"):
        written.append(BEFORE_AFTER_FILE)
    return written


def push_final_model(result: LoopResult, repo: str) -> None:
    """Upload the last round's merged model (or its adapter) with its tokenizer to the Hub repo ``repo``."""
    if result.stopped_after or not result.final_model:
        raise IpoError("--push_to_hub: nothing trained yet to upload (the run stopped before training)")
    hub.push_model(
        result.final_model, repo, what="merged model" if result.final_model.endswith("merged") else "LoRA adapter"
    )


def _num(value, digits=3):
    return "-" if value is None else f"{value:.{digits}f}"


def _all_prompts(after: dict) -> list[str]:
    """The 'all before/after' cells: '-' unless after DPO every prompt was sampled (--pairs_from samples only the
    held-out ones, and a mean over all prompts before against held-out ones after would compare other prompts)."""
    before_all, after_all = (after.get("before") or {}).get("all", {}), (after.get("after") or {}).get("all", {})
    if not after or before_all.get("n_prompts") != after_all.get("n_prompts"):
        return ["-", "-"]
    return [_num(before_all.get("mean")), _num(after_all.get("mean"))]


def headline_markdown(rounds: Sequence[dict]) -> str:
    """The first paragraph of results.md: the judge's change on the held-out prompts, or why there is none."""
    held = held_out_headline(rounds)
    if held:
        change = "-" if held["change"] is None else f"{held['change']:+.3f}"
        return (
            f"**Held-out prompts (never trained on), round {held['round']}: the judge's mean score "
            f"{_num(held['before'])} before DPO -> {_num(held['after'])} after "
            f"(change {change}), {held['n_prompts']} prompts, "
            f"{held['n_responses']} responses.**\n"
        )
    if not any(m.get("n_held_out") for m in rounds):
        return "**No held-out prompts (--test_fraction 0): no held-out change to report.**\n"
    if not any(m.get("after") for m in rounds):
        return "**Held-out change not measured: run with --judge_after to sample and judge after DPO.**\n"
    return "**Held-out change not measured: no held-out prompt gave a score before and after.**\n"


def loop_markdown(rounds: Sequence[dict], title: str, figures: Sequence[str] = ()) -> str:
    """results.md: the held-out change, then one row per round (pairs, judge scores, training, before/after)."""
    failures = any("n_parse_failures" in (m.get("judge") or {}).get("all", {}) for m in rounds)
    rows = []
    for m in rounds:
        pairs, judge, training = m.get("pairs", {}), (m.get("judge") or {}).get("all", {}), m.get("training", {})
        after = m.get("after", {})
        held = m.get("held_out") or {}
        dropped = sum(pairs.get("dropped", {}).values()) if pairs else None
        rows.append(
            [
                m["round"],
                m.get("n_prompts", "-"),
                f"{pairs['n_train']}/{pairs['n_test']}" if pairs else "-",
                "-" if dropped is None else dropped,
                *(
                    [f"{judge['n_parse_failures']}/{judge['n_responses']}" if "n_parse_failures" in judge else "-"]
                    if failures
                    else []
                ),
                _num(judge.get("mean")),
                _num(judge.get("mean_best")),
                _num(judge.get("mean_worst")),
                _num(training.get("train_loss")),
                _num(training.get("eval_rewards/accuracies"), 2),
                _num(held.get("before")),
                _num(held.get("after")),
                *_all_prompts(after),
            ]
        )
    headers = [
        "round",
        "prompts",
        "pairs train/test",
        "dropped",
        *(["parse failures"] if failures else []),
        "judge mean",
        "best",
        "worst",
        "train loss",
        "eval reward acc",
        "held-out before",
        "held-out after",
        "all before",
        "all after",
    ]
    notes = (
        "Judge scores are the mean P(Yes) (or the scorer's score) over all sampled responses, and over each "
        "prompt's best and worst. 'held-out before/after': the round's judge on the responses of the model "
        "before and after this round's DPO, on the held-out prompts only (same prompts and random streams; "
        "metrics.json 'held_out'); 'all before/after': the same over every prompt sampled after DPO, training "
        "prompts included.\n"
    )
    source = rounds[0].get("pairs_from") if rounds else None
    if source:
        notes += (
            f"\nTrained on the pairs of {source['run']} round {source['round']} (--pairs_from; {source['n_train']} "
            f"training pairs, {source['n_test']} held out, sha256 {source['sha256'][:12]}): no sampling or judging "
            "before training; the 'before' scores are the source run's.\n"
        )
    if failures:
        notes += (
            "\n'parse failures': judgements without a readable score, of all responses. Upstream mode scores "
            "them 0 (as upstream did, a 0 counts in the means and can be a pair's rejected side); chat mode "
            "leaves them out of the means and of the pairs.\n"
        )
    images = "".join(f"\n![{Path(name).stem}]({name})\n" for name in figures)
    return f"# {title}\n\n" + headline_markdown(rounds) + "\n" + markdown_table(headers, rows) + "\n" + notes + images
