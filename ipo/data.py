"""Loading examples from local files or Hub datasets, with one-line errors that name the file and field.

Every benchmark loader turns its rows into ``Example`` records: one prompt with the responses to score
(RewardBench: [chosen, rejected]; RM-Bench: 3 chosen then 3 rejected; self-improvement: N samples).
"""

from __future__ import annotations

import gzip
import json
import logging
import os
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ipo import IpoError

logger = logging.getLogger("ipo")

LOCAL_SUFFIXES = (".json", ".jsonl", ".parquet", ".json.gz", ".jsonl.gz")


@dataclass
class Example:
    """One prompt and the responses a judge scores for it."""

    id: str | int
    prompt: str
    responses: list[str]
    subset: str = ""  # RewardBench / RM-Bench subset name
    domain: str = ""  # RM-Bench domain, or the prompt category in self-improvement
    meta: dict = field(default_factory=dict)


def looks_local(source: str) -> bool:
    """A path on disk (or meant to be one) rather than a Hub dataset id."""
    return (
        os.path.exists(source)
        or source.endswith(LOCAL_SUFFIXES)
        or source.startswith((".", "/", "~"))
        or source.count("/") > 1
    )


def read_records(source: str, split: str | None = None, config: str | None = None) -> list[dict]:
    """Rows of a local json/jsonl/parquet file (gzip accepted) or of a Hub dataset split (and config)."""
    if looks_local(source):
        return read_local_records(source)
    return read_hub_records(source, split, config)


def read_local_records(path: str) -> list[dict]:
    path = os.path.expanduser(path)
    if not os.path.exists(path):
        raise IpoError(f"{path}: no such file")
    if os.path.isdir(path):
        raise IpoError(f"{path}: is a folder; pass a .json, .jsonl or .parquet file")
    name = path[:-3] if path.endswith(".gz") else path
    try:
        if name.endswith(".parquet"):
            import pyarrow.parquet as pq

            rows = pq.read_table(path).to_pylist()
        else:
            opener = gzip.open if path.endswith(".gz") else open
            with opener(path, "rt", encoding="utf-8") as handle:
                text = handle.read()
            rows = _parse_json_rows(text, path, prefer_lines=name.endswith(".jsonl"))
    except IpoError:
        raise
    except (OSError, UnicodeDecodeError, EOFError) as err:
        raise IpoError(f"{path}: cannot be read ({type(err).__name__}: {err})")
    except Exception as err:  # pyarrow raises its own error types on a corrupt parquet file
        raise IpoError(f"{path}: cannot be read as {Path(name).suffix[1:]} ({type(err).__name__}: {err})")
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise IpoError(f"{path}: expected a list of JSON objects (one per example)")
    return rows


def _parse_json_rows(text: str, path: str, prefer_lines: bool) -> list[dict]:
    """A JSON list, a column-oriented JSON object, or JSON Lines (as datasets' to_json writes)."""
    if not text.strip():
        return []
    if not prefer_lines:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            if not err.msg.startswith("Extra data"):
                raise IpoError(f"{path}: not valid JSON ({err.msg} at line {err.lineno} column {err.colno})")
        else:
            return _rows_from_json_value(data, path)
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise IpoError(f"{path}: line {number} is not valid JSON ({err.msg})")
    return rows


def _rows_from_json_value(data, path: str) -> list[dict]:
    if isinstance(data, list):
        return data
    if isinstance(data, dict):
        lists = {k: v for k, v in data.items() if isinstance(v, list)}
        if len(lists) == 1 and all(isinstance(r, dict) for r in next(iter(lists.values()))):
            return next(iter(lists.values()))  # {"data": [{...}, ...]}
        if lists and len(lists) == len(data) and len({len(v) for v in lists.values()}) == 1:
            n = len(next(iter(lists.values())))  # column-oriented {"prompt": [...], "chosen": [...]}
            return [{k: v[i] for k, v in lists.items()} for i in range(n)]
    raise IpoError(f"{path}: expected a JSON list of objects, one per example")


def read_hub_records(repo_id: str, split: str | None, config: str | None = None) -> list[dict]:
    import datasets

    try:
        dataset = datasets.load_dataset(repo_id, config, split=split)
    except Exception as err:  # datasets raises many types: not found, offline, unknown split, auth
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        hint = ""
        if os.environ.get("HF_HUB_OFFLINE") == "1" or "offline" in message.lower() or "connect" in message.lower():
            hint = "; the Hub is unreachable here, pass a local file instead"
        raise IpoError(f"could not load Hub dataset {repo_id!r} (split {split!r}): {message}{hint}")
    if isinstance(dataset, datasets.DatasetDict):
        raise IpoError(f"Hub dataset {repo_id!r} has splits {list(dataset)}; choose one")
    return dataset.to_list()


def require_columns(rows: Sequence[dict], columns: Iterable[str], source: str) -> None:
    """Fail with one line naming the first missing column and the file, if any row lacks one."""
    if not rows:
        raise IpoError(f"{source}: the dataset is empty")
    for index, row in enumerate(rows):
        missing = [c for c in columns if c not in row]
        if missing:
            where = f"row {index}" + (f" (id {row['id']})" if "id" in row else "")
            raise IpoError(
                f"{source}: {where} has no column {missing[0]!r} (columns: {', '.join(sorted(row))})"
            )


def require_text(value, source: str, row_id, column: str) -> str:
    if not isinstance(value, str):
        raise IpoError(f"{source}: row id {row_id}: column {column!r} must be text, got {type(value).__name__}")
    return value


def row_ids(rows: Sequence[dict], source: str) -> list:
    """The rows' `id` values (or their positions when there is no id column); duplicates are an error."""
    ids = [row.get("id", index) for index, row in enumerate(rows)]
    duplicates = [i for i, n in Counter(map(str, ids)).items() if n > 1]
    if duplicates:
        raise IpoError(f"{source}: duplicate id {duplicates[0]!r}; ids must be unique to resume safely")
    return ids


def limit_per_group(examples: list[Example], limit: int | None, key: Callable[[Example], str]) -> list[Example]:
    """Keep at most ``limit`` examples per group (e.g. per subset), in dataset order."""
    if limit is None:
        return examples
    seen: defaultdict[str, int] = defaultdict(int)
    kept = []
    for example in examples:
        group = key(example)
        if seen[group] < limit:
            seen[group] += 1
            kept.append(example)
    return kept
