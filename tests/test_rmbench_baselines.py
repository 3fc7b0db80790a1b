"""Preference_Comparison/RM_Bench/reward_model.py and self_reward.py end to end: values, upstream's regex
set and file names, parse failures, --set_name, resume, bad input."""

import json
import re

import pytest
import torch
from helpers import flatten_rmbench_rows, rmbench_rows, run_script, run_subprocess, write_json, write_jsonl
from test_rmbench import flat, read_predictions, rmbench_files  # noqa: F401 (a fixture)

from ipo.benchmarks import rmbench

RM_SCRIPT = "Preference_Comparison/RM_Bench/reward_model.py"
SELF_SCRIPT = "Preference_Comparison/RM_Bench/self_reward.py"


def official_matrix(records, score_name):
    """THU-KEG compute_accuracy's loop, written out: M[i][j] = share of prompts with chosen_i > rejected_j."""
    matrix = [[0.0] * 3 for _ in range(3)]
    for r in records:
        for i in range(3):
            for j in range(3):
                matrix[i][j] += (r[f"{score_name}_chosen"][i] > r[f"{score_name}_rejected"][j]) / len(records)
    return matrix


@pytest.mark.parametrize(
    "script, flags",
    [
        (RM_SCRIPT, ["--input_format", "--max_length", "--dataset", "--domain"]),
        (SELF_SCRIPT, ["--scoring", "--max_new_tokens", "--set_name"]),
    ],
)
def test_help(script, flags):
    result = run_subprocess(script, ["--help"])
    assert result.returncode == 0 and "--hf_key" in result.stdout and "--quantized" in result.stdout
    assert all(flag in result.stdout for flag in flags)
    assert "--no_prefix_sharing" not in result.stdout  # no flag that would do nothing here


# ---------------------------------------------------------------------------------------------------
# reward_model.py
# ---------------------------------------------------------------------------------------------------
def test_reward_model_end_to_end(tiny_reward_model_dir, rmbench_files, tmp_path, capsys, monkeypatch):  # noqa: F811
    monkeypatch.delenv("HF_TOKEN", raising=False)
    argv = [
        "--hf_key",
        "hf_TOPSECRETTOKEN",
        "--hf_user",
        "someone",
        "--model_name",
        str(tiny_reward_model_dir),
        "--dataset",
        *map(str, rmbench_files),
        "--output_dir",
        str(tmp_path),
    ]
    assert run_script(RM_SCRIPT, argv) == 0
    run_dir = tmp_path / f"rmbench-{tiny_reward_model_dir.name}-rm-upstream"
    assert "Incomplete: only chat, code, safety scored; missing math" in capsys.readouterr().out
    # Upstream named the file after the last dataset it scored; here the last file is safety-response.
    upstream_name = f"accuracy_RM-Bench-safety-response_norm_{tiny_reward_model_dir.name}.json"
    for name in (
        "config.json",
        "predictions.jsonl",
        "metrics.json",
        "results.md",
        upstream_name,
        "style_matrix_chat.png",
        "style_matrix_code.png",
        "style_matrix_safety.png",
    ):
        assert (run_dir / name).is_file(), name
    predictions = read_predictions(run_dir)
    assert len(predictions) == 12
    assert set(predictions[0]) == {"key", "id", "domain", "subset", "reward_chosen", "reward_rejected", "truncated"}

    # A reward is the raw logit of the head on upstream's "Instruction: ...\nResponse: ..." text.
    from ipo.modeling import load_model, load_tokenizer

    model, _, _ = load_model(str(tiny_reward_model_dir), dtype="float32", device="cpu", kind="sequence_classification")
    tokenizer = load_tokenizer(str(tiny_reward_model_dir))
    row = json.loads(rmbench_files[0].read_text())[1]  # chat id 9
    record = next(p for p in predictions if p["key"] == "chat/9")
    for side in ("chosen", "rejected"):
        for k, response in enumerate(row[side]):
            ids = tokenizer(f"Instruction: {row['prompt']}\nResponse: {response}").input_ids
            with torch.no_grad():
                expected = model(input_ids=torch.tensor([ids])).logits[0, 0].item()
            assert record[f"reward_{side}"][k] == pytest.approx(expected, abs=1e-4)
    rewards = [v for p in predictions for v in p["reward_chosen"] + p["reward_rejected"]]
    assert max(rewards) - min(rewards) > 1e-3 and min(rewards) < 0  # raw logits, not a sigmoid

    # The metrics are the official loop over the predictions, safety pooled.
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for domain, sources in (("chat", {"chat"}), ("code", {"code"}), ("safety", {"safety-refuse", "safety-response"})):
        expected = official_matrix([p for p in predictions if p["domain"] in sources], "reward")
        block = metrics["domains"][domain]
        assert flat(block["matrix"]) == pytest.approx(flat(expected))
        assert block["hard"] == pytest.approx((expected[0][1] + expected[0][2] + expected[1][2]) / 3)
        assert block["normal"] == pytest.approx((expected[0][0] + expected[1][1] + expected[2][2]) / 3)
        assert block["easy"] == pytest.approx((expected[1][0] + expected[2][0] + expected[2][1]) / 3)
    assert metrics["average"] == pytest.approx(
        sum(metrics["domains"][d]["score"] for d in ("chat", "code", "safety")) / 3
    )
    # Upstream's file: its keys, per data file, in percent.
    upstream = json.loads((run_dir / upstream_name).read_text())
    assert list(upstream) == ["RM-Bench-chat", "RM-Bench-code", "RM-Bench-safety-response", "RM-Bench-safety-refuse"]
    refuse = official_matrix([p for p in predictions if p["domain"] == "safety-refuse"], "reward")
    assert upstream["RM-Bench-safety-refuse"] == pytest.approx(
        {f"level_{k + 1}_accuracy": 100 * refuse[k][k] for k in range(3)}
    )
    config_text = (run_dir / "config.json").read_text()
    assert "TOPSECRET" not in config_text and json.loads(config_text)["args"]["input_format"] == "upstream"


def test_reward_model_chat_format_and_resume(tiny_reward_model_dir, rmbench_files, tmp_path):  # noqa: F811
    argv = [
        "--model_name",
        str(tiny_reward_model_dir),
        "--dataset",
        *map(str, rmbench_files),
        "--output_dir",
        str(tmp_path),
        "--run_name",
        "r",
        "--input_format",
        "chat",
        "--batch_size",
        "6",
        "--log_level",
        "error",
    ]
    assert run_script(RM_SCRIPT, argv) == 0
    predictions = tmp_path / "r" / "predictions.jsonl"
    complete = {p["key"]: p for p in read_predictions(tmp_path / "r")}
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    lines = predictions.read_text().splitlines(keepends=True)
    predictions.write_text("".join(lines[:5]) + lines[5][:30])  # as if killed while writing the 6th record
    assert run_script(RM_SCRIPT, argv) == 0
    resumed = read_predictions(tmp_path / "r")
    assert sorted(p["key"] for p in resumed) == sorted(complete)  # nothing lost, nothing twice
    for p in resumed:
        assert p["reward_chosen"] == pytest.approx(complete[p["key"]]["reward_chosen"], abs=1e-5)
    resumed_metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert resumed_metrics["average"] == pytest.approx(metrics["average"])
    assert flat(resumed_metrics["domains"]["safety"]["matrix"]) == pytest.approx(
        flat(metrics["domains"]["safety"]["matrix"])
    )


# ---------------------------------------------------------------------------------------------------
# self_reward.py: upstream's RM-Bench regex set and chat-mode parsing on scripted judge replies
# ---------------------------------------------------------------------------------------------------
# The judge's reply to each response (the responses name themselves). Upstream's RM-Bench regexes, tried in
# order over prompt + reply: r"score\s*:\s*(\d+)", r"score\s*(\d+)", r"(\d+)\s*/\s*5"; clamped to 1..5,
# 0 if none matches. Chat mode: the last "Score: N" of the reply alone, N in 1..5, else a failure (None).
REPLIES = {
    "chosen-A-1": "Clear and right. Score: 4",  # upstream 4 (pattern 1), chat 4
    "chosen-A-2": "I would score 3 here.",  # upstream 3 (pattern 2, no colon), chat failure
    "chosen-A-3": "Overall 2/5.",  # upstream 2 (pattern 3), chat failure
    "rejected-A-1": "Wrong answer. Score: 9",  # upstream 5 (clamped), chat failure (out of range)
    "rejected-A-2": "It is hard to say.",  # upstream 0 (no match: a failure), chat failure
    "rejected-A-3": "Score: 2",  # both 2
    "chosen-B-1": "Score: 5",
    "chosen-B-2": "**Score:** 5",  # upstream 0: no pattern allows the markdown between colon and digit; chat 5
    "chosen-B-3": "Score: 1",
    "rejected-B-1": "Score: 3",
    "rejected-B-2": "score: 5",
    "rejected-B-3": "Score: 1",
}
SCORES = {
    "upstream": {"A": ([4, 3, 2], [5, 0, 2]), "B": ([5, 0, 1], [3, 5, 1])},
    "chat": {"A": ([4, None, None], [None, None, 2]), "B": ([5, 5, 1], [3, 5, 1])},
}
# Hand-computed 3x3 matrices over the two prompts, M[i][j] = share with chosen_i > rejected_j:
#   upstream: A [[0,1,1],[0,1,1],[0,1,0]] + B [[1,0,1],[0,0,0],[0,0,0]]; ties: A 1 (2=2), B 2 (5=5, 1=1)
#   chat: a failure (None) loses every comparison and ties with nothing:
#         A [[0,0,1],[0,0,0],[0,0,0]] + B [[1,0,1],[1,0,1],[0,0,0]]; ties: B 3 (5=5 twice, 1=1)
EXPECTED = {
    "upstream": {
        "matrix": [[0.5, 0.5, 1], [0, 0.5, 0.5], [0, 0.5, 0]],
        "hard": 2 / 3,
        "normal": 1 / 3,
        "easy": 1 / 6,
        "n_ties": 3,
        "n_parse_failures": 2,
        "prompts_with_parse_failure": 2,
    },
    "chat": {
        "matrix": [[0.5, 0, 1], [0.5, 0, 0.5], [0, 0, 0]],
        "hard": 1 / 2,
        "normal": 1 / 6,
        "easy": 1 / 6,
        "n_ties": 3,
        "n_parse_failures": 4,
        "prompts_with_parse_failure": 1,
    },
}


def scripted_rows():
    rows = []
    for n, name in enumerate("AB"):
        rows.append(
            {
                "id": n,
                "subset": "chat",
                "prompt": f"Question {name}?",
                "chosen": [f"chosen-{name}-{k}" for k in (1, 2, 3)],
                "rejected": [f"rejected-{name}-{k}" for k in (1, 2, 3)],
            }
        )
    return rows


@pytest.fixture
def scripted_judge(monkeypatch):
    """SelfRewardScorer.generate answers each prompt with REPLIES[its response]; prompt building, decoding
    and parsing stay real."""
    from ipo.judges.self_reward import SelfRewardScorer

    def generate(self, prompts):
        replies = []
        for ids in prompts:
            response = re.search(r"<response>(.*?)</response>", self.tokenizer.decode(ids), re.DOTALL).group(1)
            replies.append(self.tokenizer.encode(REPLIES[response], add_special_tokens=False))
        return replies

    monkeypatch.setattr(SelfRewardScorer, "generate", generate)


@pytest.mark.parametrize("scoring", ["upstream", "chat"])
def test_self_reward_regex_sets_and_metrics_by_hand(scoring, scripted_judge, tiny_model_dir, tmp_path):
    data = write_json(tmp_path / "chat_filtered.json", scripted_rows())
    argv = [
        "--model_name",
        str(tiny_model_dir),
        "--dataset",
        str(data),
        "--output_dir",
        str(tmp_path),
        "--scoring",
        scoring,
        "--log_level",
        "error",
    ]
    assert run_script(SELF_SCRIPT, argv) == 0
    run_dir = tmp_path / f"rmbench-{tiny_model_dir.name}-self-{scoring}-all"
    predictions = {p["key"]: p for p in read_predictions(run_dir)}
    for name, n in (("A", 0), ("B", 1)):
        p = predictions[f"chat/{n}"]
        assert (p["score_chosen"], p["score_rejected"]) == SCORES[scoring][name]
        assert p["generated_chosen"] == [REPLIES[f"chosen-{name}-{k}"] for k in (1, 2, 3)]  # the reply only
        failed = (
            [s is None for s in p["score_chosen"] + p["score_rejected"]]
            if scoring == "chat"
            else [s == 0 for s in p["score_chosen"] + p["score_rejected"]]
        )
        assert p["parse_failed_chosen"] + p["parse_failed_rejected"] == failed
    metrics = json.loads((run_dir / "metrics.json").read_text())
    chat, expected = metrics["domains"]["chat"], EXPECTED[scoring]
    assert flat(chat["matrix"]) == pytest.approx(flat(expected["matrix"]))
    assert (chat["hard"], chat["normal"], chat["easy"]) == pytest.approx(
        (expected["hard"], expected["normal"], expected["easy"])
    )
    assert chat["levels"] == pytest.approx({f"level_{k + 1}": expected["matrix"][k][k] for k in range(3)})
    assert metrics["n_ties"] == expected["n_ties"]
    assert metrics["n_parse_failures"] == chat["n_parse_failures"] == expected["n_parse_failures"]
    assert metrics["n_judgements"] == 12
    assert metrics["prompts_with_parse_failure"] == expected["prompts_with_parse_failure"]
    results = (run_dir / "results.md").read_text()
    assert f"Parse failures: {expected['n_parse_failures']} of 12 judgements" in results
    upstream = json.loads((run_dir / f"accuracy-rm-bench-{tiny_model_dir.name}-scores-all.json").read_text())
    assert upstream == {
        "RM-Bench-chat": pytest.approx({f"level_{k + 1}": 100 * expected["matrix"][k][k] for k in range(3)})
    }
    if scoring == "chat":
        # Without the failed judgements only prompt B and A's (chosen 1, rejected 3) comparison are left:
        # [[1,0,1],[1,0,1],[0,0,0]] -> hard 2/3, normal 1/3, easy 1/3, score 4/9.
        assert flat(chat["matrix_excluding_parse_failures"]) == pytest.approx([1, 0, 1, 1, 0, 1, 0, 0, 0])
        assert chat["score_excluding_parse_failures"] == pytest.approx(4 / 9)
        assert "every comparison with a failed judgement counts as wrong" in results
    else:
        assert "each scored 0, below any parsed score, as upstream" in results


def test_self_reward_set_name_keeps_upstreams_domain_group(scripted_judge, tiny_model_dir, tmp_path):
    rows = scripted_rows()
    files = [
        write_json(tmp_path / "chat_filtered.json", rows),
        write_jsonl(tmp_path / "RM-Bench-safety-refuse.jsonl", flatten_rmbench_rows(rows)),
    ]
    base = [
        "--model_name",
        str(tiny_model_dir),
        "--dataset",
        *map(str, files),
        "--output_dir",
        str(tmp_path / "out"),
        "--log_level",
        "error",
    ]
    assert run_script(SELF_SCRIPT, [*base, "--set_name", "set2"]) == 0
    run_dir = tmp_path / "out" / f"rmbench-{tiny_model_dir.name}-self-upstream-set2"
    assert [p["key"] for p in read_predictions(run_dir)] == ["safety-refuse/0", "safety-refuse/1"]
    upstream = json.loads((run_dir / f"accuracy-rm-bench-{tiny_model_dir.name}-scores-set2.json").read_text())
    assert list(upstream) == ["RM-Bench-safety-refuse"]
    assert json.loads((run_dir / "config.json").read_text())["resolved"]["prompts_per_domain"] == {"safety-refuse": 2}
    assert rmbench.SELF_REWARD_SETS == {"set1": ("chat", "code", "math"), "set2": ("safety-response", "safety-refuse")}


def test_self_reward_resume_with_real_generation(tiny_model_dir, rmbench_files, tmp_path):  # noqa: F811
    argv = [
        "--model_name",
        str(tiny_model_dir),
        "--dataset",
        *map(str, rmbench_files[:2]),
        "--output_dir",
        str(tmp_path),
        "--run_name",
        "r",
        "--max_new_tokens",
        "4",
        "--limit",
        "2",
        "--log_level",
        "error",
    ]
    assert run_script(SELF_SCRIPT, argv) == 0
    complete = {p["key"]: p for p in read_predictions(tmp_path / "r")}
    assert len(complete) == 4 and all(len(p["generated_chosen"]) == 3 for p in complete.values())
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    predictions = tmp_path / "r" / "predictions.jsonl"
    lines = predictions.read_text().splitlines(keepends=True)
    predictions.write_text("".join(lines[:2]) + lines[2][:40])
    assert run_script(SELF_SCRIPT, argv) == 0
    resumed = read_predictions(tmp_path / "r")
    assert sorted(p["key"] for p in resumed) == sorted(complete)
    assert all(p == complete[p["key"]] for p in resumed)  # greedy: the same judgements again
    assert json.loads((tmp_path / "r" / "metrics.json").read_text()) == metrics
    assert run_script(SELF_SCRIPT, [*argv, "--max_new_tokens", "5"]) == 1  # a result-affecting change is refused


# ---------------------------------------------------------------------------------------------------
# Bad input: one line, non-zero exit, nothing written
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "script, case, message",
    [
        (
            RM_SCRIPT,
            "two_chosen",
            "chat_filtered.json: row 1 (id 1): 'chosen' has 2 responses; RM-Bench rows need exactly 3",
        ),
        (SELF_SCRIPT, "flat_missing_chosen_2", "RM-Bench-code.jsonl: row 2 (id 2) has no column 'chosen_2'"),
        (SELF_SCRIPT, "no_domain", "rows.json: cannot tell the RM-Bench domain of row 0 (id 0)"),
        (SELF_SCRIPT, "set_without_its_domains", "no prompts of the domains of --set_name set1 (chat, code, math)"),
        (RM_SCRIPT, "causal_lm", "is not a trained sequence-classification reward model"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(
    script, case, message, tmp_path, tiny_model_dir, tiny_reward_model_dir
):
    data = [write_json(tmp_path / "safety-refuse_filtered.json", rmbench_rows(2))]  # a good file first
    rows = rmbench_rows(3)
    if case == "two_chosen":
        rows[1]["chosen"] = rows[1]["chosen"][:2]
        data.append(write_json(tmp_path / "chat_filtered.json", rows))
    elif case == "flat_missing_chosen_2":
        flat_rows = flatten_rmbench_rows(rows)
        del flat_rows[2]["chosen_2"]
        data.append(write_jsonl(tmp_path / "RM-Bench-code.jsonl", flat_rows))
    elif case == "no_domain":
        data.append(write_json(tmp_path / "rows.json", rows))
    model = tiny_reward_model_dir if script == RM_SCRIPT and case != "causal_lm" else tiny_model_dir
    out_dir = tmp_path / "outputs"
    argv = [
        "--model_name",
        str(model),
        "--dataset",
        *map(str, data),
        "--output_dir",
        str(out_dir),
        "--log_level",
        "error",
    ]
    if case == "set_without_its_domains":
        argv += ["--set_name", "set1"]
    result = run_subprocess(script, argv)
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0, result.stderr  # one line, no traceback
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not out_dir.exists()
