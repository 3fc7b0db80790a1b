"""Preference_Comparison/Reward_Bench/ours.py end to end: outputs, resume after kill -9, bad input."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from helpers import REPO, rewardbench_rows, run_script, run_subprocess, write_jsonl

SCRIPT = "Preference_Comparison/Reward_Bench/ours.py"


def read_predictions(run_dir):
    return [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()]


def test_help():
    result = run_subprocess(SCRIPT, ["--help"])
    assert result.returncode == 0 and "--scoring" in result.stdout and "--hf_key" in result.stdout


def test_end_to_end_with_the_papers_flags(tiny_model_dir, rewardbench_file, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    argv = [
        "--hf_key",
        "hf_TOPSECRETTOKEN",
        "--hf_user",
        "someone",
        "--model_name",
        str(tiny_model_dir),
        "--dataset",
        str(rewardbench_file),
        "--output_dir",
        str(tmp_path),
        "--run_name",
        "r",
    ]
    assert run_script(SCRIPT, argv) == 0
    run_dir = tmp_path / "r"
    out = capsys.readouterr().out
    assert "RewardBench sections" in out and "| hep-python |" in out
    for name in (
        "config.json",
        "predictions.jsonl",
        "metrics.json",
        "results.md",
        "subset_accuracy.png",
        f"accuracy_reward-bench_yesno_{tiny_model_dir.name}.json",
    ):
        assert (run_dir / name).is_file(), name
    predictions = read_predictions(run_dir)
    assert [p["id"] for p in predictions] != [] and sorted(p["id"] for p in predictions) == list(range(1000, 1016))
    for p in predictions:
        assert set(p) == {"id", "subset", "p_yes_chosen", "p_yes_rejected", "correct", "tie", "truncated"}
        assert 0 < p["p_yes_chosen"] < 1 and p["correct"] == (p["p_yes_chosen"] > p["p_yes_rejected"])
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["n_pairs"] == 16
    assert metrics["accuracy"] == pytest.approx(sum(p["correct"] for p in predictions) / 16)
    config_text = (run_dir / "config.json").read_text()
    assert "TOPSECRET" not in config_text
    config = json.loads(config_text)
    assert config["resolved"]["yes_no_tokens"]["yes_strings"] == [" Yes"]
    assert config["args"]["scoring"] == "upstream" and config["args"]["split"] == "raw"
    upstream = json.loads((run_dir / f"accuracy_reward-bench_yesno_{tiny_model_dir.name}.json").read_text())
    assert upstream["hep-python"] == pytest.approx(100 * metrics["subsets"]["hep-python"]["accuracy"])


def test_chat_mode_and_unknown_subsets(tiny_model_dir, tmp_path):
    rows = rewardbench_rows(6, subsets=["alpacaeval-easy", "brand-new-subset"])
    path = write_jsonl(tmp_path / "rb.jsonl", rows)
    argv = [
        "--model_name",
        str(tiny_model_dir),
        "--dataset",
        str(path),
        "--output_dir",
        str(tmp_path),
        "--scoring",
        "chat",
        "--limit",
        "2",
    ]
    assert run_script(SCRIPT, argv) == 0
    run_dir = tmp_path / f"rewardbench-raw-{tiny_model_dir.name}-chat"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["n_pairs"] == 4  # --limit 2 per subset
    assert metrics["unknown_subsets"] == {"brand-new-subset": 2}
    config = json.loads((run_dir / "config.json").read_text())
    assert len(config["resolved"]["yes_no_tokens"]["yes_ids"]) >= 2


def test_resume_after_kill_minus_9(tiny_model_dir, tmp_path):
    rows = rewardbench_rows(300)
    data = write_jsonl(tmp_path / "rb.jsonl", rows)
    argv = [
        "--model_name",
        str(tiny_model_dir),
        "--dataset",
        str(data),
        "--output_dir",
        str(tmp_path),
        "--run_name",
        "killed",
        "--batch_size",
        "1",
        "--no_prefix_sharing",
        "--log_level",
        "error",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(
        [sys.executable, str(REPO / SCRIPT), *argv],
        env=env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    predictions = tmp_path / "killed" / "predictions.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline:
        if predictions.exists() and predictions.read_text().count("\n") >= 20:
            break
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done_before = predictions.read_text().count("\n")
    assert 20 <= done_before < 300, "the run was not interrupted part-way"
    with open(predictions, "a") as handle:
        handle.write('{"id": 99999, "subset": "x", "p_yes_cho')  # as if killed mid-write
    # Resume with the same command, then compare with an uninterrupted run.
    assert run_script(SCRIPT, argv) == 0
    resumed = read_predictions(tmp_path / "killed")
    assert sorted(p["id"] for p in resumed) == [r["id"] for r in rows]  # nothing lost, nothing twice
    fresh_argv = [a if a != "killed" else "fresh" for a in argv]
    assert run_script(SCRIPT, fresh_argv) == 0
    fresh = {p["id"]: p for p in read_predictions(tmp_path / "fresh")}
    for p in resumed:
        assert p["p_yes_chosen"] == pytest.approx(fresh[p["id"]]["p_yes_chosen"], abs=1e-6)
    metrics = json.loads((tmp_path / "killed" / "metrics.json").read_text())
    assert metrics == json.loads((tmp_path / "fresh" / "metrics.json").read_text())


def test_resume_refuses_other_settings(tiny_model_dir, rewardbench_file, tmp_path, capsys):
    argv = [
        "--model_name",
        str(tiny_model_dir),
        "--dataset",
        str(rewardbench_file),
        "--output_dir",
        str(tmp_path),
        "--run_name",
        "r",
        "--limit",
        "1",
    ]
    assert run_script(SCRIPT, argv) == 0
    assert run_script(SCRIPT, argv + ["--max_length", "512"]) == 1
    assert "different settings" in capsys.readouterr().err


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing_column", "has no column 'chosen'"),
        ("not_json", "not valid JSON"),
        ("missing_file", "no such file"),
        ("empty", "empty"),
        ("unknown_split", "invalid choice: 'train'"),
        ("chat_split_yes", "single tokens"),
        ("chat_no_template", "no chat template"),
        ("bad_model", "could not load"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(
    case, message, tmp_path, tiny_model_dir, tiny_model_split_yes_dir, tiny_model_no_template_dir
):
    data = write_jsonl(tmp_path / "rb.jsonl", rewardbench_rows(4))
    model = tiny_model_dir
    extra = []
    if case == "missing_column":
        data = write_jsonl(
            tmp_path / "bad.jsonl", [{k: v for k, v in r.items() if k != "chosen"} for r in rewardbench_rows(3)]
        )
    elif case == "not_json":
        data = tmp_path / "bad.json"
        data.write_text("this is not json")
    elif case == "missing_file":
        data = tmp_path / "nope.jsonl"
    elif case == "empty":
        data = write_jsonl(tmp_path / "empty.jsonl", [])
    elif case == "unknown_split":
        extra = ["--split", "train"]
    elif case == "chat_split_yes":
        model, extra = tiny_model_split_yes_dir, ["--scoring", "chat"]
    elif case == "chat_no_template":
        model, extra = tiny_model_no_template_dir, ["--scoring", "chat"]
    elif case == "bad_model":
        model = tmp_path / "no-such-model"
    out_dir = tmp_path / "outputs"
    result = run_subprocess(
        SCRIPT,
        [
            "--model_name",
            str(model),
            "--dataset",
            str(data),
            "--output_dir",
            str(out_dir),
            *extra,
            "--log_level",
            "error",
        ],
    )
    assert result.returncode != 0
    assert result.stderr.strip().count("\n") == 0, result.stderr  # one line, no traceback
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not out_dir.exists()


@pytest.mark.smollm2
def test_smollm2_on_the_demo_data(smollm2_dir, tmp_path):
    argv = [
        "--model_name",
        str(smollm2_dir),
        "--dataset",
        str(REPO / "data/demo_rewardbench.jsonl"),
        "--output_dir",
        str(tmp_path),
        "--run_name",
        "demo",
        "--limit",
        "1",
    ]
    assert run_script(SCRIPT, argv) == 0
    metrics = json.loads((tmp_path / "demo" / "metrics.json").read_text())
    assert metrics["n_pairs"] == 20 and all(v is not None for v in metrics["sections"].values())
    config = json.loads((tmp_path / "demo" / "config.json").read_text())
    assert config["resolved"]["yes_no_tokens"]["yes_ids"] == [9230]


@pytest.mark.smollm2
def test_a_local_gguf_file_scores_as_its_converted_folder(smollm2_dir, tmp_path):
    """--model_name may be the .gguf file itself (transformers dequantises it with gguf_file=); the scores
    match the plain folder ipo.assets converted from the same file."""
    from ipo.assets import smollm2_gguf

    rows = [json.loads(line) for line in (REPO / "data/demo_rewardbench.jsonl").read_text().splitlines()[:3]]
    data = write_jsonl(tmp_path / "three.jsonl", rows)
    scores = {}
    for name, model in (("gguf", smollm2_gguf()), ("folder", smollm2_dir)):
        argv = ["--model_name", str(model), "--dataset", str(data), "--output_dir", str(tmp_path), "--run_name", name]
        assert run_script(SCRIPT, argv) == 0
        scores[name] = [p for r in read_predictions(tmp_path / name) for p in (r["p_yes_chosen"], r["p_yes_rejected"])]
    assert len(scores["gguf"]) == 6
    assert scores["gguf"] == pytest.approx(scores["folder"], abs=1e-5)
