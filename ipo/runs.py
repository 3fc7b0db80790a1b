"""Run folders: resolved configuration, resumable per-example predictions, atomic outputs.

A run folder is ``<output_dir>/<run_name>/``. It holds ``config.json`` (arguments, resolved settings,
library versions, git commit; never a secret), ``predictions.jsonl`` (appended and flushed per batch,
so a killed run loses at most the batch in flight) and the summaries, which are always recomputed
from the predictions and written atomically (temporary file + rename), so no reader ever sees a
half-written file.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import json
import logging
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ipo import IpoError

logger = logging.getLogger("ipo")

# Arguments that may carry a secret: accepted for upstream's commands, never saved anywhere.
SECRET_ARGS = frozenset({"hf_key", "hf_api", "api_key", "openai_key"})
TRACKED_LIBRARIES = (
    "torch", "transformers", "trl", "peft", "datasets", "accelerate", "bitsandbytes",
    "huggingface_hub", "tokenizers", "sentence-transformers", "openai", "wandb", "ipo",
)  # fmt: skip

# Arguments that change how fast or where a run goes, not what it computes: a run may be resumed with
# different values of these. Every other argument is part of the run's fingerprint.
NON_RESULT_ARGS = frozenset({
    "batch_size", "max_batch_tokens", "prefix_sharing", "limit", "device", "output_dir", "run_name",
    "overwrite", "push_to_hub", "hf_user", "log_level", "max_concurrency", "max_retries", "timeout",
    "retry_base_delay", "api_key_env", "cache_dir",

    # self-improvement / training: which stages run now, where copies and logs go, memory-for-speed trades
    "just_sample", "stop_after", "rounds", "merge_adapters", "judge_after", "train_path", "test_path",
    "mapped_path", "dataset_id", "hub_repo_id", "report_to", "wandb_project", "sample_batch_size",
    "judge_batch_size", "gradient_checkpointing", "precompute_ref_log_probs", "logging_steps", "save_steps",
    "save_total_limit", "eval_steps", "dataloader_num_workers",
})  # fmt: skip


# ---------------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------------
def library_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in TRACKED_LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_commit() -> str | None:
    """The commit of this checkout (with '+dirty' if it has local changes), or None outside git."""
    repo = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return (sha + ("+dirty" if dirty else "")) or None


def scrubbed_command(argv: list[str] | None = None) -> list[str]:
    """sys.argv with the values of secret-bearing flags replaced by '***'."""
    argv = list(sys.argv if argv is None else argv)
    secret_flags = {f"--{name}" for name in SECRET_ARGS}
    out, hide_next = [], False
    for token in argv:
        if hide_next:
            out.append("***")
            hide_next = False
        elif token in secret_flags:
            out.append(token)
            hide_next = True
        elif token.split("=", 1)[0] in secret_flags:
            out.append(token.split("=", 1)[0] + "=***")
        else:
            out.append(token)
    return out


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False) + "\n")


def atomic_write_jsonl(path: str | os.PathLike, records: Iterable[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def atomic_write_dir(target: str | os.PathLike, write) -> Path:
    """Call ``write(tmp_folder)``, then rename the folder to ``target`` (replacing an old one).

    Readers never see half a folder: a model or adapter folder exists only once it is complete.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        write(tmp)
        os.chmod(tmp, 0o755)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


# ---------------------------------------------------------------------------------------------------
# Append-only, resumable record logs
# ---------------------------------------------------------------------------------------------------
class RecordLog:
    """A JSONL file of records keyed by ``key``, appended and fsynced batch by batch.

    Loading repairs what a kill can leave behind: a last line cut off mid-write is dropped (the file is
    truncated to its last complete line) and its example is simply scored again. Keys are compared as
    strings, so int and str ids both work.
    """

    def __init__(self, path: str | os.PathLike, key: str = "id"):
        self.path = Path(path)
        self.key = key
        self.records: dict[str, dict] = {}
        if self.path.exists():
            self._load()

    def _load(self) -> None:
        raw = self.path.read_bytes()
        good_end = raw.rfind(b"\n") + 1  # bytes after the last newline are an interrupted write
        if good_end < len(raw):
            logger.warning("%s: dropping an incomplete last line left by an interrupted run", self.path)
            with open(self.path, "r+b") as handle:
                handle.truncate(good_end)
        for number, line in enumerate(raw[:good_end].decode("utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                raise IpoError(f"{self.path}: line {number} is not valid JSON; use --overwrite to start over")
            self.records.setdefault(str(record[self.key]), record)

    def __contains__(self, key) -> bool:
        return str(key) in self.records

    def __len__(self) -> int:
        return len(self.records)

    def append(self, records: list[dict]) -> None:
        if not records:
            return
        fresh = [r for r in records if str(r[self.key]) not in self.records]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in fresh))
            handle.flush()
            os.fsync(handle.fileno())
        for record in fresh:
            self.records[str(record[self.key])] = record

    def discard(self, keys: Iterable) -> int:
        """Forget records (e.g. failed API calls, to be tried again): the file is rewritten atomically
        without them. Returns how many were dropped."""
        drop = {str(k) for k in keys} & set(self.records)
        if drop:
            for key in drop:
                del self.records[key]
            atomic_write_jsonl(self.path, self.records.values())
        return len(drop)

    def ordered(self, keys: Iterable) -> list[dict]:
        """Records in the order of ``keys`` (the dataset's order), skipping keys not scored yet."""
        return [self.records[str(k)] for k in keys if str(k) in self.records]


# ---------------------------------------------------------------------------------------------------
# Run folders
# ---------------------------------------------------------------------------------------------------
class RunDir:
    """``<output_dir>/<run_name>/`` with its config.json; resumable unless the settings changed."""

    def __init__(self, output_dir: str | os.PathLike, run_name: str, overwrite: bool = False):
        if not run_name or "/" in run_name or run_name in {".", ".."}:
            raise IpoError(f"invalid --run_name {run_name!r}: use a plain folder name")
        self.path = Path(output_dir) / run_name
        self.overwrite = overwrite  # the old folder is removed in start(), once the new run is ready


    def file(self, name: str) -> Path:
        return self.path / name

    @property
    def resuming(self) -> bool:
        return self.file("config.json").exists()

    @staticmethod
    def _fingerprint(arguments: dict, extra: dict | None) -> dict:
        fingerprint = {k: v for k, v in arguments.items() if k not in NON_RESULT_ARGS and k not in SECRET_ARGS}
        fingerprint.update(extra or {})
        return json.loads(json.dumps(fingerprint, default=str))

    def check(self, arguments: dict, fingerprint_extra: dict | None = None) -> bool:
        """Raise if the folder holds a run with other settings; True if it can be resumed.

        ``arguments``: the command's arguments as a plain dict (what config.json keeps under "args").

        Call it before slow work (loading a model) so a mismatch fails in a second; writes nothing.
        """
        if self.overwrite or not self.resuming:
            return False
        fingerprint = self._fingerprint(arguments, fingerprint_extra)
        try:
            old = json.loads(self.file("config.json").read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            raise IpoError(f"{self.file('config.json')} is unreadable; use --overwrite to start over")
        old_fp = old.get("fingerprint", {})
        changed = sorted(k for k in set(old_fp) | set(fingerprint) if old_fp.get(k) != fingerprint.get(k))
        if changed:
            details = ", ".join(f"{k}: {old_fp.get(k)!r} -> {fingerprint.get(k)!r}" for k in changed[:4])
            raise IpoError(
                f"{self.path} holds a run with different settings ({details}); "
                "pass another --run_name, or --overwrite to discard it"
            )
        return True

    def start(self, arguments: dict, resolved: dict | None = None, fingerprint_extra: dict | None = None) -> bool:
        """Write config.json (after checking it matches, when resuming). Returns True when resuming.

        ``arguments`` should already be free of secrets (cli.public_args); secret names are dropped again
        here as a second line of defence.
        """
        resuming = self.check(arguments, fingerprint_extra)
        if self.overwrite and self.path.exists():
            shutil.rmtree(self.path)
            self.overwrite = False
        if resuming:
            logger.info("resuming the run in %s", self.path)
        config = {
            "args": {k: v for k, v in arguments.items() if k not in SECRET_ARGS},
            "resolved": resolved or {},
            "fingerprint": self._fingerprint(arguments, fingerprint_extra),
            "versions": library_versions(),
            "git_commit": git_commit(),
            "command": scrubbed_command(),
            "started_at": _dt.datetime.now().isoformat(timespec="seconds"),
        }
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.file("config.json"), json.loads(json.dumps(config, default=str)))
        return resuming

    def update_resolved(self, **resolved) -> None:
        """Add resolved settings (token ids, dtype, ...) to config.json once they are known."""
        config = json.loads(self.file("config.json").read_text(encoding="utf-8"))
        config["resolved"].update(json.loads(json.dumps(resolved, default=str)))
        atomic_write_json(self.file("config.json"), config)


def score_into_log(scorer, examples, log: RecordLog, make_record, unit: str = "example", desc: str = "scoring") -> int:
    """Score the examples ``log`` does not hold yet, appending one record per example as batches finish.

    ``scorer.score(examples)`` yields lists of ``(example, scores, extra)``; ``make_record`` turns one
    into the JSON record. Returns how many examples were scored now. A progress bar shows examples
    done (including those resumed), rate and ETA.
    """
    todo = [e for e in examples if e.id not in log]
    if not todo:
        logger.info("all %d examples are already scored in %s", len(examples), log.path)
        return 0
    if len(todo) < len(examples):
        logger.info("resuming: %d of %d examples already scored", len(examples) - len(todo), len(examples))
    interactive = sys.stderr.isatty()
    with tqdm(total=len(examples), initial=len(examples) - len(todo), unit=unit, desc=desc,
              dynamic_ncols=True, mininterval=0.5 if interactive else 30) as bar:  # fmt: skip
        for batch in scorer.score(todo):
            log.append([make_record(example, scores, extra) for example, scores, extra in batch])
            bar.update(len(batch))
    return len(todo)
