"""Preference_Comparison/grid.py and ipo/grid.py: a YAML grid of models x judges x benchmarks expands into
points (script, arguments, run folder), every point's arguments pass its script's parser before anything
runs, two tiny models x two scorings run locally and through the fake SLURM (a task stopped by USR1 resumes),
finished points are skipped, and the paper's recipes expand and validate."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from helpers import REPO, read_jsonl, rewardbench_rows, run_script, save_tiny_model, write_jsonl
from test_slurm import fake_slurm, task_runs  # noqa: F401 (a fixture)

from ipo import IpoError
from ipo.grid import Point, check_points, expand, load_grid, point_done

GRID = "Preference_Comparison/grid.py"
RB = REPO / "Preference_Comparison" / "Reward_Bench"


def write_grid(path, text: str):
    path.write_text(text)
    return path


def test_expand_names_scripts_and_arguments(tmp_path):
    grid = load_grid(
        write_grid(
            tmp_path / "g.yaml",
            "name: g\nmodels:\n  - org/judge-7b\n  - {model: org/rm, name: rm, judges: ['reward_model:chat']}\n"
            "judges: [ipo, 'self_rewarding:chat', api_ipo]\nscoring: [upstream, chat]\n"
            "benchmarks: [rewardbench-filtered, rmbench]\ndata: {rmbench: [a.json, b.json]}\n"
            "settings: {limit: 3}\njudge_settings: {self_rewarding: {max_new_tokens: 50}}\n",
        )
    )
    root, points = expand(grid, "g.yaml", output_dir=str(tmp_path / "out"), extra=["--seed", "1"])
    assert root == tmp_path / "out" / "g"
    assert [p.name for p in points] == [
        "rewardbench-filtered__judge-7b__ipo-upstream",
        "rewardbench-filtered__judge-7b__ipo-chat",
        "rewardbench-filtered__judge-7b__self_rewarding-chat",
        "rewardbench-filtered__judge-7b__api_ipo-upstream",
        "rewardbench-filtered__judge-7b__api_ipo-chat",
        "rmbench__judge-7b__ipo-upstream",
        "rmbench__judge-7b__ipo-chat",
        "rmbench__judge-7b__self_rewarding-chat",
        "rmbench__judge-7b__api_ipo-upstream",
        "rmbench__judge-7b__api_ipo-chat",
        "rewardbench-filtered__rm__reward_model-chat",
        "rmbench__rm__reward_model-chat",
    ]
    by_name = {p.name: p for p in points}
    sr = by_name["rewardbench-filtered__judge-7b__self_rewarding-chat"]
    assert sr.script == RB / "self_reward.py" and sr.folder == root / sr.name
    assert sr.argv == (
        "--model_name",
        "org/judge-7b",
        "--prompt_format",
        "chat",
        "--split",
        "filtered",
        "--limit",
        "3",
        "--max_new_tokens",
        "50",
        "--seed",
        "1",
        "--output_dir",
        str(root),
        "--run_name",
        sr.name,
    )
    api = by_name["rmbench__judge-7b__api_ipo-upstream"]
    assert api.script == REPO / "Preference_Comparison" / "RM_Bench" / "ours_gpt.py"
    assert api.argv[:7] == ("--model", "org/judge-7b", "--prompt_format", "upstream", "--dataset", "a.json", "b.json")
    assert by_name["rmbench__rm__reward_model-chat"].script.name == "reward_model.py"
    limits = check_points(points)  # every script's parser accepts its point
    assert set(limits.values()) == {3}


@pytest.mark.parametrize(
    "text, message",
    [
        (
            "models: [m]\njudges: [ipo]\nbenchmarks: [rewardbench]\nsetings: {}\n",
            "unknown key 'setings' (did you mean 'settings'?)",
        ),
        ("models: [m]\njudges: [ipoo]\nbenchmarks: [rewardbench]\n", "unknown judge 'ipoo' (did you mean 'ipo'?)"),
        ("models: [m]\njudges: ['ipo:raw']\nbenchmarks: [rewardbench]\n", "unknown scoring 'raw'"),
        (
            "models: [m]\njudges: [ipo]\nbenchmarks: [rm-bench]\n",
            "unknown benchmark 'rm-bench' (did you mean 'rmbench'?)",
        ),
        (
            "models: [m]\njudges: [ipo]\nbenchmarks: [rewardbench]\nsettings: {run_name: x}\n",
            "--run_name is set per point",
        ),
        (
            "models: [m]\njudges: [ipo]\nbenchmarks: [rewardbench]\nsettings: {scoring: chat}\n",
            "--scoring is set per point",
        ),
        (
            "models: [a/m, b/m]\njudges: [ipo]\nbenchmarks: [rewardbench]\n",
            "two points named rewardbench__m__ipo-upstream",
        ),
        ("models: [m]\nbenchmarks: [rewardbench]\n", "no judges for m"),
        ("judges: [ipo]\nbenchmarks: [rewardbench]\n", "`models:` is missing"),
    ],
)
def test_bad_grids_are_one_line(tmp_path, text, message):
    with pytest.raises(IpoError, match=message.replace("(", r"\(").replace(")", r"\)").replace("?", r"\?")):
        path = write_grid(tmp_path / "g.yaml", text)
        expand(load_grid(path), str(path))


def test_a_point_its_script_rejects_stops_the_grid_before_anything_runs(tmp_path, capsys):
    path = write_grid(
        tmp_path / "g.yaml",
        "models: [m]\njudges: [ipo, self_rewarding]\nbenchmarks: [rewardbench]\n"
        "judge_settings: {ipo: {max_new_tokens: 5}}\n",
    )
    assert run_script(GRID, ["--config", str(path), "--output_dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "point rewardbench__m__ipo-upstream: Preference_Comparison/Reward_Bench/ours.py rejects its arguments" in err
    assert "max_new_tokens" in err and not (tmp_path / "g").exists()
    assert err.startswith("ours.py: error: ")  # the point's script's parser, named as such (not grid.py)
    assert run_script(GRID, ["--config", str(path), "--output_dir", str(tmp_path), "--run_name", "x"]) == 1
    assert "--run_name is set per point by the grid" in capsys.readouterr().err


def test_an_output_dir_under_a_file_is_one_line(tmp_path, capsys):
    path = write_grid(tmp_path / "g.yaml", "models: [m]\njudges: [ipo]\nbenchmarks: [rewardbench]\n")
    (tmp_path / "a_file").write_text("x")
    for extra in ([], ["--slurm"]):
        assert run_script(GRID, ["--config", str(path), "--output_dir", str(tmp_path / "a_file"), *extra]) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: the grid folder ") and "which is a file, not a folder" in err, err


def test_point_done_needs_finished_metrics_of_these_arguments(tmp_path):
    point = Point("p", "rewardbench", "ipo", "chat", "m", RB / "ours.py", ("--model_name", "m"), tmp_path / "p")
    point.folder.mkdir()

    def write(coverage, command=("ours.py", "--model_name", "m"), **metrics):
        (point.folder / "metrics.json").write_text(json.dumps({"coverage": coverage, **metrics}))
        (point.folder / "config.json").write_text(json.dumps({"command": list(command)}))

    assert not point_done(point, None)  # nothing yet
    write({"limit": None, "complete": True})
    assert point_done(point, None)
    assert not point_done(point, 5)  # a run over all the data is not the point with --limit 5
    write({"limit": 5, "complete": False})
    assert point_done(point, 5) and not point_done(point, None) and not point_done(point, 10)
    write({"limit": None, "complete": False})
    assert not point_done(point, None)  # an old run over less data
    write({"limit": None, "complete": True}, n_failed=2)
    assert not point_done(point, None)  # failed API requests to ask again
    write({"limit": None, "complete": True}, command=("ours.py", "--model_name", "other"))
    assert not point_done(point, None)  # other arguments: the script decides (resume, widen or refuse)


@pytest.mark.parametrize("recipe", ["rewardbench", "rmbench"])
def test_paper_recipes_expand_and_pass_their_scripts_parsers(recipe, tmp_path):
    path = REPO / "recipes" / "paper" / f"{recipe}.yaml"
    root, points = expand(load_grid(path), str(path), output_dir=str(tmp_path))
    models = {p.model for p in points}
    assert models == {
        "Qwen/Qwen2.5-7B-Instruct",
        "mistralai/Mistral-7B-Instruct-v0.2",
        "Skywork/Skywork-Reward-Llama-3.1-8B-v0.2",
    }
    assert {(p.method, p.scoring) for p in points} == {
        ("ipo", "upstream"),
        ("self_rewarding", "upstream"),
        ("reward_model", "chat"),
    }
    assert len(points) == 5 and root.name == f"paper-{recipe}"
    check_points(points)


@pytest.mark.smollm2
def test_demo_recipe_names_the_embedded_model(smollm2_dir, tmp_path):
    path = REPO / "recipes" / "paper" / "demo.yaml"
    root, points = expand(load_grid(path), str(path), output_dir=str(tmp_path))
    assert [p.name for p in points] == [
        "rewardbench__SmolLM2-135M-Instruct__ipo-upstream",
        "rewardbench__SmolLM2-135M-Instruct__ipo-chat",
    ]
    assert all(p.model == str(smollm2_dir) and "data/demo_rewardbench.jsonl" in p.argv for p in points)
    check_points(points)


@pytest.fixture(scope="module")
def second_tiny_model_dir(tmp_path_factory):
    """Another random tiny Llama (other weights), so the two models' scores differ."""
    return save_tiny_model(tmp_path_factory.mktemp("tiny_b") / "model", seed=1)


def test_grid_locally_then_through_slurm(
    fake_slurm,  # noqa: F811 (the fixture imported from test_slurm)
    tiny_model_dir,
    second_tiny_model_dir,
    tmp_path,
    monkeypatch,
    capsys,
):
    """Model a's two scorings run locally; the grid of a and b then goes to the fake SLURM, which gets only
    b's two points; b's first task is stopped by USR1, requeued and resumed; a rerun skips all four."""
    data = write_jsonl(tmp_path / "rb.jsonl", rewardbench_rows(60))
    common = "judges: [ipo]\nscoring: [upstream, chat]\nbenchmarks: [rewardbench]\n"
    common += f"data: {{rewardbench: {data}}}\nsettings: {{batch_size: 1, dtype: float32}}\nname: g\n"
    model_a = f"  - {{model: {tiny_model_dir}, name: a}}\n"
    only_a = write_grid(tmp_path / "a.yaml", "models:\n" + model_a + common)
    both = write_grid(
        tmp_path / "ab.yaml", "models:\n" + model_a + f"  - {{model: {second_tiny_model_dir}, name: b}}\n" + common
    )
    out = tmp_path / "out"
    root = out / "g"

    assert run_script(GRID, ["--config", str(only_a), "--output_dir", str(out)]) == 0
    assert "collect: python Preference_Comparison/collect.py" in capsys.readouterr().out

    monkeypatch.setenv("FAKE_SLURM_USR1", f"0:{root / 'rewardbench__b__ipo-upstream' / 'predictions.jsonl'}:5")
    argv = ["--config", str(both), "--output_dir", str(out), "--slurm", "--submit", "--gpus_per_task", "0"]
    assert run_script(GRID, argv + ["--time", "20", "--mem", "4G"]) == 0
    assert "Submitted batch job 1000" in capsys.readouterr().out
    assert "#SBATCH --array=0-1\n" in (root / "grid.sbatch").read_text()  # a's points were done: not submitted
    runs = [(r["task"], r["restart"], r["status"]) for r in task_runs(fake_slurm)]
    assert runs == [(0, 0, 0), (0, 1, 0), (1, 0, 0)]
    log = (root / "logs" / "g-1000_0.out").read_text()
    assert "stopping rewardbench__b__ipo-upstream" in log and "requeueing job 1001" in log
    resumed = [int(line.split("resuming: ")[1].split()[0]) for line in log.splitlines() if "resuming: " in line]
    assert len(resumed) == 1 and 5 <= resumed[0] < 60, log[-2000:]
    # the activated virtualenv's python ran both local points and all three task runs
    venv_log = (fake_slurm / "venv.log").read_text().splitlines()
    assert venv_log.count("activated") == 3 and sum("Reward_Bench/ours.py" in line for line in venv_log) == 5

    predictions = {}
    for model, path in (("a", tiny_model_dir), ("b", second_tiny_model_dir)):
        for scoring in ("upstream", "chat"):
            folder = root / f"rewardbench__{model}__ipo-{scoring}"
            config = json.loads((folder / "config.json").read_text())
            assert (config["args"]["model_name"], config["args"]["scoring"]) == (str(path), scoring)
            assert json.loads((folder / "metrics.json").read_text())["coverage"]["complete"] is True
            records = read_jsonl(folder / "predictions.jsonl")
            assert sorted(r["id"] for r in records) == list(range(1000, 1060))  # resumed runs: no duplicate
            predictions[model, scoring] = {r["id"]: r["p_yes_chosen"] for r in records}
    # four different judges: other weights or another prompt give other scores
    assert len({tuple(sorted(p.items())) for p in predictions.values()}) == 4

    stamps = {f: f.stat().st_mtime_ns for f in root.glob("*/metrics.json")}
    capsys.readouterr()
    assert run_script(GRID, ["--config", str(both), "--output_dir", str(out)]) == 0
    assert capsys.readouterr().err.count("already done, skipped") == 4
    assert {f: f.stat().st_mtime_ns for f in root.glob("*/metrics.json")} == stamps
    statuses = {row["point"]: row["status"] for row in json.loads((root / "grid.json").read_text())}
    assert set(statuses.values()) == {"skipped (done before)"} and len(statuses) == 4

    # the grid's folder is what the collector reads: its four runs become rows of the paper's RewardBench
    # table, each category the run's own accuracy, not compared with the paper (60 pairs, not 5,123)
    assert run_script("Preference_Comparison/collect.py", [str(root), "--output_dir", str(tmp_path / "tables")]) == 0
    with open(tmp_path / "tables" / "paper_tables.csv", newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row["table"] == "rewardbench" and row["run"]]
    assert {row["run"] for row in rows} == {str(f.parent) for f in stamps}
    for row in rows:
        if row["column"] == "Chat":
            categories = json.loads((Path(row["run"]) / "metrics.json").read_text())["categories"]
            assert float(row["reproduced"]) == pytest.approx(100 * categories["chat"], abs=0.01)
            assert row["comparable"] == "false" and row["scoring"] in ("upstream", "chat")
