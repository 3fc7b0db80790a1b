"""Run folders: resolved configuration, resumable per-example predictions, atomic outputs, one run at a time.

A run folder is ``<output_dir>/<run_name>/``. It holds ``config.json`` (arguments, resolved settings,
fingerprints of the input files, library versions, git commit; never a secret), ``predictions.jsonl``
(appended and flushed per batch, so a killed run loses at most the batch in flight) and the summaries,
which are always recomputed from the predictions and written atomically (temporary file + rename, with the
user's umask), so no reader ever sees a half-written file. A run holds an OS lock on its folder (``.lock``)
for its whole life, so a second run on the same folder stops at once. docs/runs.md tells the whole story.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import importlib.metadata
import json
import logging
import os
import platform
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ipo import IpoError
from ipo.data import input_change, input_fingerprint

logger = logging.getLogger("ipo")

# Arguments that may carry a secret: accepted for upstream's commands, never saved anywhere.
SECRET_ARGS = frozenset({"hf_key", "hf_api", "api_key", "openai_key"})
TRACKED_LIBRARIES = tuple(
    "torch transformers trl peft datasets accelerate bitsandbytes huggingface_hub tokenizers sentence-transformers "
    "openai wandb ipo".split()
)

# Arguments that change how fast or where a run goes, not what it computes: a run may be resumed with
# different values of these. Every other argument is part of the run's fingerprint, --limit included (it
# decides which examples the metrics cover; see RunDir's ``coverage`` for the one way it may change).
NON_RESULT_ARGS = frozenset(
    "batch_size max_batch_tokens prefix_sharing device output_dir run_name overwrite push_to_hub hf_user log_level "
    "max_concurrency max_retries timeout retry_base_delay api_key_env cache_dir ".split()
    # self-improvement / training: which stages run now, where copies and logs go, memory-for-speed trades
    + "just_sample stop_after rounds merge_adapters judge_after train_path test_path mapped_path dataset_id "
    "hub_repo_id report_to wandb_project sample_batch_size judge_batch_size gradient_checkpointing "
    "precompute_ref_log_probs logging_steps save_steps save_total_limit eval_steps dataloader_num_workers".split()
)


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
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
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


# ---------------------------------------------------------------------------------------------------
# Atomic writes, with the user's umask
# ---------------------------------------------------------------------------------------------------
_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process's umask (read from /proc where it can be, so that no thread ever sees it changed)."""
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def atomic_write_file(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp_path)``, then rename the file to ``path``: readers see the old file or the whole new one.

    The file gets the mode a plain ``open(path, "w")`` would give (0644 under the usual umask 022; mkstemp
    alone gives 0600). The temporary ``.<name>.<random>.tmp`` of a killed write is removed by the next start
    of the run (clean_temporaries). For writers that take a path (``fig.savefig(tmp, format="png")``,
    ``torch.save``); atomic_write_text and friends use it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        apply_umask(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def apply_umask(path: str | os.PathLike) -> None:
    """Give a file that was written through mkstemp (mode 0600) the mode ``open(path, "w")`` would have."""
    os.chmod(path, 0o666 & ~current_umask())


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())

    atomic_write_file(path, write)


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False) + "\n")


def atomic_write_jsonl(path: str | os.PathLike, records: Iterable[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def atomic_write_dir(target: str | os.PathLike, write) -> Path:
    """Call ``write(tmp_folder)``, then rename the folder to ``target`` (replacing an old one).

    Readers never see half a folder: a model or adapter folder exists only once it is complete. The
    temporary ``.<name>.<random>.tmp/`` of a killed write is removed by the next start of the run.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    try:
        write(tmp)
        os.chmod(tmp, 0o777 & ~current_umask())
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
    strings, so int and str ids both work. A key written twice keeps its first record, or its last with
    ``last_wins`` (a log whose records may be replaced, e.g. the API response cache). ``remedy``: what the
    one-line error of a damaged file tells the user to do.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        key: str = "id",
        last_wins: bool = False,
        remedy: str = "use --overwrite to start over",
    ):
        self.path = Path(path)
        self.key = key
        self.last_wins = last_wins
        self.remedy = remedy
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
                key = str(record[self.key])
            except (json.JSONDecodeError, TypeError, KeyError):
                raise IpoError(f"{self.path}: line {number} is not a JSON record with {self.key!r}; {self.remedy}")
            if self.last_wins:
                self.records[key] = record
            else:
                self.records.setdefault(key, record)

    def __contains__(self, key) -> bool:
        return str(key) in self.records

    def __len__(self) -> int:
        return len(self.records)

    def append(self, records: list[dict], replace: bool = False) -> None:
        """Append the records whose key is new (all of them with ``replace``, the later one winning)."""
        if not records:
            return
        fresh = list(records) if replace else [r for r in records if str(r[self.key]) not in self.records]
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
# Names, output folders, locks, what killed writes leave behind
# ---------------------------------------------------------------------------------------------------
LOCK_FILE = ".lock"
# What an interrupted atomic write leaves: ".<name>.<8 random characters>.tmp" (atomic_write_file and
# atomic_write_dir), ".<stem>.<random>.png" (a figure), ".<name>.<random>" (a folder of atomic_write_dir before
# it had the .tmp suffix) and ".<name>.saving" (ipo.training.distributed.save_trained_model).
TEMPORARY_NAME = re.compile(r"\..+\.(?:[a-z0-9_]{8}(?:\.tmp|\.png)?|saving)")
_HELD_LOCKS: dict[str, int] = {}  # real path of a locked folder -> the open lock file holding the lock


def validate_name(name: str, what: str = "--run_name") -> str:
    """``name`` if it can be one folder inside another: not empty, '.' or '..', no '/' or backslash, not absolute.

    Use it for every name that becomes a path (--run_name here; --sweep_name, a round's name), so that no
    name writes outside its parent folder."""
    plain = isinstance(name, str) and name.strip() and name not in {".", ".."} and not os.path.isabs(name)
    if not plain or any(c in name for c in "/\\\0"):
        raise IpoError(f"invalid {what} {name!r}: use a plain folder name (no '/', not empty, '.' or '..')")
    return name


def check_output_dir(path: str | os.PathLike, what: str = "--output_dir") -> Path:
    """One line (IpoError) unless ``path`` is, or can be created as, a folder this user can write in: it is not
    a file, does not lie under a file, and the nearest folder that exists is writable. Creates nothing."""
    path = Path(path).expanduser()
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        where = "is a file" if existing == path else f"lies under {existing}, which is a file"
        raise IpoError(f"{what} {path} {where}, not a folder; pass a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise IpoError(f"{what} {path}: {existing} is not writable by this user; pass a folder you can write in")
    return path


def lock_folder(folder: str | os.PathLike) -> None:
    """Hold an exclusive OS lock (flock on ``folder/.lock``) until release_locks() or the end of the process.

    The kernel drops the lock when the process ends, however it ends, so a crashed run leaves nothing to
    clean up. A folder another process holds raises one line naming that run's PID and host. Taking a lock
    this process already holds does nothing; so does a process other than the main one of a distributed
    job (RANK set and not 0: the main process holds the lock for the job).
    """
    key = os.path.realpath(folder)
    if key in _HELD_LOCKS or os.environ.get("RANK", "0") not in ("", "0"):
        return
    try:
        fd = os.open(os.path.join(folder, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as err:
        raise IpoError(f"cannot write in {folder} ({err.strerror}); pass an --output_dir you can write in")
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _lock_holder(fd)
        os.close(fd)
        raise IpoError(
            f"{folder} is in use by another run ({holder}); wait for it to end (or stop it), or pass another --run_name"
        )
    except OSError as err:  # a filesystem without locks: run unprotected rather than not at all
        logger.warning("cannot lock %s (%s); nothing stops a second run on this folder", folder, err.strerror)
    started = _dt.datetime.now().isoformat(timespec="seconds")
    holder = {"pid": os.getpid(), "host": socket.gethostname(), "started": started, "command": scrubbed_command()}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(holder) + "\n").encode("utf-8"), 0)
    _HELD_LOCKS[key] = fd


def _lock_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 65536, 0).decode("utf-8"))
        return f"PID {info['pid']} on host {info['host']}, started {info['started']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that has not written its PID and host yet"


def release_locks() -> None:
    """Release every run-folder lock this process holds (ipo.cli.run calls it when a script ends)."""
    while _HELD_LOCKS:
        os.close(_HELD_LOCKS.popitem()[1])


def clean_temporaries(folder: str | os.PathLike) -> int:
    """Remove what killed atomic writes left under ``folder`` (TEMPORARY_NAME files and folders, at any depth,
    but not inside another run's folder); returns how many. Call it only while holding the folder's lock
    (RunDir.start does), so that no write of this run is in flight."""
    removed = 0
    for root, dirs, files in os.walk(folder):
        for name in [d for d in dirs if TEMPORARY_NAME.fullmatch(d)]:
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)
            dirs.remove(name)
            removed += 1
        dirs[:] = [d for d in dirs if not os.path.exists(os.path.join(root, d, LOCK_FILE))]  # another run's folder
        for name in files:
            if TEMPORARY_NAME.fullmatch(name):
                Path(root, name).unlink(missing_ok=True)
                removed += 1
    if removed:
        logger.info("removed %d temporary file(s) or folder(s) left by an interrupted write in %s", removed, folder)
    return removed


# ---------------------------------------------------------------------------------------------------
# Run folders
# ---------------------------------------------------------------------------------------------------
class RunDir:
    """``<output_dir>/<run_name>/`` with its config.json; resumable unless its settings or inputs changed.

    ``inputs`` {source: "dataset" or "model"}: the files, model folders or Hub ids the run reads. Their
    fingerprints (ipo.data.input_fingerprint) go into config.json, and a resume whose inputs changed is
    refused with one line naming the file. ``coverage``: arguments that say how many examples a run covers
    (``limit``, None meaning all): a resume may widen them (the run then scores the new examples too and
    its metrics cover them all), never narrow them (that would rewrite a bigger run's metrics over fewer).
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        run_name: str,
        overwrite: bool = False,
        inputs: dict[str, str] | None = None,
        coverage: Sequence[str] = (),
    ):
        self.output_dir = Path(output_dir)
        self.path = self.output_dir / validate_name(run_name)
        self.overwrite = overwrite  # the old folder is emptied in start(), once the new run is ready
        self.inputs = dict(inputs or {})
        self.coverage = tuple(coverage)
        self.fingerprints: dict[str, dict] | None = None  # of the inputs, computed once by check()

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

    def lock(self) -> None:
        """Hold the folder's lock (lock_folder) for the rest of the run; the folder must exist."""
        lock_folder(self.path)

    def check(self, arguments: dict, fingerprint_extra: dict | None = None) -> bool:
        """Raise one line if this run cannot go on in this folder; True if it resumes a run there.

        In order: the output folder is a file or not writable; another run holds the folder (lock); it holds
        a run with other settings, or over more examples (``coverage``); an input changed since that run
        started. ``arguments``: the command's arguments as a plain dict (what config.json keeps under "args").

        Call it before slow work (loading a model, sending a request): it fails in a second and writes
        nothing, except the lock file of a run folder that already exists.
        """
        check_output_dir(self.output_dir)
        if self.path.exists() or self.path.is_symlink():
            if not self.path.is_dir():
                raise IpoError(f"{self.path} is a file, not a run folder; pass another --run_name or --output_dir")
            check_output_dir(self.path, "run folder")
            self.lock()
        old = self._old_config() if not self.overwrite and self.resuming else None
        if self.fingerprints is None:
            previous = (old or {}).get("inputs") or {}
            self.fingerprints = {s: input_fingerprint(s, previous.get(s), kind) for s, kind in self.inputs.items()}
        if old is None:
            return False
        self._compare_settings(old, self._fingerprint(arguments, fingerprint_extra))
        for source, now in self.fingerprints.items():
            change = input_change(source, (old.get("inputs") or {}).get(source), now)
            if change:
                raise IpoError(
                    f"{change} since the run in {self.path} started; resuming would mix results of two versions: "
                    "pass --overwrite to start over, or another --run_name"
                )
        return True

    def _old_config(self) -> dict:
        try:
            old = json.loads(self.file("config.json").read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            old = None
        if not isinstance(old, dict):
            raise IpoError(f"{self.file('config.json')} is unreadable; use --overwrite to start over")
        return old

    def _compare_settings(self, old: dict, fingerprint: dict) -> None:
        """Refuse other settings, or a narrower coverage; a setting the old config.json left out of its
        fingerprint (--limit before it counted) is read from its arguments."""
        old_fp, old_args = old.get("fingerprint", {}), old.get("args", {})
        before = {k: old_fp[k] if k in old_fp else old_args.get(k) for k in set(old_fp) | set(fingerprint)}
        changed = sorted(k for k in before if before[k] != fingerprint.get(k) and k not in self.coverage)
        if changed:
            details = ", ".join(f"{k}: {before[k]!r} -> {fingerprint.get(k)!r}" for k in changed[:4])
            raise IpoError(
                f"{self.path} holds a run with different settings ({details}); "
                "pass another --run_name, or --overwrite to discard it"
            )
        for key in self.coverage:
            old_value, new_value = before.get(key), fingerprint.get(key)
            if old_value != new_value and new_value is not None and (old_value is None or new_value < old_value):
                raise IpoError(
                    f"{self.path} holds a run over more examples ({key}: {old_value!r} -> {new_value!r}); a smaller "
                    "run would rewrite its metrics over fewer: pass another --run_name for it, or --overwrite to "
                    "discard the bigger run"
                )
            if old_value != new_value:
                logger.info("widening the run in %s (%s: %r -> %r)", self.path, key, old_value, new_value)

    def start(self, arguments: dict, resolved: dict | None = None, fingerprint_extra: dict | None = None) -> bool:
        """Check (as ``check``), take the folder's lock, empty it with --overwrite or else remove what killed
        writes left in it, and write config.json. Returns True when resuming.

        ``arguments`` should already be free of secrets (cli.public_args); secret names are dropped again
        here as a second line of defence.
        """
        resuming = self.check(arguments, fingerprint_extra)
        self.path.mkdir(parents=True, exist_ok=True)
        self.lock()
        if self.overwrite:
            for child in self.path.iterdir():
                if child.name != LOCK_FILE:
                    shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
            self.overwrite = False
        else:
            clean_temporaries(self.path)
        if resuming:
            logger.info("resuming the run in %s", self.path)
        config = {
            "args": {k: v for k, v in arguments.items() if k not in SECRET_ARGS},
            "resolved": resolved or {},
            "fingerprint": self._fingerprint(arguments, fingerprint_extra),
            **({"inputs": self.fingerprints} if self.inputs else {}),
            "versions": library_versions(),
            "git_commit": git_commit(),
            "command": scrubbed_command(),
            "started_at": _dt.datetime.now().isoformat(timespec="seconds"),
        }
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
    with tqdm(
        total=len(examples),
        initial=len(examples) - len(todo),
        unit=unit,
        desc=desc,
        dynamic_ncols=True,
        mininterval=0.5 if interactive else 30,
    ) as bar:
        for batch in scorer.score(todo):
            log.append([make_record(example, scores, extra) for example, scores, extra in batch])
            bar.update(len(batch))
    return len(todo)
