"""Loading examples from local files or Hub datasets, with one-line errors that name the file and field.

Every benchmark loader turns its rows into ``Example`` records: one prompt with the responses to score
(RewardBench: [chosen, rejected]; RM-Bench: 3 chosen then 3 rejected; self-improvement: N samples).

The fingerprints of inputs (``input_fingerprint``: a file's size, mtime and sha256, a model folder's files,
a Hub id's local commit) let a run folder (ipo.runs.RunDir) refuse to resume on inputs edited in place.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import tempfile
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
            raise IpoError(f"{source}: {where} has no column {missing[0]!r} (columns: {', '.join(sorted(row))})")


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


@dataclass(frozen=True)
class Coverage:
    """Which examples of the data a run's metrics cover, for metrics.json and results.md.

    ``n_in_data``: examples in the data as read (before any selection); ``selection``: the flags that chose
    among them (e.g. "--set_name code"; "" for none); ``limit`` examples at most per ``per`` (subset, domain).
    """

    n_in_data: int
    limit: int | None = None
    per: str = "subset"
    unit: str = "pairs"
    selection: str = ""

    def metrics(self, n_scored: int) -> dict:
        """metrics.json's "coverage": examples scored of those in the data, and what chose them."""
        return {
            "n_scored": n_scored,
            "n_in_data": self.n_in_data,
            "complete": n_scored == self.n_in_data,
            "limit": self.limit,
            "limit_per": self.per if self.limit else None,
            "selection": self.selection or None,
        }

    def markdown(self, n_scored: int) -> str:
        """The line of results.md that says it."""
        how = [self.selection] if self.selection else []
        how += [f"--limit {self.limit} per {self.per}"] if self.limit else []
        return f"Coverage: {n_scored} of {self.n_in_data} {self.unit} in the data" + (
            f" ({', '.join(how)})." if how else "."
        )


# ---------------------------------------------------------------------------------------------------
# Fingerprints of inputs: what a run folder records so that a resume can tell an input edited in place
# ---------------------------------------------------------------------------------------------------
# The files of a local model folder that decide its outputs: configs, tokenizer, chat template, weights.
MODEL_FILE_SUFFIXES = (
    ".json",
    ".safetensors",
    ".bin",
    ".pt",
    ".pth",
    ".gguf",
    ".model",
    ".txt",
    ".jinja",
    ".tiktoken",
    ".py",
)
_HASH_CACHE_LIMIT = 5000  # entries kept in the user-wide cache of file hashes


def hash_cache_path() -> Path:
    """The user-wide cache of file hashes: $IPO_CACHE_DIR, else $XDG_CACHE_HOME/ipo or ~/.cache/ipo."""
    root = os.environ.get("IPO_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "ipo"
    )
    return Path(root) / "sha256.json"


def _read_hash_cache() -> dict:
    try:
        cache = json.loads(hash_cache_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return cache if isinstance(cache, dict) else {}


def _remember_hash(real_path: str, fingerprint: dict) -> None:
    """Add a hash to the user-wide cache; a cache that cannot be written only costs a hash next time."""
    cache = _read_hash_cache()
    cache.pop(real_path, None)
    cache[real_path] = fingerprint
    path = hash_cache_path()
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(dict(list(cache.items())[-_HASH_CACHE_LIMIT:]), handle)
        os.replace(tmp, path)
    except OSError as err:
        logger.debug("cannot write the hash cache %s: %s", path, err)
        if tmp:
            Path(tmp).unlink(missing_ok=True)


def file_fingerprint(path: str | os.PathLike, previous: dict | None = None) -> dict:
    """{"size", "mtime_ns", "sha256"} of a file. The sha256 is computed only when size or mtime differ from
    ``previous`` (what a run folder recorded) and from the user-wide cache (hash_cache_path())."""
    stat = os.stat(path)
    found = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    real_path = os.path.realpath(path)

    def same_file(known) -> bool:
        return isinstance(known, dict) and bool(known.get("sha256")) and all(known.get(k) == found[k] for k in found)

    known = previous if same_file(previous) else _read_hash_cache().get(real_path)
    if same_file(known):
        return {**found, "sha256": known["sha256"]}
    with open(path, "rb") as handle:
        found["sha256"] = hashlib.file_digest(handle, "sha256").hexdigest()
    _remember_hash(real_path, found)
    return found


def hub_commit(repo_id: str, repo_type: str) -> str | None:
    """The commit of the local snapshot of a Hub repository (its refs/main in the Hub cache), or None; offline."""
    cache = os.environ.get("HF_HUB_CACHE") or os.path.join(
        os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface"), "hub"
    )
    ref = Path(cache) / f"{repo_type}s--{repo_id.replace('/', '--')}" / "refs" / "main"
    try:
        return ref.read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


def input_fingerprint(source: str, previous: dict | None = None, repo_type: str = "dataset") -> dict:
    """What decides the content of an input named on the command line.

    A local file: kind "file" and its file_fingerprint. A local folder (a model): kind "folder" and the
    file_fingerprint of each of its files that a model is read from (MODEL_FILE_SUFFIXES; not subfolders).
    Anything else is a Hub id: kind "hub", and the commit of its local snapshot when the Hub cache has one
    (``repo_type`` "dataset" or "model"). A local path that does not exist: kind "missing" (its loader says so).
    ``previous``: the fingerprint a run folder recorded, so unchanged files are not hashed again.
    """
    previous = previous if isinstance(previous, dict) else {}
    path = os.path.expanduser(source)
    if os.path.isfile(path):
        return {"kind": "file", **file_fingerprint(path, previous)}
    if os.path.isdir(path):
        old = previous.get("files") if isinstance(previous.get("files"), dict) else {}
        names = sorted(
            n
            for n in os.listdir(path)
            if n.endswith(MODEL_FILE_SUFFIXES) and not n.startswith(".") and os.path.isfile(os.path.join(path, n))
        )
        return {"kind": "folder", "files": {n: file_fingerprint(os.path.join(path, n), old.get(n)) for n in names}}
    if looks_local(source):
        return {"kind": "missing"}
    return {"kind": "hub", "repo_type": repo_type, "commit": hub_commit(source, repo_type)}


def input_change(source: str, old: dict, new: dict) -> str | None:
    """How an input changed between two input_fingerprints (a phrase naming the file), or None if it did not.
    A Hub commit counts only when both are known; a source missing now is left to its loader."""
    if not isinstance(old, dict) or new.get("kind") == "missing":
        return None
    if old.get("kind") != new.get("kind"):
        return f"{source} was a {old.get('kind')} and is now a {new.get('kind')}"
    if new["kind"] == "file" and old.get("sha256") != new["sha256"]:
        return f"{source} changed (its sha256 is not the one recorded)"
    if new["kind"] == "folder":
        old_files, new_files = old.get("files") or {}, new["files"]
        for name in sorted(set(old_files) | set(new_files)):
            if name not in new_files or name not in old_files:
                return f"{os.path.join(source, name)} was {'removed' if name not in new_files else 'added'}"
            if old_files[name].get("sha256") != new_files[name]["sha256"]:
                return f"{os.path.join(source, name)} changed (its sha256 is not the one recorded)"
    if new["kind"] == "hub" and old.get("commit") and new["commit"] and old["commit"] != new["commit"]:
        return f"the local snapshot of {source} moved from commit {old['commit']} to {new['commit']}"
    return None
