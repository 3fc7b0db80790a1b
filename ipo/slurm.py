"""SLURM array jobs that run on a real cluster: one task per run folder, the submitter's environment, a stop
and a requeue before the time limit.

``array_script`` renders the sbatch script that ``Preference_Comparison/grid.py`` and ``DPO/sweep.py`` write.
Each task of the array:

- ``cd``s to the folder the job was submitted from (relative paths in the commands start there) and activates
  the environment recorded at submit time (``submit_environment``: conda's ``CONDA_PREFIX`` through
  ``conda activate``, a virtualenv's ``VIRTUAL_ENV`` or the interpreter's own ``bin/activate`` through
  ``source``), then runs the recorded interpreter (``sys.executable``) by its full path, so a node whose
  login shell has another Python still runs the one the job was planned with;
- gets its own port (``MAIN_PROCESS_PORT``, also ``MASTER_PORT``), from the array's job id and the task id,
  passed to ``accelerate launch --main_process_port``: two multi-GPU tasks on one node never both take 29500;
- asks for ``--signal=B:USR1@<seconds>``: the batch shell traps USR1, sends SIGTERM to the task's process
  group (accelerate and its workers included), waits for it to stop, and runs ``scontrol requeue
  $SLURM_JOB_ID``. The requeued task runs the same command, which resumes its run folder (scored examples,
  training checkpoints) rather than starting over;
- writes its own log, ``<log_dir>/%x-%A_%a.out`` (job name, array job id, task id), appended on requeue.

Every option is checked when ``SlurmOptions`` is built (time and memory formats, positive counts), so a bad
flag is one line before anything is written. SLURM's formats: https://slurm.schedmd.com/sbatch.html
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ipo import IpoError

LAUNCHERS = ("python", "accelerate")
PORT_BASE = 20000  # task ports: 20000-29999, below Linux's ephemeral range (32768+) where clients' ports land
PORT_SPAN = 10000
_TIME = re.compile(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?")
_MEMORY = re.compile(r"\d+[KMGT]?", re.IGNORECASE)


def time_seconds(text: str) -> int:
    """Seconds of a SLURM time limit: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S. One line (IpoError) if malformed."""
    match = _TIME.fullmatch(str(text).strip())
    if not match:
        raise IpoError(f"--time {text!r} is not a SLURM time (minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS)")
    days, first, second, third = match.groups()
    if days is None:
        parts = [int(first)] if second is None else [int(first), int(second)] + ([int(third)] if third else [])
        units = {1: (60,), 2: (60, 1), 3: (3600, 60, 1)}[len(parts)]
    else:
        parts = [int(first)] + [int(v) for v in (second, third) if v is not None]
        units = (3600, 60, 1)[: len(parts)]
    if any(value >= 60 for value in parts[1:]):
        raise IpoError(f"--time {text!r}: minutes and seconds must be below 60")
    seconds = (int(days) * 86400 if days else 0) + sum(value * unit for value, unit in zip(parts, units))
    if seconds <= 0:
        raise IpoError(f"--time {text!r} must be positive")
    return seconds


@dataclass(frozen=True)
class SlurmOptions:
    """The #SBATCH settings of an array job; checked on construction (IpoError, one line)."""

    job_name: str
    log_dir: str
    time: str = "24:00:00"  # a 7B judge on RewardBench raw takes about an hour; training several
    mem: str | None = "64G"  # host memory per node: a 7B model passes through host RAM in bf16 (~15 GB) while loading
    cpus_per_task: int = 8  # tokenisation and data loading; the usual share of an 8-GPU node's cores per GPU
    gpus_per_task: int = 1  # one GPU per run folder; 0 = a CPU-only job (API judges)
    gres: str | None = None  # e.g. "gpu:a100:1", for clusters that want --gres instead of --gpus-per-task
    partition: str | None = None
    account: str | None = None
    signal_seconds: int = (
        300  # USR1 this long before the limit: time to stop, flush and requeue (SLURM may be late by up to 60 s)
    )
    max_parallel: int | None = None
    extra: tuple[str, ...] = ()  # more "#SBATCH" contents, e.g. "--qos=high"

    def __post_init__(self):
        for name in ("cpus_per_task", "signal_seconds", "max_parallel"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value <= 0):
                raise IpoError(f"--{name} must be a positive integer, got {value!r}")
        if not isinstance(self.gpus_per_task, int) or self.gpus_per_task < 0:
            raise IpoError(f"--gpus_per_task must be 0 or a positive integer, got {self.gpus_per_task!r}")
        if self.mem is not None and not _MEMORY.fullmatch(str(self.mem)):
            raise IpoError(f"--mem {self.mem!r} is not a SLURM size (a number with an optional K, M, G or T; e.g. 64G)")
        limit = time_seconds(self.time)
        if self.signal_seconds >= limit:
            raise IpoError(f"--signal_seconds {self.signal_seconds} is not below the time limit --time {self.time}")
        for name in ("job_name", "partition", "account", "gres"):
            value = getattr(self, name)
            if value is not None and (not value or any(c.isspace() for c in value)):
                raise IpoError(f"--{name} {value!r} must be one word")
        for option in self.extra:
            if not option.startswith("--"):
                raise IpoError(f"--sbatch_option {option!r} must be an sbatch option such as --qos=high")


@dataclass(frozen=True)
class SubmitEnvironment:
    """What a task needs to run as the submitting shell did: the interpreter, the activation lines, the folder."""

    python: str
    activate: tuple[str, ...] = ()
    workdir: str = field(default_factory=os.getcwd)


def submit_environment(
    environ: Mapping[str, str] | None = None, python: str | None = None, workdir: str | None = None
) -> SubmitEnvironment:
    """The environment of this process, recorded for the job: ``python`` (default sys.executable), conda
    (``CONDA_PREFIX``: its ``conda activate``, with conda's shell hook first since batch shells are not
    interactive), then a virtualenv (``VIRTUAL_ENV``, else the interpreter's own ``bin/activate``)."""
    environ = os.environ if environ is None else environ
    python = str(Path(python or sys.executable).absolute())
    lines = []
    conda_prefix = environ.get("CONDA_PREFIX")
    if conda_prefix:
        conda = environ.get("CONDA_EXE") or "conda"
        lines += [f'eval "$({shlex.quote(conda)} shell.bash hook)"', f"conda activate {shlex.quote(conda_prefix)}"]
    venv = environ.get("VIRTUAL_ENV")
    activate = Path(venv) / "bin" / "activate" if venv else Path(python).parent / "activate"
    if activate.is_file():
        lines.append(f"source {shlex.quote(str(activate))}")
    return SubmitEnvironment(python, tuple(lines), str(Path(workdir or os.getcwd()).absolute()))


@dataclass(frozen=True)
class Task:
    """One array task: a Python script and its arguments, and a name for the log."""

    name: str
    script: str
    argv: tuple[str, ...]


def array_spec(n_tasks: int, max_parallel: int | None) -> str:
    return f"0-{n_tasks - 1}" + (f"%{max_parallel}" if max_parallel else "")


def launch_prefix(launcher: str, gpus: int, accelerate_config: str | None) -> list[str]:
    """The words before the script: the recorded interpreter, through accelerate's launcher if asked."""
    if launcher not in LAUNCHERS:
        raise IpoError(f"unknown launcher {launcher!r}; one of {', '.join(LAUNCHERS)}")
    if launcher == "python":
        if accelerate_config:
            raise IpoError("--accelerate_config needs the accelerate launcher")
        return ['"$PYTHON"']
    words = ['"$PYTHON"', "-m", "accelerate.commands.launch", "--main_process_port", '"$MAIN_PROCESS_PORT"']
    words += ["--num_processes", str(max(gpus, 1))]
    if accelerate_config:
        words += ["--config_file", shlex.quote(str(Path(accelerate_config).absolute()))]
    return words


def array_script(
    options: SlurmOptions,
    environment: SubmitEnvironment,
    tasks: Sequence[Task],
    launcher: str = "python",
    accelerate_config: str | None = None,
    header: str = "",
) -> str:
    """The sbatch script of ``tasks`` (the module docstring says what each task does)."""
    if not tasks:
        raise IpoError("no task to submit")
    prefix = " ".join(launch_prefix(launcher, options.gpus_per_task, accelerate_config))
    lines = ["#!/bin/bash"] + [f"# {line}" for line in header.splitlines()]
    lines += [
        f"#SBATCH --job-name={options.job_name}",
        f"#SBATCH --array={array_spec(len(tasks), options.max_parallel)}",
        f"#SBATCH --output={Path(options.log_dir).absolute()}/%x-%A_%a.out",
        "#SBATCH --open-mode=append",
        "#SBATCH --requeue",
        f"#SBATCH --signal=B:USR1@{options.signal_seconds}",
        "#SBATCH --nodes=1",
        "#SBATCH --ntasks=1",
        f"#SBATCH --cpus-per-task={options.cpus_per_task}",
        f"#SBATCH --time={options.time}",
    ]
    if options.mem:
        lines.append(f"#SBATCH --mem={options.mem.upper()}")
    if options.gres:
        lines.append(f"#SBATCH --gres={options.gres}")
    elif options.gpus_per_task:
        lines.append(f"#SBATCH --gpus-per-task={options.gpus_per_task}")
    lines += [
        f"#SBATCH --{name}={value}"
        for name, value in (("partition", options.partition), ("account", options.account))
        if value
    ]
    lines += [f"#SBATCH {option}" for option in options.extra]
    lines += [
        "",
        f"cd {shlex.quote(environment.workdir)} || exit 1  # where the job was planned: relative paths start here",
        "# The environment the job was submitted from (before set -u: activation scripts read unset variables):",
        *environment.activate,
        "set -uo pipefail",
        f"PYTHON={shlex.quote(environment.python)}",
        'TASK_ID="${SLURM_ARRAY_TASK_ID:?not an array task}"',
        "# A port of its own per task (accelerate / torch.distributed), so tasks sharing a node never collide.",
        f"export MAIN_PROCESS_PORT=$(( {PORT_BASE} + (${{SLURM_ARRAY_JOB_ID:-0}} + TASK_ID) % {PORT_SPAN} ))",
        'export MASTER_PORT="$MAIN_PROCESS_PORT"',
        'case "$TASK_ID" in',
    ]
    for index, task in enumerate(tasks):
        words = " ".join(shlex.quote(word) for word in (task.script, *task.argv))
        lines.append(f"  {index}) TASK_NAME={shlex.quote(task.name)}; TASK=({words}) ;;")
    lines += [
        '  *) echo "no task $TASK_ID in this array" >&2; exit 1 ;;',
        "esac",
        "",
        "# SIGUSR1 comes before the time limit (--signal): stop the task, let it exit, then requeue it.",
        'STOPPING=0; CHILD=""',
        "stop_and_requeue() {",
        "  STOPPING=1",
        '  echo "[slurm] SIGUSR1: time limit near; stopping $TASK_NAME (task $TASK_ID) to requeue it" >&2',
        '  [ -n "$CHILD" ] && { kill -TERM -- "-$CHILD" 2>/dev/null || kill -TERM "$CHILD" 2>/dev/null; }',
        "}",
        "trap stop_and_requeue USR1",
        'echo "[slurm] task $TASK_ID: $TASK_NAME on $(hostname), port $MAIN_PROCESS_PORT, python $PYTHON,'
        ' restart ${SLURM_RESTART_COUNT:-0}"',
        f'setsid --wait {prefix} "${{TASK[@]}}" &  # its own process group, so a stop reaches every process it starts',
        "CHILD=$!",
        "while :; do",
        '  wait "$CHILD"; STATUS=$?',
        '  kill -0 "$CHILD" 2>/dev/null || break  # else the wait was cut short by the trap: wait again',
        "done",
        'if [ "$STOPPING" = 1 ]; then',
        '  echo "[slurm] $TASK_NAME stopped (exit $STATUS); requeueing job $SLURM_JOB_ID" >&2',
        '  scontrol requeue "$SLURM_JOB_ID"',
        "  exit 0",
        "fi",
        'exit "$STATUS"',
        "",
    ]
    return "\n".join(lines)


def submit(script: str | os.PathLike) -> str:
    """Run ``sbatch script`` (from the current folder) and return what it printed ("Submitted batch job N")."""
    try:
        done = subprocess.run(["sbatch", str(script)], capture_output=True, text=True)
    except FileNotFoundError:
        raise IpoError(f"sbatch is not on PATH: submit {script} from a SLURM login node")
    if done.returncode != 0:
        raise IpoError(f"sbatch {script} failed (exit {done.returncode}): {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout.strip()
