"""ipo/slurm.py: options checked before anything is written, the submitter's environment recorded, and the
rendered script executed through fake `sbatch` / `scontrol` (tests/slurm_shims/): the recorded interpreter and
activation are used, a USR1 before the time limit stops the task, requeues it, and the rerun resumes its run
folder instead of starting over."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO, run_script

from ipo import IpoError
from ipo.slurm import SlurmOptions, SubmitEnvironment, Task, array_script, submit_environment, time_seconds

SHIMS = REPO / "tests" / "slurm_shims"
GRID = "Preference_Comparison/grid.py"


@pytest.mark.parametrize(
    "text, seconds",
    [("30", 1800), ("1:30", 90), ("02:00:00", 7200), ("1-12", 129600), ("1-0:30", 88200), ("2-03:04:05", 183845)],
)
def test_time_formats(text, seconds):
    assert time_seconds(text) == seconds


@pytest.mark.parametrize(
    "change, message",
    [
        ({"time": "2h"}, "not a SLURM time"),
        ({"time": "1:75:00"}, "below 60"),
        ({"time": "0"}, "must be positive"),
        ({"mem": "64GB"}, "not a SLURM size"),
        ({"cpus_per_task": 0}, "--cpus_per_task must be a positive integer"),
        ({"gpus_per_task": -1}, "--gpus_per_task must be 0"),
        ({"signal_seconds": 600, "time": "10"}, "not below the time limit"),
        ({"partition": "gpu a100"}, "one word"),
        ({"extra": ("qos=high",)}, "must be an sbatch option"),
    ],
)
def test_bad_options_are_one_line(change, message):
    with pytest.raises(IpoError, match=message):
        SlurmOptions(**{"job_name": "j", "log_dir": "logs", **change})


def test_environment_recorded_at_submit_time(tmp_path):
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "activate").write_text("")
    conda = {"CONDA_PREFIX": "/opt/conda/envs/ipo", "CONDA_EXE": "/opt/conda/bin/conda"}
    env = submit_environment({**conda, "VIRTUAL_ENV": str(venv)}, python="/opt/conda/envs/ipo/bin/python", workdir="/w")
    assert env.activate == (
        'eval "$(/opt/conda/bin/conda shell.bash hook)"',
        "conda activate /opt/conda/envs/ipo",
        f"source {venv}/bin/activate",
    )
    assert env.python == "/opt/conda/envs/ipo/bin/python" and env.workdir == "/w"
    # no variable set: the interpreter's own bin/activate (a venv's python run by its path), else nothing
    assert submit_environment({}, python=str(venv / "bin" / "python")).activate == (f"source {venv}/bin/activate",)
    assert submit_environment({}, python="/usr/bin/python3").activate == ()


def test_rendered_script(tmp_path):
    options = SlurmOptions(
        job_name="g",
        log_dir=str(tmp_path / "logs"),
        time="1-00:00:00",
        mem="80g",
        gpus_per_task=4,
        partition="gpu",
        account="proj",
        signal_seconds=120,
        max_parallel=2,
        extra=("--qos=high",),
    )
    environment = SubmitEnvironment("/env/bin/python", ("source /env/bin/activate",), "/work dir")
    tasks = [Task("a", "train.py", ("--beta", "0.1")), Task("b b", "train.py", ("--name", "it's"))]
    script = array_script(options, environment, tasks, "accelerate", "recipes/accelerate_configs/ddp.yaml")
    lines = script.splitlines()
    for line in (
        "#SBATCH --array=0-1%2",
        f"#SBATCH --output={tmp_path}/logs/%x-%A_%a.out",
        "#SBATCH --open-mode=append",
        "#SBATCH --requeue",
        "#SBATCH --signal=B:USR1@120",
        "#SBATCH --cpus-per-task=8",
        "#SBATCH --mem=80G",
        "#SBATCH --gpus-per-task=4",
        "#SBATCH --partition=gpu",
        "#SBATCH --account=proj",
        "#SBATCH --qos=high",
        "#SBATCH --time=1-00:00:00",
        "cd '/work dir' || exit 1  # where the job was planned: relative paths start here",
        "source /env/bin/activate",
        "PYTHON=/env/bin/python",
        "  0) TASK_NAME=a; TASK=(train.py --beta 0.1) ;;",
        "  1) TASK_NAME='b b'; TASK=(train.py --name 'it'\"'\"'s') ;;",
    ):
        assert line in lines, line
    launch = next(line for line in lines if line.startswith("setsid"))
    assert launch.startswith(
        'setsid --wait "$PYTHON" -m accelerate.commands.launch --main_process_port "$MAIN_PROCESS_PORT" '
        f"--num_processes 4 --config_file {REPO}/recipes/accelerate_configs/ddp.yaml " + '"${TASK[@]}"'
    )
    gres = array_script(SlurmOptions("g", "logs", gres="gpu:a100:1"), environment, tasks)
    assert "#SBATCH --gres=gpu:a100:1" in gres and "--gpus-per-task" not in gres
    assert 'setsid --wait "$PYTHON" "${TASK[@]}"' in gres  # the python launcher: no accelerate
    with pytest.raises(IpoError, match="needs the accelerate launcher"):
        array_script(options, environment, tasks, "python", "ddp.yaml")


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    """The shims first on PATH, their state folder, and a virtualenv shim whose activate and python record
    that they were used (the python then runs this interpreter). Shared with tests/test_grid.py."""
    state = tmp_path / "slurm_state"
    state.mkdir()
    venv = tmp_path / "venv" / "bin"
    venv.mkdir(parents=True)
    (venv / "activate").write_text(f'echo activated >> {state}/venv.log\nexport VIRTUAL_ENV="{venv.parent}"\n')
    (venv / "python").write_text(f'#!/bin/bash\necho "python $*" >> {state}/venv.log\nexec {sys.executable} "$@"\n')
    (venv / "python").chmod(0o755)
    monkeypatch.setenv("PATH", f"{SHIMS}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SLURM_DIR", str(state))
    monkeypatch.setenv("VIRTUAL_ENV", str(venv.parent))
    monkeypatch.delenv("CONDA_PREFIX", raising=False)
    monkeypatch.setattr(sys, "executable", str(venv / "python"))  # the interpreter a submitting script records
    return state


def task_runs(state: Path) -> list[dict]:
    return [json.loads(line) for line in (state / "tasks.jsonl").read_text().splitlines()]


# A resumable task without a model: appends numbers 0..N-1 to a file, one every 20 ms, going on from the last.
COUNTER = """import pathlib, sys, time
out, n = pathlib.Path(sys.argv[1]), int(sys.argv[2])
done = out.read_text().count("\\n") if out.exists() else 0
print(f"counter: resuming at {done}", flush=True)
for i in range(done, n):
    with out.open("a") as handle:
        handle.write(f"{i}\\n")
    time.sleep(0.02)
"""


def test_rendered_script_runs_in_the_submit_environment_and_resumes_after_usr1(fake_slurm, tmp_path, monkeypatch):
    counter = tmp_path / "counter.py"
    counter.write_text(COUNTER)
    logs = tmp_path / "logs"
    logs.mkdir()
    tasks = [
        Task("first", str(counter), (str(tmp_path / "a.txt"), "60")),
        Task("second", str(counter), (str(tmp_path / "b.txt"), "3")),
    ]
    script = tmp_path / "job.sbatch"
    options = SlurmOptions("job", str(logs), time="10", signal_seconds=60, gpus_per_task=0)
    script.write_text(array_script(options, submit_environment(workdir=str(tmp_path)), tasks))
    monkeypatch.setenv("FAKE_SLURM_USR1", f"0:{tmp_path / 'a.txt'}:5")
    done = subprocess.run(["sbatch", str(script)], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "Submitted batch job 1000", done.stderr
    runs = [(r["task"], r["job_id"], r["restart"], r["status"]) for r in task_runs(fake_slurm)]
    assert runs == [(0, 1001, 0, 0), (0, 1001, 1, 0), (1, 1002, 0, 0)]  # task 0 stopped, requeued, rerun
    assert (fake_slurm / "requeue").read_text() == ""  # the controller consumed the one request
    first = (logs / "job-1000_0.out").read_text()
    assert "SIGUSR1: time limit near; stopping first (task 0)" in first and "requeueing job 1001" in first
    starts = [int(line.split()[-1]) for line in first.splitlines() if line.startswith("counter: resuming at")]
    assert starts[0] == 0 and 5 <= starts[1] < 60, first  # the rerun went on where the stopped run was
    assert (tmp_path / "a.txt").read_text().split() == [str(i) for i in range(60)]  # extended, not restarted
    assert (tmp_path / "b.txt").read_text().split() == ["0", "1", "2"]
    # a port of its own per task, from the array job id and the task id; cd to the submit folder
    ports = {}
    for task in (0, 1):
        log = (logs / f"job-1000_{task}.out").read_text()
        ports[task] = {int(line.split("port ")[1].split(",")[0]) for line in log.splitlines() if "[slurm] task" in line}
    assert ports == {0: {20000 + 1000 % 10000}, 1: {20000 + 1001 % 10000}}
    # the submitter's virtualenv was activated and its python ran every task (three runs)
    venv_log = (fake_slurm / "venv.log").read_text().splitlines()
    assert venv_log.count("activated") == 3
    assert sum(line.startswith(f"python {counter}") for line in venv_log) == 3


def test_bad_slurm_flag_is_one_line_before_anything_is_written(tmp_path, capsys):
    grid_file = tmp_path / "g.yaml"
    grid_file.write_text("models: [org/model]\njudges: [ipo]\nbenchmarks: [rewardbench]\n")
    for bad, message in ((["--time", "3 days"], "not a SLURM time"), (["--mem", "lots"], "not a SLURM size")):
        assert run_script(GRID, ["--config", str(grid_file), "--output_dir", str(tmp_path), "--slurm", *bad]) == 1
        assert message in capsys.readouterr().err
    assert not (tmp_path / "g").exists()


def test_accelerate_launcher_runs_with_the_task_port(fake_slurm, tmp_path):
    counter = tmp_path / "counter.py"
    counter.write_text(COUNTER)
    script = tmp_path / "job.sbatch"
    options = SlurmOptions("acc", str(tmp_path), time="10", signal_seconds=60, gpus_per_task=0)
    tasks = [Task("only", str(counter), (str(tmp_path / "c.txt"), "3"))]
    script.write_text(array_script(options, submit_environment(workdir=str(tmp_path)), tasks, "accelerate"))
    done = subprocess.run(["sbatch", str(script)], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    log = (tmp_path / "acc-1000_0.out").read_text()
    assert done.returncode == 0 and task_runs(fake_slurm)[0]["status"] == 0, log[-2000:]
    assert (tmp_path / "c.txt").read_text().split() == ["0", "1", "2"]
    venv_log = (fake_slurm / "venv.log").read_text()
    assert (
        f"python -m accelerate.commands.launch --main_process_port {20000 + 1000} --num_processes 1 {counter}"
        in venv_log
    )
