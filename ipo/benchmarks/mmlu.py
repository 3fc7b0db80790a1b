"""Downstream evaluation helpers kept from upstream's DPO/Evals: seeded subsets and MMLU answer grading.

Upstream drew its 500-example evaluation subsets with an unseeded ``np.random.choice`` and generated MMLU
answers (``[INST]`` prompt, temperature 0.7, 100 new tokens) without grading them. Here the subsets are
seeded and the generated answers are mapped back to a choice and scored.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from ipo import IpoError

LETTERS = "ABCDEFGHIJ"


def seeded_subset_indices(n_rows: int, n_samples: int, seed: int) -> list[int]:
    """``n_samples`` distinct row indices drawn without replacement with numpy's seeded generator."""
    if n_samples > n_rows:
        raise IpoError(f"--num_samples {n_samples} is more than the {n_rows} rows available")
    return [int(i) for i in np.random.default_rng(seed).choice(n_rows, size=n_samples, replace=False)]


def answer_index(answer, n_choices: int) -> int:
    """The gold answer as a 0-based index: MMLU stores an int (0-based); some copies store a letter."""
    if isinstance(answer, bool):
        raise IpoError(f"answer {answer!r} is not a choice index")
    if isinstance(answer, int):
        index = answer
    elif isinstance(answer, str) and answer.strip().isdigit():
        index = int(answer.strip())
    elif isinstance(answer, str) and len(answer.strip()) == 1 and answer.strip().upper() in LETTERS:
        index = LETTERS.index(answer.strip().upper())
    else:
        raise IpoError(f"answer {answer!r} is neither a 0-based index nor a letter")
    if not 0 <= index < n_choices:
        raise IpoError(f"answer {answer!r} is outside the {n_choices} choices")
    return index


# The prompt numbers the choices from 1 (ipo.prompts.mmlu_instruction); models also answer with letters.
# Letters must be capitals: "the answer is a bit unclear" names no choice.
_STATED = re.compile(r"(?i:answer|option|choice)(?:\s*(?:is|:|=|-))*\s*(?i:number\s*)?[\(\[]?\s*([1-9]|[A-J])\b")
_LEADING_NUMBER = re.compile(r"^\s*[\(\[]?([1-9])(?:[\.\)\]:]|\s|$)")
_LEADING_LETTER = re.compile(r"^\s*[\(\[]?([A-J])[\.\)\]:](?:\s|$)")


def extract_choice(response: str, choices: Sequence[str]) -> int | None:
    """The 0-based choice a generated answer picks, or None if it cannot be told.

    In order: an explicit statement ("The answer is 3", "Option (B)"), a leading number ("2. Paris"), a
    leading letter ("B) Paris"), then the text of exactly one choice appearing in the response.
    Numbers are read 1-based (as the prompt lists them), letters as A = first choice.
    """
    n = len(choices)

    def to_index(token: str) -> int | None:
        index = int(token) - 1 if token.isdigit() else LETTERS.index(token.upper())
        return index if 0 <= index < n else None

    for pattern in (_STATED, _LEADING_NUMBER, _LEADING_LETTER):
        match = pattern.search(response)
        if match and to_index(match.group(1)) is not None:
            return to_index(match.group(1))
    lowered = response.lower()
    found = [i for i, choice in enumerate(choices) if str(choice).strip() and str(choice).strip().lower() in lowered]
    return found[0] if len(found) == 1 else None


def mmlu_metrics(predictions: Sequence[dict]) -> dict:
    """Accuracy (unparsed answers count as wrong), parse rate, and accuracy per subject if known."""

    def part(records):
        n = len(records)
        parsed = sum(r["predicted"] is not None for r in records)
        return {
            "n": n,
            "accuracy": sum(r["correct"] for r in records) / n if n else None,
            "parsed": parsed / n if n else None,
        }

    subjects = sorted({r.get("subject") for r in predictions if r.get("subject")})
    return {
        **part(predictions),
        "subjects": {s: part([r for r in predictions if r.get("subject") == s]) for s in subjects},
    }
