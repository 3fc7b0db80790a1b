"""The pairs a self-improvement run wrote (``round_<k>/pairs.jsonl``) as training data, and the TRL row of a pair.

A self-improvement round (ipo/selfimprove/loop.py) writes one JSON line per prompt: ``id, prompt, category,
chosen, rejected, score_chosen, score_rejected, chosen_index, rejected_index, scores, degenerate, split``, where
``split`` is ``train`` or ``test`` (the prompts held out of training, chosen once per run by --test_fraction and
--seed). Training on such a file again (DPO/train_preferences.py --dataset RUN/round_1/pairs.jsonl, a sweep, or
DPO/ours.py --pairs_from RUN) must keep two things of the run:

- the split: only ``train`` pairs are trained on; the ``test`` pairs are the held-out evaluation, never training;
- the prompt format: ``upstream`` rows are ``[INST] x [/INST]`` text with upstream's ``<|eot_id|>`` marker,
  ``chat`` rows are conversations that TRL renders with the model's chat template (``pair_record``). The format
  is the run's --prompt_format, read from the run's ``config.json`` (the folder above the round's).

This module is the training layer's (DPO/train_preferences.py reads it); the loop imports ``pair_record``
from here for its own training stage, so the two train on the same rows.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from ipo import IpoError
from ipo.prompts import UPSTREAM_END_MARKER, UPSTREAM_INST_PROMPT

PROMPT_FORMATS = ("upstream", "chat")
PAIR_SPLITS = ("train", "test")
# The columns that mark a row as one of a self-improvement run's pairs (no other layout has them together).
RUN_PAIR_COLUMNS = ("prompt", "chosen", "rejected", "split", "score_chosen", "score_rejected")


def pair_record(pair: dict, prompt_format: str) -> dict:
    """The TRL preference row of a pair.

    upstream: {"prompt": "[INST] x [/INST]", "chosen": response + "<|eot_id|>", ...} for every model, as
    upstream's train_path JSON (built directly, not through its "Assistant:/Response:" string round trip;
    TRL then appends the tokenizer's EOS as well). chat: conversational rows; TRL renders them with the
    chat template and the template closes each turn with the model's own end token.
    """
    if prompt_format == "upstream":

        def with_marker(text):
            return f"{text.strip().split(UPSTREAM_END_MARKER)[0]}{UPSTREAM_END_MARKER}"

        return {
            "prompt": UPSTREAM_INST_PROMPT.format(instruction=pair["prompt"].strip()),
            "chosen": with_marker(pair["chosen"]),
            "rejected": with_marker(pair["rejected"]),
        }
    return {
        "prompt": [{"role": "user", "content": pair["prompt"]}],
        "chosen": [{"role": "assistant", "content": pair["chosen"]}],
        "rejected": [{"role": "assistant", "content": pair["rejected"]}],
    }


def is_run_pair(row) -> bool:
    """Whether a row is one of a self-improvement run's pairs (RUN_PAIR_COLUMNS, a train/test split)."""
    return isinstance(row, dict) and all(c in row for c in RUN_PAIR_COLUMNS) and row["split"] in PAIR_SPLITS


def run_config_path(pairs_path: str | Path) -> Path:
    """The config.json of the run a round's pairs.jsonl belongs to: ``<run>/round_<k>/pairs.jsonl`` ->
    ``<run>/config.json``."""
    return Path(pairs_path).resolve().parent.parent / "config.json"


def run_prompt_format(pairs_path: str | Path) -> str:
    """The --prompt_format of the run that wrote ``pairs_path``, from its config.json; one line when the file
    is not inside a run folder (the rows alone cannot say how the sampler saw the prompts)."""
    config_path = run_config_path(pairs_path)
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise IpoError(
            f"{pairs_path} holds a self-improvement run's pairs, but {config_path} (the run's config.json, which "
            "names its --prompt_format) is missing or unreadable; keep pairs.jsonl inside its run folder "
            "(<run>/round_<k>/pairs.jsonl)"
        ) from None
    prompt_format = (config.get("args") or {}).get("prompt_format")
    if prompt_format not in PROMPT_FORMATS:
        raise IpoError(f"{config_path}: prompt_format {prompt_format!r} is not one of {', '.join(PROMPT_FORMATS)}")
    return prompt_format


def run_pair_records(rows: Sequence[dict], source: str, split: str, prompt_format: str) -> list[dict]:
    """The TRL rows of the pairs of one split (``train`` or ``test``) of a run's pairs.jsonl."""
    if split not in PAIR_SPLITS:
        raise IpoError(
            f"{source} is a self-improvement run's pairs file: its splits are train (the training pairs) and test "
            f"(the held-out pairs), not {split!r}"
        )
    for index, row in enumerate(rows):
        if not is_run_pair(row):
            raise IpoError(
                f"{source}: row {index} is not a self-improvement pair (columns {', '.join(RUN_PAIR_COLUMNS)}, "
                "split train or test), unlike the rest of the file"
            )
    return [pair_record(row, prompt_format) for row in rows if row["split"] == split]
