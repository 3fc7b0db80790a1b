"""DPO/reward_model.py, the paper's "Reward (Skywork RM)" arm: DPO/ours.py's loop with an external reward model as
the judge, on the tiny random policy (tiny_model_dir) and the tiny random reward model (tiny_reward_model_dir)."""

import gc
import json
import shutil
import weakref

import pytest
import torch
from helpers import load_script, run_script, write_jsonl
from test_dpo_scripts import EXACT, SMOKE, by_id, last_error_line, prompt_rows

from ipo.benchmarks.collect import build_rows, find_runs
from ipo.paper import paper_model
from ipo.run_info import run_description
from ipo.runs import atomic_write_json
from ipo.selfimprove import judging, loop

SCRIPT = "DPO/reward_model.py"


@pytest.fixture
def prompts_file(tmp_path):
    # No category column: the reward model asks no category's question.
    return write_jsonl(
        tmp_path / "prompts.jsonl", [{k: v for k, v in r.items() if k != "category"} for r in prompt_rows()]
    )


def independent_rewards(reward_model_dir, prompt, responses):
    """Each response's reward computed here, one at a time: the raw logit of the one-label head on the reward
    model's chat template with a user and an assistant turn."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(reward_model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(reward_model_dir, dtype=torch.float32).eval()
    rewards = []
    for response in responses:
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
        ids = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False)
        with torch.inference_mode():
            rewards.append(model(input_ids=torch.tensor([ids])).logits[0, 0].item())
    return rewards


def test_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        load_script(SCRIPT).parse_args(["--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0 and "--reward_model" in out and "--input_format" in out


def test_end_to_end_pairs_are_the_reward_models_best_and_worst(
    tiny_model_dir, tiny_reward_model_dir, prompts_file, tmp_path, monkeypatch
):
    """Sample -> the reward model's rewards -> pairs -> DPO -> merge -> judge after; the reward model is freed
    before training; the collector puts a downstream run of the merged model on the arm's row."""
    loaded = []  # weak references to every reward model the judge loads
    load = judging.load_model_and_tokenizer

    def tracked_load(spec, kind="causal_lm"):
        model, *rest = load(spec, kind=kind)
        assert kind == "sequence_classification" and spec.name_or_path == str(tiny_reward_model_dir)
        loaded.append(weakref.ref(model))
        return (model, *rest)

    train = loop.train_dpo

    def train_after_the_judge_is_freed(*args, **kwargs):
        gc.collect()
        assert loaded and all(ref() is None for ref in loaded), "the reward model is still in memory"
        return train(*args, **kwargs)

    monkeypatch.setattr(judging, "load_model_and_tokenizer", tracked_load)
    monkeypatch.setattr(loop, "train_dpo", train_after_the_judge_is_freed)
    argv = [
        "--model_id",
        str(tiny_model_dir),
        "--reward_model",
        str(tiny_reward_model_dir),
        "--dataset_name",
        str(prompts_file),
        "--output_dir",
        str(tmp_path),
        "--run_name",
        "rm",
        "--test_fraction",
        "0.2",
        "--merge_adapters",
        "--judge_after",
        "--judge_batch_size",
        "3",  # batches that split a prompt's 4 responses
        *EXACT,
        *SMOKE,
    ]
    assert run_script(SCRIPT, argv) == 0
    run, round_dir = tmp_path / "rm", tmp_path / "rm" / "round_1"
    assert len(loaded) == 2  # judged before and after DPO, a fresh load each time

    # Rewards and pairs: the reward model's, computed independently here.
    scored, pairs = by_id(round_dir / "scored.jsonl"), by_id(round_dir / "pairs.jsonl")
    assert len(scored) == 10 and len(pairs) == 10  # upstream prompt format: every pair kept
    for pid, record in scored.items():
        mine = independent_rewards(tiny_reward_model_dir, record["prompt"], record["responses"])
        assert record["reward"] == pytest.approx(mine, rel=1e-4, abs=1e-5)
        assert len(set(mine)) == len(mine)  # no ties: argmax and argmin are unique
        pair = pairs[pid]
        assert pair["chosen_index"] == mine.index(max(mine)) and pair["rejected_index"] == mine.index(min(mine))
        assert pair["chosen"] == record["responses"][pair["chosen_index"]]

    # metrics.json: the method the collector maps, the held-out change measured by the same reward model.
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["run"]["benchmark"] == "selfimprove" and metrics["run"]["method"] == "dpo_loop_reward_model"
    test_ids = {pid for pid, pair in pairs.items() if pair["split"] == "test"}
    assert len(test_ids) == 2
    after = by_id(round_dir / "after_scored.jsonl")
    before_mean = sum(sum(scored[i]["reward"]) for i in test_ids) / (4 * len(test_ids))
    after_mean = sum(sum(after[i]["reward"]) for i in test_ids) / (4 * len(test_ids))
    held = metrics["held_out"]
    assert held["before"] == pytest.approx(before_mean) and held["after"] == pytest.approx(after_mean)
    assert held["n_prompts"] == 2 and held["change"] == pytest.approx(after_mean - before_mean)
    assert metrics["rounds"][0]["after"]["judge"] == str(tiny_reward_model_dir)
    assert metrics["rounds"][0]["training"]["n_train"] == 8
    config = json.loads((run / "config.json").read_text())
    resolved = config["resolved"]["judge"]
    assert resolved["name"] == "reward_model" and resolved["reward_model"] == str(tiny_reward_model_dir)
    assert resolved["input_format"] == "chat" and resolved["dtype"] == "float32"

    # --pairs_from: another beta on the same pairs, the held-out prompts re-judged by the source's reward model.
    again = ["--pairs_from", str(run), "--beta", "0.3", "--judge_after", "--output_dir", str(tmp_path), *EXACT, *SMOKE]
    assert run_script(SCRIPT, [*again, "--run_name", "rm-beta"]) == 0
    assert len(loaded) == 3
    second = json.loads((tmp_path / "rm-beta" / "metrics.json").read_text())
    assert second["run"]["method"] == "dpo_loop_reward_model" and second["pairs_from"]["n_train"] == 8
    assert second["held_out"]["before"] == pytest.approx(before_mean) and second["held_out"]["n_prompts"] == 2
    assert json.loads((tmp_path / "rm-beta" / "config.json").read_text())["args"]["reward_model"] == str(
        tiny_reward_model_dir
    )

    # The collector: the run in the self-improvement table; a downstream run of a Mistral arm's merged model on
    # the paper's "Reward (Skywork RM)" row (the arm's folder with the policy it names).
    mistral = tmp_path / "runs" / "rm-mistral"
    (mistral / "round_1" / "merged").mkdir(parents=True)
    described = {**metrics, "run": {**metrics["run"], "model": "mistralai/Mistral-7B-Instruct-v0.1"}}
    atomic_write_json(mistral / "metrics.json", described)
    downstream = tmp_path / "runs" / "downstream"
    tasks = {"bbh": {"score": 31.5, "n": 6511, "n_in_data": 6511}}
    model = str(mistral / "round_1" / "merged")
    atomic_write_json(
        downstream / "metrics.json", {"run": run_description("downstream", "downstream", model), "tasks": tasks}
    )
    shutil.copytree(run, tmp_path / "runs" / "rm")
    tables = build_rows(find_runs([tmp_path / "runs"]))
    assert paper_model("mistralai/Mistral-7B-Instruct-v0.1") == "Mistral-7B-Instruct"
    (row,) = [r for r in tables["downstream"] if r.method == "dpo_loop_reward_model"]
    assert (row.paper_model, row.label, row.run.path) == ("Mistral-7B-Instruct", "Reward (Skywork RM)", downstream)
    assert row.reproduced["BBH"] == 31.5 and row.published["BBH"].value == 30.20
    (si,) = [r for r in tables["selfimprove"] if r.run.path == tmp_path / "runs" / "rm"]
    assert si.method == "dpo_loop_reward_model" and si.reproduced["before"] == round(held["before"], 4)


@pytest.mark.parametrize(
    "model_fixture, input_format, message",
    [
        ("tiny_model_dir", "chat", "not a sequence-classification reward model"),
        ("tiny_two_label_model_dir", "chat", "2-label head"),
        ("tiny_reward_model_no_template_dir", "chat", "chat template"),
    ],
)
def test_a_wrong_reward_model_is_one_line_before_anything_runs(
    model_fixture, input_format, message, request, tiny_model_dir, prompts_file, tmp_path, capsys
):
    reward_model = request.getfixturevalue(model_fixture)
    argv = ["--model_id", str(tiny_model_dir), "--reward_model", str(reward_model), "--input_format", input_format]
    argv += ["--dataset_name", str(prompts_file), "--output_dir", str(tmp_path), "--run_name", "bad", *EXACT, *SMOKE]
    assert run_script(SCRIPT, argv) == 1
    assert message in last_error_line(capsys)
    assert not (tmp_path / "bad").exists()  # refused before the run folder, sampling or any model load


def test_pairs_from_another_arm_is_refused(tiny_model_dir, tiny_reward_model_dir, prompts_file, tmp_path, capsys):
    """--pairs_from takes a run of the same arm only: an IPO run's pairs were judged by the policy."""
    source = tmp_path / "ipo-run"
    (source / "round_1").mkdir(parents=True)
    args = {"model_name": str(tiny_model_dir), "dataset_name": str(prompts_file)}
    atomic_write_json(source / "config.json", {"args": args, "resolved": {"judge": "yes_no"}})
    atomic_write_json(source / "round_1" / "metrics.json", {"round": 1, "pairs": {"n_train": 1, "n_test": 0}})
    (source / "round_1" / "pairs.jsonl").write_text("")
    argv = ["--pairs_from", str(source), "--reward_model", str(tiny_reward_model_dir), "--output_dir", str(tmp_path)]
    assert run_script(SCRIPT, [*argv, *EXACT, *SMOKE]) == 1
    assert "judged by yes_no" in last_error_line(capsys)


def test_samples_through_a_server_and_the_local_reward_model_judges(
    openai_server, monkeypatch, tiny_model_dir, tiny_reward_model_dir, prompts_file, tmp_path
):
    """--backend server: the served policy samples (the same responses as in-process), the reward model judges
    locally (the same rewards)."""
    monkeypatch.setenv("VLLM_API_KEY", openai_server.api_key)
    common = ["--model_id", str(tiny_model_dir), "--reward_model", str(tiny_reward_model_dir), "--dataset_name"]
    common += [str(prompts_file), "--max_new_tokens", "6", "--stop_after", "pairs", "--output_dir", str(tmp_path)]
    common += ["--log_level", "warning", "--reward_dtype", "float32", "--device", "cpu"]
    assert run_script(SCRIPT, [*common, "--run_name", "hf", "--dtype", "float32"]) == 0
    served = ["--backend", "server", "--base_url", openai_server.base_url, "--served_model", openai_server.model_id]
    assert run_script(SCRIPT, [*common, "--run_name", "server", *served, "--server_retry_base_delay", "0.001"]) == 0
    assert openai_server.completions == 40  # one request per (prompt, sample): the server sampled
    local, remote = (by_id(tmp_path / name / "round_1" / "scored.jsonl") for name in ("hf", "server"))
    assert local.keys() == remote.keys() and len(local) == 10
    for key in local:
        assert local[key]["responses"] == remote[key]["responses"]
        assert local[key]["reward"] == pytest.approx(remote[key]["reward"], abs=1e-5)
    assert by_id(tmp_path / "hf" / "round_1" / "pairs.jsonl") == by_id(tmp_path / "server" / "round_1" / "pairs.jsonl")
