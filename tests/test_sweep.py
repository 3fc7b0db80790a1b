"""DPO/sweep.py: a 2 x 2 grid runs locally (one folder per point, summary table, finished points skipped on
re-run), the SLURM array script renders, bad flags stop the sweep before any point runs."""

from __future__ import annotations

import json
import math
import sys

import pytest
from helpers import run_script, write_jsonl
from test_train_preferences import pairs

SCRIPT = "DPO/sweep.py"
POINTS = [
    "loss_type-sigmoid__beta-0.1",
    "loss_type-sigmoid__beta-0.5",
    "loss_type-ipo_sum__beta-0.1",
    "loss_type-ipo_sum__beta-0.5",
]


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sweep")
    data = write_jsonl(folder / "pairs.jsonl", pairs(8))
    recipe = folder / "grid.yaml"
    recipe.write_text(
        f"dataset: {data}\nlearning_rate: 5.0e-3\nper_device_train_batch_size: 4\nlora_r: 8\n"
        "lora_alpha: 16\nwarmup_ratio: 0\nlogging_steps: 1\n"
        "sweep:\n  loss_type: [sigmoid, ipo_sum]\n  beta: [0.1, 0.5]\n"
    )
    return folder, recipe


def test_local_two_by_two(grid, tiny_model_dir, capsys, monkeypatch):
    folder, recipe = grid
    argv = [
        "--config",
        str(recipe),
        "--output_dir",
        str(folder / "out"),
        "--model_name_or_path",
        str(tiny_model_dir),
        "--max_steps",
        "1",
    ]
    assert run_script(SCRIPT, argv) == 0
    root = folder / "out" / "grid"
    rows = json.loads((root / "sweep_summary.json").read_text())
    assert [row["point"] for row in rows] == POINTS
    assert [(row["loss_type"], row["beta"]) for row in rows] == [
        ("sigmoid", 0.1),
        ("sigmoid", 0.5),
        ("ipo_sum", 0.1),
        ("ipo_sum", 0.5),
    ]
    for row in rows:
        assert row["status"] == "done" and row["steps"] == 1 and math.isfinite(row["final_loss"])
        config = json.loads((root / row["point"] / "dpo_config.json").read_text())
        assert config["loss_type"] == [row["loss_type"]] and config["beta"] == row["beta"]  # the point's values
    # one step from a zero adapter: the loss at margin 0, which depends on the point's loss and beta
    assert [round(row["final_loss"], 4) for row in rows] == [0.6931, 0.6931, 25.0, 1.0]
    markdown = (root / "sweep_summary.md").read_text()
    assert markdown.count("| done |") == 4 and "| loss_type-ipo_sum__beta-0.5 | ipo_sum | 0.5 | 1 |" in markdown
    # re-run: every point is finished, nothing is trained again
    stamps = {p: (root / p / "train_summary.json").stat().st_mtime_ns for p in POINTS}
    capsys.readouterr()
    from ipo.training import figures

    drawn = []
    monkeypatch.setattr(figures, "save_figure", lambda fig, path: drawn.append(fig))
    assert run_script(SCRIPT, argv) == 0
    # sweep_summary.png names the sweep and its model
    assert drawn[0]._suptitle.get_text() == f"sweep grid: {tiny_model_dir.name}: 4 of 4 points"
    assert capsys.readouterr().err.count("already done") == 4
    assert {p: (root / p / "train_summary.json").stat().st_mtime_ns for p in POINTS} == stamps


def test_slurm_script_renders(grid, tmp_path, capsys):
    folder, recipe = grid
    argv = [
        "--config",
        str(recipe),
        "--output_dir",
        str(tmp_path),
        "--model_name_or_path",
        "org/model",
        "--slurm",
        "--accelerate_config",
        "recipes/accelerate_configs/ddp.yaml",
        "--gpus_per_task",
        "4",
        "--max_parallel",
        "2",
        "--partition",
        "gpu",
        "--account=proj",
    ]
    assert run_script(SCRIPT, argv) == 0
    script = (tmp_path / "grid" / "sweep.sbatch").read_text()
    assert script.startswith("#!/bin/bash") and (tmp_path / "grid" / "logs").is_dir()
    for line in (
        "#SBATCH --array=0-3%2",
        "#SBATCH --requeue",
        f"#SBATCH --output={tmp_path}/grid/logs/%x-%A_%a.out",
        "#SBATCH --signal=B:USR1@300",
        "#SBATCH --gpus-per-task=4",
        "#SBATCH --mem=64G",
        "#SBATCH --partition=gpu",
        "#SBATCH --account=proj",
        f"PYTHON={sys.executable}",  # the interpreter this sweep ran under, by its full path
    ):
        assert line in script.splitlines(), line
    launch = next(line for line in script.splitlines() if line.startswith("setsid"))
    assert (
        launch.startswith(
            'setsid --wait "$PYTHON" -m accelerate.commands.launch --main_process_port "$MAIN_PROCESS_PORT" '
            "--num_processes 4 --config_file "
        )
        and "recipes/accelerate_configs/ddp.yaml" in launch
    )
    tasks = [line for line in script.splitlines() if line.strip()[:2] in {"0)", "1)", "2)", "3)"}]
    assert len(tasks) == 4
    for index, (task, point) in enumerate(zip(tasks, POINTS)):
        loss, beta = point.split("__")[0].split("-")[1], point.split("__")[1].split("-")[1]
        assert task.strip().startswith(f"{index}) TASK_NAME={point}; TASK=(")
        assert "DPO/train_preferences.py --config" in task
        assert f"--loss_type {loss} --beta {beta} --model_name_or_path org/model" in task
        assert f"--output_dir {tmp_path}/grid --run_name {point}" in task
    assert not any((tmp_path / "grid" / p).exists() for p in POINTS)  # nothing ran
    capsys.readouterr()
    assert run_script(SCRIPT, argv[:6] + ["--slurm", "--dry_run"]) == 0
    assert "#SBATCH --array=0-3\n" in capsys.readouterr().out


def test_dry_run_and_bad_flags(grid, tmp_path, capsys):
    folder, recipe = grid
    base = ["--config", str(recipe), "--output_dir", str(tmp_path), "--model_name_or_path", "org/model"]
    assert run_script(SCRIPT, base + ["--dry_run"]) == 0
    commands = capsys.readouterr().out.strip().splitlines()
    assert len(commands) == 4 and all("DPO/train_preferences.py" in c for c in commands)
    for bad in (["--max_stepz", "1"], ["--loss_type", "dpo"]):  # caught before any point runs
        assert run_script(SCRIPT, base + bad) == 1
        err = capsys.readouterr().err
        assert "rejects its arguments" in err and ("max_stepz" in err or "'dpo'" in err)
        assert err.startswith("train_preferences.py: error: ")  # named as the parser that refused it
    with pytest.raises(SystemExit):
        run_script(SCRIPT, base + ["--run_name", "x"])  # set per point by the sweep
    no_grid = tmp_path / "single.yaml"
    no_grid.write_text("beta: 0.1\n")
    assert run_script(SCRIPT, ["--config", str(no_grid)]) == 1
    assert not list(tmp_path.glob("*/sweep_summary.json"))
