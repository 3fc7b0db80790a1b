"""Data-parallel scoring (ipo/parallel.py): several processes split a benchmark's examples, the main one merges
their part files and writes; the result equals one process's, a run resumes with another number of processes,
and a refusal on one process stops them all before any model loads."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from helpers import REPO, run_script, write_jsonl

from ipo import IpoError
from ipo.modeling import ModelSpec
from ipo.parallel import Ranks, check_on_every_process, merge_parts, part_path, run_sharded
from ipo.runs import RecordLog, lock_folder, release_locks

OURS = "Preference_Comparison/Reward_Bench/ours.py"


def by_id(path) -> dict:
    return {json.loads(line)["id"]: json.loads(line) for line in path.read_text().splitlines()}


def torchrun(n: int, argv: list[str], cwd) -> subprocess.CompletedProcess:
    """The script under ``torchrun --standalone --nproc_per_node n`` on CPU (gloo)."""
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n)]
    return subprocess.run(
        [*command, str(REPO / OURS), *argv], capture_output=True, text=True, env=env, cwd=cwd, timeout=600
    )


def test_two_processes_score_what_one_does_and_resume_with_another_count(tiny_model_dir, rewardbench_file, tmp_path):
    """RewardBench through torchrun with 2 CPU processes, resuming a killed run's files (its log and a part
    file of another process): the same predictions and metrics as one process, world_size in config.json, one
    writer (no part files left, results printed once); then a killed 3-process run's parts resumed by one
    process; and a folder held by another run refused on every process before any model loads."""
    argv = ["--model_name", str(tiny_model_dir), "--dataset", str(rewardbench_file), "--output_dir", str(tmp_path)]
    argv += ["--dtype", "float32", "--device", "cpu", "--log_level", "warning"]
    assert run_script(OURS, [*argv, "--run_name", "one"]) == 0
    one = tmp_path / "one"
    expected, metrics = by_id(one / "predictions.jsonl"), json.loads((one / "metrics.json").read_text())
    assert len(expected) == 16

    def killed_copy(name: str, parts: dict[int, range], kept: range) -> None:
        """``one`` as a run killed mid-way: ``kept`` records in its log, ``parts`` in other processes' files."""
        folder = tmp_path / name
        shutil.copytree(one, folder)
        (folder / "metrics.json").unlink()
        records = list(expected.values())
        write_jsonl(folder / "predictions.jsonl", [records[i] for i in kept])
        for rank, indices in parts.items():
            write_jsonl(part_path(folder / "predictions.jsonl", rank), [records[i] for i in indices])

    # A 2-process run resuming a killed one: 5 records in the log, 3 in process 1's part; 8 left to share.
    killed_copy("two", {1: range(5, 8)}, range(5))
    result = torchrun(2, [*argv, "--run_name", "two"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    two = tmp_path / "two"
    lines = (two / "predictions.jsonl").read_text().splitlines()
    assert len(lines) == len({json.loads(line)["id"] for line in lines}) == 16  # one writer, nothing twice
    assert not list(two.glob("*.rank*.jsonl"))  # the parts were merged and removed
    scored = by_id(two / "predictions.jsonl")
    for pid, record in expected.items():
        assert scored[pid]["p_yes_chosen"] == pytest.approx(record["p_yes_chosen"], abs=1e-5)
        assert scored[pid]["p_yes_rejected"] == pytest.approx(record["p_yes_rejected"], abs=1e-5)
        assert scored[pid]["correct"] == record["correct"]
    two_metrics = json.loads((two / "metrics.json").read_text())
    assert {k: v for k, v in two_metrics.items() if k != "run"} == {k: v for k, v in metrics.items() if k != "run"}
    assert json.loads((two / "config.json").read_text())["resolved"]["world_size"] == 2
    assert result.stdout.count("# IPO judge") == 1  # results printed by the main process only

    # A killed 3-process run (parts of processes 1 and 2) resumed by one process.
    killed_copy("three", {1: range(4, 9), 2: range(9, 12)}, range(4))
    assert run_script(OURS, [*argv, "--run_name", "three"]) == 0
    three = tmp_path / "three"
    assert by_id(three / "predictions.jsonl") == expected and not list(three.glob("*.rank*.jsonl"))
    assert json.loads((three / "config.json").read_text())["resolved"]["world_size"] == 1

    # Another run holds the folder: every process refuses, with the main one's line, before loading a model.
    lock_folder(two)
    try:
        (two / "predictions.jsonl").unlink()
        result = torchrun(2, [*argv, "--run_name", "two"], tmp_path)
    finally:
        release_locks()
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode != 0 and len(errors) == 2, result.stderr[-3000:]
    assert all("is in use by another run" in line for line in errors)
    assert any(line.startswith("error: process 0 refused the run:") for line in errors)
    assert not (two / "predictions.jsonl").exists()


def test_every_process_refuses_in_one_process_too():
    def refuse():
        raise IpoError("the folder is taken")

    with pytest.raises(IpoError, match="the folder is taken"):
        check_on_every_process(Ranks(), refuse)
    assert check_on_every_process(Ranks(), lambda: True) is True


def test_each_process_places_its_model_on_its_own_gpu(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    spec = ModelSpec("m", dtype="bfloat16", device="auto")
    assert Ranks(1, 4, local_index=3).place(spec) == ModelSpec("m", dtype="bfloat16", device="cuda:3")
    assert Ranks().place(spec) == spec  # one process: as asked
    assert Ranks(1, 2, 1).place(ModelSpec("m", device="cpu")).device == "cpu"


def test_sharded_stage_splits_only_what_the_log_lacks_and_merges_by_the_record_key(tmp_path):
    """RM-Bench's log is keyed by "key" (domain/id), not "id": parts merge by that key, nothing twice."""
    log_path = tmp_path / "predictions.jsonl"
    write_jsonl(log_path, [{"key": "chat/1", "id": 1}])
    write_jsonl(part_path(log_path, 2), [{"key": "code/1", "id": 1}, {"key": "chat/1", "id": 9}])
    assert merge_parts(log_path, "key") == 1 and not part_path(log_path, 2).exists()
    assert [r["key"] for r in RecordLog(log_path, key="key").records.values()] == ["chat/1", "code/1"]
    seen = []

    def work(items, log):
        seen.extend(items)
        log.append([{"key": k, "id": 0} for k in items if k not in log])

    run_sharded(Ranks(), log_path, ["chat/1", "code/1", "math/2"], work, key=lambda k: k, record_key="key")
    assert seen == ["chat/1", "code/1", "math/2"]  # one process gets every item; its log skips what it holds
    assert len(RecordLog(log_path, key="key")) == 3
    assert Ranks(1, 3).shard(["a", "b", "c", "d", "e"]) == ["b", "e"]
