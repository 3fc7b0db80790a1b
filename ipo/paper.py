"""The paper's published numbers as data (Garg et al., IPO, arXiv 2502.16182 / ACL 2025 2025.acl-long.954).

ipo/paper_results.csv holds one published value a row:

    table         "rewardbench" (accuracy per category, %) or "downstream" (the DPO-trained model's scores, %)
    model         the paper's name of the model (e.g. Qwen-2.5-7B-Instruct)
    method        the project's method id (ipo.run_info.METHODS), method_label the paper's name for it
    column        the paper's column (Chat, Code, Math, Safety, Avg; BBH, ARC-Easy, AlpacaEval, MMLU, IFEval, Avg)
    value         the number as published, in percent
    source        where in the paper; transcription: "secondary: ..." when the value was read from a third
                  party's transcription and not yet checked against the paper's table; note: caveats

Only values found in a source are there; nothing is interpolated. ``paper_model`` maps a model id as a run
gives it (Qwen/Qwen2.5-7B-Instruct, a local folder named so) to the paper's row (Qwen-2.5-7B-Instruct).
"""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from ipo import IpoError
from ipo.run_info import model_short_name

RESULTS_FILE = Path(__file__).with_name("paper_results.csv")
PAPER = "arXiv 2502.16182"
FIELDS = ("table", "model", "method", "method_label", "column", "value", "source", "transcription", "note")

# The columns of each table, in the paper's order.
COLUMNS = {
    "rewardbench": ("Chat", "Code", "Math", "Safety", "Avg"),
    "downstream": ("BBH", "ARC-Easy", "AlpacaEval", "MMLU", "IFEval", "Avg"),
}

# Model ids that are the paper's models under another name. The paper names "Mistral-7B-Instruct" without a
# version: upstream's DPO/ours.py defaults to v0.1 and DPO/self_reward.py to v0.2, so both map to it.
MODEL_ALIASES = {
    "Mistral-7B-Instruct": ("Mistral-7B-Instruct-v0.1", "Mistral-7B-Instruct-v0.2"),
}


@dataclass(frozen=True)
class PaperValue:
    table: str
    model: str
    method: str
    method_label: str
    column: str
    value: float
    source: str
    transcription: str = ""
    note: str = ""

    @property
    def secondary(self) -> bool:
        """The value came from a third party's transcription, not checked against the paper."""
        return self.transcription.startswith("secondary")


def read_paper_results(path: str | os.PathLike = RESULTS_FILE) -> list[PaperValue]:
    """Every published value in ``path`` (ipo/paper_results.csv), checked: known table and column, a number."""
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except OSError as error:
        raise IpoError(f"cannot read the paper's numbers in {path}: {error.strerror or error}")
    values = []
    for line, row in enumerate(rows, 2):
        if set(FIELDS) - set(row):
            raise IpoError(f"{path}: columns {', '.join(FIELDS)} expected, got {', '.join(row)}")
        if row["table"] not in COLUMNS or row["column"] not in COLUMNS[row["table"]]:
            raise IpoError(f"{path}:{line}: unknown table/column {row['table']}/{row['column']}")
        try:
            value = float(row["value"])
        except ValueError:
            raise IpoError(f"{path}:{line}: value {row['value']!r} is not a number")
        values.append(PaperValue(**{**{k: row[k] or "" for k in FIELDS}, "value": value}))
    return values


@lru_cache(maxsize=4)
def _cached(path: str) -> tuple[PaperValue, ...]:
    return tuple(read_paper_results(path))


def paper_results(path: str | os.PathLike = RESULTS_FILE) -> tuple[PaperValue, ...]:
    """read_paper_results, read once per path."""
    return _cached(str(path))


def published(table: str, model: str, method: str, path: str | os.PathLike = RESULTS_FILE) -> dict[str, PaperValue]:
    """{column: PaperValue} the paper has for (table, paper model, method id); {} if none."""
    return {v.column: v for v in paper_results(path) if v.table == table and v.model == model and v.method == method}


def paper_rows(table: str, path: str | os.PathLike = RESULTS_FILE) -> list[tuple[str, str, str]]:
    """(paper model, method id, method label) of every row the paper has in ``table``, in the file's order."""
    rows: dict[tuple[str, str], str] = {}
    for v in paper_results(path):
        if v.table == table:
            rows.setdefault((v.model, v.method), v.method_label)
    return [(model, method, label) for (model, method), label in rows.items()]


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def paper_model(model: str | None, path: str | os.PathLike = RESULTS_FILE) -> str | None:
    """The paper's name of a model given as a run names it (Hub id, local folder, .gguf file), or None.

    Matched on the last path part, ignoring case and punctuation (Qwen2.5-7B-Instruct -> Qwen-2.5-7B-Instruct),
    and through MODEL_ALIASES.
    """
    if not model:
        return None
    short = _key(model_short_name(model))
    for name in dict.fromkeys(v.model for v in paper_results(path)):
        if short == _key(name) or short in {_key(alias) for alias in MODEL_ALIASES.get(name, ())}:
            return name
    return None
