"""Preference_Comparison/Reward_Bench/reward_model.py and self_reward.py end to end: outputs, resume, bad input."""

import json

import pytest
from helpers import (
    BAD_REWARDBENCH_FILES,
    REPO,
    bad_rewardbench_file,
    rewardbench_rows,
    run_script,
    run_subprocess,
    write_jsonl,
)

RM_SCRIPT = "Preference_Comparison/Reward_Bench/reward_model.py"
SELF_SCRIPT = "Preference_Comparison/Reward_Bench/self_reward.py"


def read_predictions(run_dir):
    return [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()]


@pytest.mark.parametrize(
    "script, flags",
    [(RM_SCRIPT, ["--input_format", "--set_name"]), (SELF_SCRIPT, ["--scoring", "--max_new_tokens", "--set_name"])],
)
def test_help(script, flags):
    result = run_subprocess(script, ["--help"])
    assert result.returncode == 0 and "--hf_key" in result.stdout and "--quantized" in result.stdout
    assert all(flag in result.stdout for flag in flags)
    assert "--no_prefix_sharing" not in result.stdout  # no flag that would do nothing here


# ---------------------------------------------------------------------------------------------------
# reward_model.py
# ---------------------------------------------------------------------------------------------------
def test_reward_model_end_to_end_with_the_papers_flags(
    tiny_reward_model_dir, rewardbench_file, tmp_path, capsys, monkeypatch
):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    argv = [
        "--hf_key",
        "hf_TOPSECRETTOKEN",
        "--hf_user",
        "someone",
        "--model_name",
        str(tiny_reward_model_dir),
        "--set_name",
        "safety",
        "--dataset",
        str(rewardbench_file),
        "--output_dir",
        str(tmp_path),
    ]
    assert run_script(RM_SCRIPT, argv) == 0
    run_dir = tmp_path / f"rewardbench-raw-{tiny_reward_model_dir.name}-rm-upstream-safety"
    assert "| refusals-dangerous |" in capsys.readouterr().out
    upstream_file = f"accuracy_reward-bench_norm_{tiny_reward_model_dir.name}.json"
    for name in (
        "config.json",
        "predictions.jsonl",
        "metrics.json",
        "results.md",
        "subset_accuracy.png",
        upstream_file,
    ):
        assert (run_dir / name).is_file(), name
    predictions = read_predictions(run_dir)
    # rewardbench_rows cycles 8 subsets over 16 rows; 3 of them are in the paper's safety category
    assert {p["subset"] for p in predictions} == {"refusals-dangerous", "xstest-should-respond", "donotanswer"}
    assert len(predictions) == 6
    for p in predictions:
        assert set(p) == {"id", "subset", "score_chosen", "score_rejected", "correct", "tie", "truncated"}
        assert p["correct"] == (p["score_chosen"] > p["score_rejected"])
    assert any(abs(p["score_chosen"]) > 1 for p in predictions) or any(
        p["score_chosen"] < 0 for p in predictions
    )  # raw logits
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["n_pairs"] == 6 and metrics["n_ties"] == sum(p["tie"] for p in predictions)
    upstream = json.loads((run_dir / upstream_file).read_text())
    assert upstream["donotanswer"] == pytest.approx(100 * metrics["subsets"]["donotanswer"]["accuracy"])  # percent
    config_text = (run_dir / "config.json").read_text()
    assert "TOPSECRET" not in config_text and json.loads(config_text)["args"]["input_format"] == "upstream"


def test_reward_model_chat_format_and_resume(tiny_reward_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "rb.jsonl", rewardbench_rows(24))
    argv = [
        "--model_name",
        str(tiny_reward_model_dir),
        "--dataset",
        str(data),
        "--output_dir",
        str(tmp_path),
        "--run_name",
        "r",
        "--input_format",
        "chat",
        "--batch_size",
        "4",
    ]
    assert run_script(RM_SCRIPT, argv) == 0
    complete = read_predictions(tmp_path / "r")
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    # As if killed: keep 10 records and half of the 11th.
    lines = (tmp_path / "r" / "predictions.jsonl").read_text().splitlines(keepends=True)
    (tmp_path / "r" / "predictions.jsonl").write_text("".join(lines[:10]) + lines[10][:25])
    assert run_script(RM_SCRIPT, argv) == 0
    resumed = read_predictions(tmp_path / "r")
    assert sorted(p["id"] for p in resumed) == sorted(p["id"] for p in complete)  # nothing lost or twice
    by_id = {p["id"]: p for p in complete}
    for p in resumed:
        assert p["score_chosen"] == pytest.approx(by_id[p["id"]]["score_chosen"], abs=1e-5)
    assert json.loads((tmp_path / "r" / "metrics.json").read_text()) == metrics


# ---------------------------------------------------------------------------------------------------
# self_reward.py
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("scoring", ["upstream", "chat"])
def test_self_reward_end_to_end(tiny_model_dir, rewardbench_file, tmp_path, capsys, scoring):
    argv = [
        "--hf_key",
        "hf_TOPSECRET",
        "--model_name",
        str(tiny_model_dir),
        "--dataset",
        str(rewardbench_file),
        "--output_dir",
        str(tmp_path),
        "--set_name",
        "set1",
        "--scoring",
        scoring,
        "--max_new_tokens",
        "8",
    ]
    assert run_script(SELF_SCRIPT, argv) == 0
    run_dir = tmp_path / f"rewardbench-raw-{tiny_model_dir.name}-self-{scoring}-set1"
    assert "Parse failures:" in capsys.readouterr().out
    upstream_file = f"accuracy_reward-bench_self_{tiny_model_dir.name}-set1.json"
    for name in ("config.json", "predictions.jsonl", "metrics.json", "results.md", upstream_file):
        assert (run_dir / name).is_file(), name
    predictions = read_predictions(run_dir)
    assert {p["subset"] for p in predictions} == {"math-prm", "hep-python", "alpacaeval-easy", "refusals-dangerous"}
    for p in predictions:
        assert set(p) >= {
            "score_chosen",
            "score_rejected",
            "correct",
            "tie",
            "parse_failed_chosen",
            "parse_failed_rejected",
            "generated_chosen",
            "generated_rejected",
            "truncated",
        }
        if scoring == "chat":
            assert p["parse_failed_chosen"] == (p["score_chosen"] is None)
        else:
            assert p["parse_failed_chosen"] == (p["score_chosen"] == 0)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    failures = sum(p["parse_failed_chosen"] + p["parse_failed_rejected"] for p in predictions)
    assert metrics["n_parse_failures"] == failures and metrics["parse_failure_rate"] == failures / (
        2 * len(predictions)
    )
    config = json.loads((run_dir / "config.json").read_text())
    assert config["resolved"]["decoding"] == "greedy" and "TOPSECRET" not in json.dumps(config)


def test_self_reward_counts_failures_as_wrong_and_reports_them(tiny_model_dir, tmp_path, monkeypatch):
    """Scripted judge replies: a chat-mode parse failure loses the pair, and the report says so."""
    from ipo.judges import self_reward

    replies = {1000: [(5, False), (None, True)], 1001: [(3, False), (3, False)], 1002: [(None, True), (2, False)]}

    def fake_score(self, examples):
        yield [
            (
                e,
                [score for score, _ in replies[e.id]],
                {"generated": ["..."] * 2, "parse_failed": [failed for _, failed in replies[e.id]], "truncated": False},
            )
            for e in examples
        ]

    monkeypatch.setattr(self_reward.SelfRewardScorer, "score", fake_score)
    data = write_jsonl(tmp_path / "rb.jsonl", rewardbench_rows(3))
    argv = [
        "--model_name",
        str(tiny_model_dir),
        "--dataset",
        str(data),
        "--output_dir",
        str(tmp_path),
        "--run_name",
        "r",
        "--scoring",
        "chat",
    ]
    assert run_script(SELF_SCRIPT, argv) == 0
    predictions = {p["id"]: p for p in read_predictions(tmp_path / "r")}
    assert [predictions[i]["correct"] for i in (1000, 1001, 1002)] == [False, False, False]
    assert [predictions[i]["tie"] for i in (1000, 1001, 1002)] == [False, True, False]
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert metrics["accuracy"] == 0 and metrics["n_ties"] == 1 and metrics["n_parse_failures"] == 2
    assert metrics["pairs_with_parse_failure"] == 2 and metrics["accuracy_excluding_parse_failures"] == 0.0
    assert "Parse failures: 2 of 6 judgements" in (tmp_path / "r" / "results.md").read_text()


def test_self_reward_resume(tiny_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "rb.jsonl", rewardbench_rows(12))
    argv = [
        "--model_name",
        str(tiny_model_dir),
        "--dataset",
        str(data),
        "--output_dir",
        str(tmp_path),
        "--run_name",
        "r",
        "--max_new_tokens",
        "6",
        "--batch_size",
        "2",
    ]
    assert run_script(SELF_SCRIPT, argv) == 0
    complete = {p["id"]: p for p in read_predictions(tmp_path / "r")}
    lines = (tmp_path / "r" / "predictions.jsonl").read_text().splitlines(keepends=True)
    (tmp_path / "r" / "predictions.jsonl").write_text("".join(lines[:5]) + lines[5][:30])
    assert run_script(SELF_SCRIPT, argv) == 0
    resumed = read_predictions(tmp_path / "r")
    assert sorted(p["id"] for p in resumed) == sorted(complete)
    assert all(p == complete[p["id"]] for p in resumed)  # greedy: the same judgements again
    assert run_script(SELF_SCRIPT, argv + ["--max_new_tokens", "7"]) == 1  # a result-affecting change is refused


# ---------------------------------------------------------------------------------------------------
# Bad input: one line, non-zero exit, nothing written
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "script, case, message",
    [
        *[(RM_SCRIPT, case, message) for case, message in BAD_REWARDBENCH_FILES.items()],
        (RM_SCRIPT, "unknown_split", "invalid choice: 'train'"),
        (RM_SCRIPT, "unknown_set", "invalid choice: 'set1'"),
        (RM_SCRIPT, "set_not_in_data", "no pairs in the subsets of --set_name math"),
        (RM_SCRIPT, "two_labels", "2-label head"),
        (RM_SCRIPT, "causal_lm", "is not a trained sequence-classification reward model"),
        (RM_SCRIPT, "chat_no_template", "no chat template"),
        (RM_SCRIPT, "bad_model", "could not load"),
        (RM_SCRIPT, "zero_length", "--max_length must be positive"),
        *[(SELF_SCRIPT, case, message) for case, message in BAD_REWARDBENCH_FILES.items()],
        (SELF_SCRIPT, "unknown_set", "invalid choice: 'chat'"),
        (SELF_SCRIPT, "set_not_in_data", "no pairs in the subsets of --set_name set3"),
        (SELF_SCRIPT, "chat_no_template", "no chat template"),
        (SELF_SCRIPT, "bad_model", "could not load"),
        (SELF_SCRIPT, "zero_new_tokens", "--max_new_tokens must be positive"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(
    script,
    case,
    message,
    tmp_path,
    tiny_model_dir,
    tiny_reward_model_dir,
    tiny_two_label_model_dir,
    tiny_model_no_template_dir,
    tiny_reward_model_no_template_dir,
):
    data = write_jsonl(tmp_path / "rb.jsonl", rewardbench_rows(4))
    model = tiny_reward_model_dir if script == RM_SCRIPT else tiny_model_dir
    extra = []
    if case in BAD_REWARDBENCH_FILES:
        data = bad_rewardbench_file(case, tmp_path)
    elif case == "unknown_split":
        extra = ["--split", "train"]
    elif case == "unknown_set":
        extra = ["--set_name", "set1" if script == RM_SCRIPT else "chat"]
    elif case == "set_not_in_data":
        data = write_jsonl(tmp_path / "rb.jsonl", rewardbench_rows(4, subsets=["alpacaeval-easy", "hep-python"]))
        extra = ["--set_name", "math" if script == RM_SCRIPT else "set3"]
    elif case == "two_labels":
        model = tiny_two_label_model_dir
    elif case == "causal_lm":
        model = tiny_model_dir
    elif case == "chat_no_template":
        model = tiny_reward_model_no_template_dir if script == RM_SCRIPT else tiny_model_no_template_dir
        extra = ["--input_format", "chat"] if script == RM_SCRIPT else ["--scoring", "chat"]
    elif case == "bad_model":
        model = tmp_path / "no-such-model"
    elif case == "zero_length":
        extra = ["--max_length", "0"]
    elif case == "zero_new_tokens":
        extra = ["--max_new_tokens", "0"]
    out_dir = tmp_path / "outputs"
    result = run_subprocess(
        script,
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


# ---------------------------------------------------------------------------------------------------
# The real model
# ---------------------------------------------------------------------------------------------------
@pytest.mark.smollm2
def test_smollm2_self_reward_on_the_demo_data(smollm2_dir, tmp_path):
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
        "--set_name",
        "set1_phi",
        "--scoring",
        "chat",
        "--max_new_tokens",
        "40",
    ]
    assert run_script(SELF_SCRIPT, argv) == 0
    predictions = read_predictions(tmp_path / "demo")
    assert len(predictions) == 2 and all(p["generated_chosen"].strip() for p in predictions)
    metrics = json.loads((tmp_path / "demo" / "metrics.json").read_text())
    assert metrics["n_pairs"] == 2 and 0 <= metrics["parse_failure_rate"] <= 1


@pytest.mark.smollm2
def test_smollm2_as_a_reward_model_backbone(smollm2_dir, tmp_path):
    """SmolLM2 with a fresh one-label head: the script runs a real-size model end to end."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForSequenceClassification

    torch.manual_seed(0)
    rm_dir = tmp_path / "smollm2-rm"
    causal = AutoModelForCausalLM.from_pretrained(str(smollm2_dir))
    config = causal.config
    config.num_labels, config.architectures = 1, None
    reward_model = LlamaForSequenceClassification(config)
    reward_model.model.load_state_dict(causal.model.state_dict())  # the real body (its embeddings are tied)
    reward_model.save_pretrained(rm_dir)
    AutoTokenizer.from_pretrained(str(smollm2_dir)).save_pretrained(rm_dir)
    argv = [
        "--model_name",
        str(rm_dir),
        "--dataset",
        str(REPO / "data/demo_rewardbench.jsonl"),
        "--output_dir",
        str(tmp_path),
        "--run_name",
        "demo",
        "--limit",
        "1",
        "--set_name",
        "math",
        "--input_format",
        "chat",
    ]
    assert run_script(RM_SCRIPT, argv) == 0
    metrics = json.loads((tmp_path / "demo" / "metrics.json").read_text())
    assert metrics["n_pairs"] == 1 and metrics["categories"]["math"] is not None
