"""Pair selection, pure: each prompt's best and worst scored response become (chosen, rejected).

Also the held-out split (chosen once per run, the same prompts in every round), the DPO rows TRL trains
on (``pair_record``, ipo/training/run_pairs.py, shared with DPO/train_preferences.py), upstream's exported files, and the statistics metrics.json keeps.

Ties follow upstream: DPO/ours.py kept the first maximum and the last minimum (a stable sort), and
DPO/self_reward.py sorted (score, judge text) tuples; chat mode draws ties at random and drops pairs whose
scores tie or whose texts are the same (upstream mode keeps every pair, as upstream did).
"""

from __future__ import annotations

import math
import os
import random
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

from ipo.runs import atomic_write_json
from ipo.training.run_pairs import pair_record

TIE_BREAKS = ("generation_order", "judge_text", "random")


def held_out_ids(prompt_ids: Sequence, fraction: float, seed: int) -> set[str]:
    """A seeded ``fraction`` of the prompts (at least one, never all) kept out of training.

    Chosen once from the whole prompt list, so the same prompts stay held out in every round.
    """
    if fraction <= 0 or len(prompt_ids) < 2:
        return set()
    count = min(len(prompt_ids) - 1, max(1, round(fraction * len(prompt_ids))))
    return {str(i) for i in random.Random(f"held-out/{seed}").sample([str(i) for i in prompt_ids], count)}


def rank_responses(
    scores: Sequence[float],
    tie_break: str = "generation_order",
    judge_texts: Sequence[str] | None = None,
    rng: random.Random | None = None,
) -> list[int]:
    """Response indices from best to worst score.

    tie_break:
      generation_order  upstream DPO/ours.py: Python's stable sort(reverse=True), so among equal scores
                        the earlier sample ranks higher (chosen = first max, rejected = last min)
      judge_text        upstream DPO/self_reward.py: it sorted (score, judge output text) tuples in
                        reverse, so equal scores are ordered by the judge's text, reverse-lexicographically
      random            equal scores in an order drawn from ``rng`` (seeded per prompt)

    Every score must be a finite number: a NaN compares as neither greater, smaller nor equal, so a sort
    would place it, and its neighbours, arbitrarily (build_pairs leaves such responses out first).
    """
    if not all(is_score(score) for score in scores):
        raise ValueError(f"cannot rank non-finite or missing scores: {list(scores)}")
    order = list(range(len(scores)))
    if tie_break == "generation_order":
        return sorted(order, key=lambda i: scores[i], reverse=True)
    if tie_break == "judge_text":
        if judge_texts is None or len(judge_texts) != len(scores):
            raise ValueError("tie_break='judge_text' needs one judge text per score")
        return sorted(order, key=lambda i: (scores[i], judge_texts[i]), reverse=True)
    if tie_break == "random":
        if rng is None:
            raise ValueError("tie_break='random' needs an rng")
        rng.shuffle(order)
        return sorted(order, key=lambda i: scores[i], reverse=True)
    raise ValueError(f"unknown tie_break {tie_break!r}")


def is_score(value) -> bool:
    """Whether a judge's score can take part in a ranking: a number, not None, NaN or infinite."""
    return value is not None and math.isfinite(value)


def count_non_finite(scored: Iterable[dict], score_field: str) -> int:
    """Responses whose score is NaN or infinite (a judge overflow in float16, say): never chosen or rejected."""
    return sum(score is not None and not math.isfinite(score) for record in scored for score in record[score_field])


def degenerate_reason(responses: Sequence[str], scores: Sequence[float], chosen: int, rejected: int) -> str | None:
    """Why a (chosen, rejected) pair teaches nothing, or None: 'score_tie' or 'same_text'."""
    if scores[chosen] == scores[rejected]:
        return "score_tie"
    if responses[chosen].strip() == responses[rejected].strip():
        return "same_text"
    return None


def build_pairs(
    scored: Iterable[dict],
    score_field: str,
    tie_break: str,
    drop_degenerate: bool,
    seed: int,
    test_ids: set[str] = frozenset(),
    judge_text_field: str | None = None,
) -> tuple[list[dict], Counter]:
    """One pair per scored prompt: chosen = best score, rejected = worst. Returns (pairs, dropped counts).

    A None score (no score could be read) or a NaN or infinite one (count_non_finite) takes no part: the
    pair is drawn from the other responses, and a prompt with fewer than two scored responses gives no pair
    (dropped as 'too_few_scored').
    """
    pairs, dropped = [], Counter()
    for record in scored:
        scores, responses = record[score_field], record["responses"]
        texts = record.get(judge_text_field) if judge_text_field else None
        candidates = [i for i, score in enumerate(scores) if is_score(score)]
        if len(candidates) < 2:
            dropped["too_few_scored"] += 1
            continue
        rng = random.Random(f"ties/{seed}/{record['id']}")
        order = rank_responses(
            [scores[i] for i in candidates],
            tie_break,
            rng=rng,
            judge_texts=[texts[i] for i in candidates] if texts is not None else None,
        )
        chosen, rejected = candidates[order[0]], candidates[order[-1]]
        reason = degenerate_reason(responses, scores, chosen, rejected)
        if reason and drop_degenerate:
            dropped[reason] += 1
            continue
        pairs.append(
            {
                "id": record["id"],
                "prompt": record["prompt"],
                "category": record.get("category"),
                "chosen": responses[chosen],
                "rejected": responses[rejected],
                "score_chosen": scores[chosen],
                "score_rejected": scores[rejected],
                "chosen_index": chosen,
                "rejected_index": rejected,
                "scores": scores,
                "degenerate": reason,
                "split": "test" if str(record["id"]) in test_ids else "train",
            }
        )
    return pairs, dropped


def mapped_record(pair: dict) -> dict:
    """Upstream's intermediate mapped_path row (kept as an artefact only; note its missing space)."""
    return {
        "chosen": f"Assistant: {pair['prompt']}\n Response:{pair['chosen']}",
        "rejected": f"Assistant:{pair['prompt']}\n Response:{pair['rejected']}",
    }


def strip_common_prefix(texts: Sequence[str]) -> list[str]:
    """The texts without the start they all share: string order (and equality) is unchanged, and what is
    kept is only the part that can decide it."""
    prefix = os.path.commonprefix(list(texts))
    return [text[len(prefix) :] for text in texts]


def pair_stats(
    pairs: Sequence[dict], dropped: Counter, n_prompts: int, n_unscored: int = 0, n_non_finite: int = 0
) -> dict:
    """dropped counts prompts without a pair, by reason; n_unscored_responses counts responses without a score,
    n_non_finite_scores (present only when there are some) those whose score is NaN or infinite."""
    stats = {
        "n_prompts": n_prompts,
        "n_pairs": len(pairs),
        "n_train": sum(p["split"] == "train" for p in pairs),
        "n_test": sum(p["split"] == "test" for p in pairs),
        "dropped": dict(sorted(dropped.items())),
        "kept_degenerate": sum(1 for p in pairs if p["degenerate"]),
        "n_unscored_responses": n_unscored,
    }
    if n_non_finite:
        stats["n_non_finite_scores"] = n_non_finite
    return stats


def export_pairs(
    pairs: Sequence[dict], prompt_format: str, train_path: str | None, test_path: str | None, mapped_path: str | None
) -> None:
    """Upstream's files, for whoever reads them: the DPO-format train/test JSON lists and the mapped JSON."""
    if train_path:
        atomic_write_json(train_path, [pair_record(p, prompt_format) for p in pairs if p["split"] == "train"])
    if test_path:
        atomic_write_json(test_path, [pair_record(p, prompt_format) for p in pairs if p["split"] == "test"])
    if mapped_path:
        atomic_write_json(mapped_path, [mapped_record(p) for p in pairs])


def export_path(path: str | None, round_index: int) -> str | None:
    """Round 1 writes upstream's paths as given; later rounds insert .round<k> before the extension."""
    if not path or round_index == 1:
        return path
    p = Path(path)
    return str(p.with_name(f"{p.stem}.round{round_index}{p.suffix}"))
