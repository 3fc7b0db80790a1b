"""DPO/ scripts end to end on the tiny model: the paper's command, stages, resume, rounds, bad input, Evals."""

import json
import shutil

import pytest
import torch
from helpers import load_script, run_script, save_tiny_model, write_jsonl

OURS = "DPO/ours.py"
CATEGORIES = ["chat", "code", "math", "safety"]
# Small everything: 8 new tokens, LoRA r 4, two optimizer steps, a checkpoint after each.
SMOKE = [
    "--max_new_tokens",
    "8",
    "--max_steps",
    "2",
    "--per_device_train_batch_size",
    "2",
    "--per_device_eval_batch_size",
    "2",
    "--lora_r",
    "4",
    "--lora_alpha",
    "8",
    "--save_steps",
    "1",
    "--logging_steps",
    "1",
    "--warmup_ratio",
    "0",
    "--learning_rate",
    "5e-3",
    "--log_level",
    "warning",
]
# Tests that assert exact equality of samples or scores across batchings, resumes or processes run in float32 on
# the CPU whatever the host: in bf16/fp16, or on a GPU, a row's logits depend on its batch by rounding
# (docs/precision.md), and --dtype auto is bf16 on a GPU.
EXACT = ["--dtype", "float32", "--device", "cpu"]


def prompt_rows(n=10):
    return [
        {"id": f"p{i}", "instruction": f"What is {i} plus {i}? Answer Yes/No.", "category": CATEGORIES[i % 4]}
        for i in range(n)
    ]


@pytest.fixture
def prompts_file(tmp_path):
    return write_jsonl(tmp_path / "prompts.jsonl", prompt_rows())


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def by_id(path):
    return {r["id"]: r for r in read_jsonl(path)}


def last_error_line(capsys):
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


@pytest.mark.parametrize(
    "script",
    [
        OURS,
        "DPO/self_reward.py",
        "DPO/sample_responses.py",
        "DPO/merge_peft.py",
        "DPO/Evals/create_subset.py",
        "DPO/Evals/sample_mmlu.py",
    ],
)
def test_help(script, capsys):
    with pytest.raises(SystemExit) as exit_info:
        load_script(script).parse_args(["--help"])
    assert exit_info.value.code == 0 and "usage:" in capsys.readouterr().out


def test_the_papers_command_end_to_end(tiny_model_dir, prompts_file, tmp_path, monkeypatch):
    """Every flag of upstream's README command, on a local model and prompt file."""
    from ipo import hub

    uploads = []
    monkeypatch.setattr(hub, "push_folder", lambda folder, repo, **kw: uploads.append((str(folder), repo)))
    paths = {name: tmp_path / f"{name}.json" for name in ("train", "test", "mapped")}
    argv = [
        "--model_id",
        str(tiny_model_dir),
        "--dataset_id",
        "argilla/ultrafeedback-binarized-preferences-cleaned",
        "--num_train_epochs",
        "1",
        "--learning_rate",
        "5e-3",
        "--dpo_beta",
        "0.05",
        "--output_dir",
        str(tmp_path),
        "--run_name",
        "paper",
        "--merge_adapters",
        "--push_to_hub",
        "--hub_repo_id",
        "someone/ipo-tiny",
        "--wandb_project",
        "ipo-test",
        "--dataset_name",
        str(prompts_file),
        "--split_name",
        "split_1",
        "--train_path",
        str(paths["train"]),
        "--test_path",
        str(paths["test"]),
        "--mapped_path",
        str(paths["mapped"]),
        "--test_fraction",
        "0.2",
        *SMOKE,
    ]
    assert run_script(OURS, argv) == 0
    run = tmp_path / "paper"
    round_dir = run / "round_1"
    for name in (
        "responses.jsonl",
        "scored.jsonl",
        "pairs.jsonl",
        "dpo_config.json",
        "metrics.json",
        "adapter/adapter_config.json",
        "adapter/tokenizer_config.json",
        "merged/config.json",
        "merged/tokenizer_config.json",
    ):
        assert (round_dir / name).is_file(), name
    for name in ("config.json", "metrics.json", "results.md"):
        assert (run / name).is_file(), name
    # sample -> judge -> pairs
    responses = read_jsonl(round_dir / "responses.jsonl")
    assert len(responses) == 10 and all(len(r["responses"]) == 4 for r in responses)
    scored = by_id(round_dir / "scored.jsonl")
    assert all(len(s["p_yes"]) == 4 and all(0 < p < 1 for p in s["p_yes"]) for s in scored.values())
    pairs = read_jsonl(round_dir / "pairs.jsonl")
    assert len(pairs) == 10  # upstream mode keeps every pair
    for pair in pairs:
        p_yes = scored[pair["id"]]["p_yes"]
        assert pair["score_chosen"] == max(p_yes) and pair["score_rejected"] == min(p_yes)
    # --dpo_beta reaches the trainer; sigmoid loss; explicit lengths
    dpo_config = json.loads((round_dir / "dpo_config.json").read_text())
    assert dpo_config["beta"] == 0.05 and dpo_config["trainer"]["beta"] == 0.05
    assert dpo_config["loss_type"] == ["sigmoid"] and dpo_config["max_length"] == 1024
    # --test_path holds the held-out pairs, never the training pairs
    train, test = json.loads(paths["train"].read_text()), json.loads(paths["test"].read_text())
    assert len(train) == 8 and len(test) == 2
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in test}
    assert all(r["prompt"].startswith("[INST] ") and r["chosen"].endswith("<|eot_id|>") for r in train + test)
    assert len(json.loads(paths["mapped"].read_text())) == 10
    metrics = json.loads((run / "metrics.json").read_text())
    round_metrics = metrics["rounds"][0]
    assert round_metrics["pairs"] == {
        "n_prompts": 10,
        "n_pairs": 10,
        "n_train": 8,
        "n_test": 2,
        "dropped": {},
        "kept_degenerate": round_metrics["pairs"]["kept_degenerate"],
        "n_unscored_responses": 0,
    }
    assert round_metrics["training"]["n_train"] == 8 and "eval_loss" in round_metrics["training"]
    # --merge_adapters merged; --push_to_hub uploaded the merged model, once
    assert metrics["final_model"] == str(round_dir / "merged")
    assert uploads == [(str(round_dir / "merged"), "someone/ipo-tiny")]
    config = json.loads((run / "config.json").read_text())
    assert config["args"]["wandb_project"] == "ipo-test" and config["resolved"]["sampling"]["max_new_tokens"] == 8


def test_nothing_is_uploaded_without_push_to_hub(tiny_model_dir, prompts_file, tmp_path, monkeypatch):
    from ipo import hub

    def refuse(*args, **kwargs):
        raise AssertionError("uploaded without --push_to_hub")

    monkeypatch.setattr(hub, "push_folder", refuse)
    monkeypatch.setattr(hub, "push_records", refuse)
    argv = [
        "--model_id",
        str(tiny_model_dir),
        "--dataset_name",
        str(prompts_file),
        "--output_dir",
        str(tmp_path),
        "--prompt_format",
        "chat",
        "--merge_adapters",
        "--judge_after",
        *SMOKE,
    ]
    assert run_script(OURS, argv) == 0
    run = tmp_path / f"dpo-{tiny_model_dir.name}-chat"
    round_metrics = json.loads((run / "round_1" / "metrics.json").read_text())
    # chat mode: the chat-template judge; before/after scores on the same prompts
    assert round_metrics["judge_settings"]["scoring"] == "chat"
    assert set(round_metrics["after"]) == {"judge", "before", "after"}
    assert round_metrics["after"]["after"]["all"]["n_prompts"] == 10
    assert len(read_jsonl(run / "round_1" / "after_scored.jsonl")) == 10
    # the headline is the held-out change (1 of 10 prompts held out); the figures are in the run folder
    metrics = json.loads((run / "metrics.json").read_text())
    held, after = metrics["held_out"], round_metrics["after"]
    assert held == {**round_metrics["held_out"], "round": 1} and held["n_prompts"] == 1
    assert (held["before"], held["after"]) == (after["before"]["test"]["mean"], after["after"]["test"]["mean"])
    assert metrics["run"]["method"] == "dpo_loop_ipo" and metrics["run"]["data"]["n"] == 10
    headline = (run / "results.md").read_text().splitlines()[2]
    assert headline.startswith("**Held-out prompts (never trained on), round 1") and "1 prompts" in headline
    assert all((run / name).stat().st_size > 10_000 for name in ("training_curves.png", "before_after.png"))


def test_just_sample_then_train_resumes_the_same_run(tiny_model_dir, prompts_file, tmp_path):
    argv = [
        "--model_id",
        str(tiny_model_dir),
        "--dataset_name",
        str(prompts_file),
        "--output_dir",
        str(tmp_path),
        "--run_name",
        "two_steps",
        *SMOKE,
    ]
    assert run_script(OURS, [*argv, "--just_sample"]) == 0
    round_dir = tmp_path / "two_steps" / "round_1"
    assert (round_dir / "pairs.jsonl").is_file() and not (round_dir / "adapter").exists()
    assert json.loads((tmp_path / "two_steps" / "metrics.json").read_text())["stopped_after"] == "pairs"
    before = {name: (round_dir / name).read_bytes() for name in ("responses.jsonl", "scored.jsonl", "pairs.jsonl")}
    assert run_script(OURS, [*argv, "--judge_after"]) == 0  # unmerged: samples from base + adapter
    assert (round_dir / "adapter" / "adapter_config.json").is_file() and not (round_dir / "merged").exists()
    assert before == {name: (round_dir / name).read_bytes() for name in before}
    after = by_id(round_dir / "after_responses.jsonl")
    assert after.keys() == by_id(round_dir / "responses.jsonl").keys()


def test_every_stage_resumes_what_is_missing(tiny_model_dir, prompts_file, tmp_path):
    argv = [
        "--model_id",
        str(tiny_model_dir),
        "--dataset_name",
        str(prompts_file),
        "--output_dir",
        str(tmp_path),
        "--run_name",
        "r",
        "--prompt_format",
        "chat",
        "--merge_adapters",
        "--sample_batch_size",
        "3",
        *EXACT,
        *SMOKE,
    ]
    assert run_script(OURS, argv) == 0
    rd = tmp_path / "r" / "round_1"
    responses, scored, pairs = (
        by_id(rd / "responses.jsonl"),
        by_id(rd / "scored.jsonl"),
        (rd / "pairs.jsonl").read_text(),
    )
    adapter = (rd / "adapter" / "adapter_model.safetensors").read_bytes()
    # A kill leaves: 4 sampled prompts and half a line, 2 scored prompts, no pairs, checkpoint-1 only, no merge.
    lines = (rd / "responses.jsonl").read_text().splitlines(keepends=True)
    (rd / "responses.jsonl").write_text("".join(lines[:4]) + lines[4][:20])
    (rd / "scored.jsonl").write_text("".join((rd / "scored.jsonl").read_text().splitlines(keepends=True)[:2]))
    for path in (rd / "pairs.jsonl", rd / "adapter", rd / "merged", rd / "checkpoints" / "checkpoint-2"):
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    assert run_script(OURS, argv) == 0
    assert by_id(rd / "responses.jsonl") == responses  # the same samples: per-prompt random streams
    rescored = by_id(rd / "scored.jsonl")
    assert rescored.keys() == scored.keys()
    for pid in scored:
        assert rescored[pid]["p_yes"] == pytest.approx(scored[pid]["p_yes"], abs=1e-5)
    # Same pairs; re-scored prompts ran in other batches, so their floats may differ in the last bits.
    repaired, original = read_jsonl(rd / "pairs.jsonl"), [json.loads(line) for line in pairs.splitlines()]
    assert len(repaired) == len(original) > 0
    for new, old in zip(repaired, original):
        assert {k: v for k, v in new.items() if "score" not in k} == {k: v for k, v in old.items() if "score" not in k}
        for key in ("scores", "score_chosen", "score_rejected"):
            assert new[key] == pytest.approx(old[key], abs=1e-5)
    metrics = json.loads((rd / "metrics.json").read_text())
    assert metrics["training"]["resumed_from"].endswith("checkpoint-1")
    from safetensors.torch import load

    resumed, straight = load((rd / "adapter" / "adapter_model.safetensors").read_bytes()), load(adapter)
    for name in straight:
        torch.testing.assert_close(resumed[name], straight[name], rtol=1e-4, atol=1e-6)
    assert (rd / "merged" / "config.json").is_file()


def test_two_rounds(tiny_model_dir, prompts_file, tmp_path):
    argv = [
        "--model_id",
        str(tiny_model_dir),
        "--dataset_name",
        str(prompts_file),
        "--output_dir",
        str(tmp_path),
        "--run_name",
        "r",
        "--rounds",
        "2",
        "--test_fraction",
        "0",
        *SMOKE,
    ]
    assert run_script(OURS, argv) == 0
    run = tmp_path / "r"
    round_1, round_2 = run / "round_1", run / "round_2"
    assert (round_1 / "merged" / "config.json").is_file()  # merged because round 2 needs it
    assert not (round_2 / "merged").exists()  # the last round merges only with --merge_adapters
    adapter_2 = json.loads((round_2 / "adapter" / "adapter_config.json").read_text())
    assert adapter_2["base_model_name_or_path"] == str(round_1 / "merged")
    metrics = json.loads((run / "metrics.json").read_text())
    assert [m["round"] for m in metrics["rounds"]] == [1, 2]
    assert metrics["rounds"][1]["policy"] == str(round_1 / "merged")
    assert metrics["rounds"][0]["n_held_out"] == 0 and "eval_loss" not in metrics["rounds"][0]["training"]
    assert metrics["final_model"] == str(round_2 / "adapter")
    r1, r2 = by_id(round_1 / "responses.jsonl"), by_id(round_2 / "responses.jsonl")
    assert r1.keys() == r2.keys() and any(r1[k]["responses"] != r2[k]["responses"] for k in r1)
    assert (round_2 / "metrics.json").is_file() and (round_2 / "dpo_config.json").is_file()


def test_two_processes_shard_the_prompts_and_write_once(tiny_model_dir, prompts_file, tmp_path):
    """torchrun --nproc_per_node 2 on CPU (gloo): each process samples and judges half of the prompts, the main
    one merges and writes every file once, training runs DDP on both; the result is the single-process run's
    (samples equal, scores equal within float noise, the same pairs; 2 processes x 1 pair per step train the
    same adapter as 1 process x 2 pairs)."""
    import os
    import subprocess
    import sys

    from helpers import REPO

    argv = [
        "--model_id",
        str(tiny_model_dir),
        "--dataset_name",
        str(prompts_file),
        "--output_dir",
        str(tmp_path),
        "--prompt_format",
        "chat",
        "--merge_adapters",
        "--sample_batch_size",
        "3",
        *EXACT,
        *SMOKE,
    ]
    assert run_script(OURS, [*argv, "--run_name", "one", "--per_device_train_batch_size", "2"]) == 0
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            str(REPO / OURS),
            *argv,
            "--run_name",
            "two",
            "--per_device_train_batch_size",
            "1",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    one, two = tmp_path / "one" / "round_1", tmp_path / "two" / "round_1"
    for name in ("responses.jsonl", "scored.jsonl", "pairs.jsonl"):
        lines = (two / name).read_text().splitlines()
        assert len(lines) == len({json.loads(line)["id"] for line in lines}) == 10, name  # one writer, no duplicates
    assert not list(two.glob("*.rank*.jsonl"))  # the other process's part files were merged and removed
    assert by_id(two / "responses.jsonl") == by_id(one / "responses.jsonl")
    scored_one, scored_two = by_id(one / "scored.jsonl"), by_id(two / "scored.jsonl")
    for pid, record in scored_one.items():
        assert scored_two[pid]["p_yes"] == pytest.approx(record["p_yes"], abs=1e-5)
    pairs_one, pairs_two = by_id(one / "pairs.jsonl"), by_id(two / "pairs.jsonl")
    assert {pid: (p["chosen"], p["rejected"], p["split"]) for pid, p in pairs_one.items()} == {
        pid: (p["chosen"], p["rejected"], p["split"]) for pid, p in pairs_two.items()
    }
    from safetensors.torch import load_file

    adapter_one, adapter_two = (load_file(d / "adapter" / "adapter_model.safetensors") for d in (one, two))
    for name in adapter_one:
        torch.testing.assert_close(adapter_two[name], adapter_one[name], rtol=1e-4, atol=1e-5)
    assert (two / "merged" / "config.json").is_file() and not list(two.glob(".merged*"))
    metrics = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert metrics["final_model"] == str(two / "merged") and metrics["rounds"][0]["pairs"]["n_pairs"] == 10
    assert result.stdout.count("# IPO self-improvement") == 1  # results.md printed by the main process only


def test_sample_responses_matches_round_one(tiny_model_dir, prompts_file, tmp_path):
    base = [
        "--dataset_name",
        str(prompts_file),
        "--output_dir",
        str(tmp_path),
        "--max_new_tokens",
        "8",
        "--log_level",
        "warning",
        *EXACT,
    ]
    assert run_script("DPO/sample_responses.py", ["--model_name", str(tiny_model_dir), "--run_name", "s", *base]) == 0
    assert (
        run_script(OURS, ["--model_id", str(tiny_model_dir), "--run_name", "o", "--stop_after", "sample", *base]) == 0
    )
    alone, in_loop = by_id(tmp_path / "s" / "responses.jsonl"), by_id(tmp_path / "o" / "round_1" / "responses.jsonl")
    assert alone == in_loop and len(alone) == 10
    assert not (tmp_path / "o" / "round_1" / "scored.jsonl").exists()


# ---------------------------------------------------------------------------------------------------
# Bad input: one line, non-zero exit, nothing else touched
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "rows, message",
    [
        ([{"prompt": "q", "category": "chat"}], "has no column 'instruction'"),
        ([], "no prompts"),
    ],
)
def test_bad_prompt_files(tiny_model_dir, tmp_path, capsys, rows, message):
    path = write_jsonl(tmp_path / "prompts.jsonl", rows)
    argv = ["--model_id", str(tiny_model_dir), "--dataset_name", str(path), "--output_dir", str(tmp_path / "out")]
    assert run_script(OURS, argv) == 1
    line = last_error_line(capsys)
    assert line.startswith("error: ") and message in line
    assert not (tmp_path / "out").exists()


def test_rounds_zero(tiny_model_dir, prompts_file, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_script(
            OURS,
            [
                "--model_id",
                str(tiny_model_dir),
                "--dataset_name",
                str(prompts_file),
                "--rounds",
                "0",
                "--output_dir",
                str(tmp_path / "out"),
            ],
        )
    assert exit_info.value.code == 2 and "--rounds must be positive" in last_error_line(capsys)
    assert not (tmp_path / "out").exists()


def test_test_path_equal_to_train_path_is_refused(tiny_model_dir, prompts_file, tmp_path, capsys):
    with pytest.raises(SystemExit):
        run_script(
            OURS,
            [
                "--model_id",
                str(tiny_model_dir),
                "--dataset_name",
                str(prompts_file),
                "--train_path",
                "a.json",
                "--test_path",
                "./a.json",
            ],
        )
    assert "evaluation would run on the training pairs" in last_error_line(capsys)


def test_a_model_that_cannot_generate(prompts_file, tmp_path, capsys):
    model = save_tiny_model(tmp_path / "no_eos", eos=False)
    argv = ["--model_id", str(model), "--dataset_name", str(prompts_file), "--output_dir", str(tmp_path / "out")]
    assert run_script(OURS, argv) == 1
    assert "end-of-sequence" in last_error_line(capsys) and not (tmp_path / "out").exists()


def test_a_later_failure_leaves_earlier_files_intact(tiny_model_dir, prompts_file, tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    argv = [
        "--model_id",
        str(model),
        "--dataset_name",
        str(prompts_file),
        "--output_dir",
        str(tmp_path),
        "--run_name",
        "r",
        *SMOKE,
    ]
    assert run_script(OURS, [*argv, "--just_sample"]) == 0
    rd = tmp_path / "r" / "round_1"
    before = {name: (rd / name).read_bytes() for name in ("responses.jsonl", "scored.jsonl", "pairs.jsonl")}
    (model / "model.safetensors").write_bytes(b"not weights")  # the base model breaks before training
    assert run_script(OURS, argv) == 1
    # The model is one of the run's inputs: its changed weights are refused before anything loads (issue 11);
    # before inputs were fingerprinted, the same run failed later, loading the model.
    assert "model.safetensors changed" in last_error_line(capsys)
    assert before == {name: (rd / name).read_bytes() for name in before}
    assert not (rd / "adapter").exists()


def test_merge_peft(tiny_model_dir, tmp_path, capsys):
    from ipo.training.dpo import train_dpo
    from ipo.training.options import TrainingOptions

    pairs = [{"prompt": f"[INST] q{i} [/INST]", "chosen": "Yes", "rejected": "No"} for i in range(4)]
    adapter = train_dpo(
        str(tiny_model_dir),
        pairs,
        TrainingOptions(
            max_steps=1, per_device_train_batch_size=2, lora_r=4, lora_alpha=8, learning_rate=1e-2, warmup_ratio=0.0
        ),
        tmp_path / "run",
        device="cpu",
    ).adapter_dir
    assert run_script("DPO/merge_peft.py", ["--model_dir", str(adapter), "--mode", "merge", "--save"]) == 0
    merged = tmp_path / "run" / "adapter-merged"
    assert (merged / "config.json").is_file() and (merged / "tokenizer_config.json").is_file()
    assert not (adapter / "config.json").exists()  # the adapter folder stays an adapter folder
    assert run_script("DPO/merge_peft.py", ["--model_dir", str(adapter)]) == 1  # exists: refuses to overwrite
    assert "--overwrite" in last_error_line(capsys)
    # an adapter folder without adapter_config.json: one line, nothing written, the folder untouched
    broken = tmp_path / "broken"
    shutil.copytree(adapter, broken)
    (broken / "adapter_config.json").unlink()
    listing = sorted(p.name for p in broken.iterdir())
    assert run_script("DPO/merge_peft.py", ["--model_dir", str(broken)]) == 1
    assert "no adapter_config.json" in last_error_line(capsys)
    assert sorted(p.name for p in broken.iterdir()) == listing and not (tmp_path / "broken-merged").exists()


# ---------------------------------------------------------------------------------------------------
# Evals
# ---------------------------------------------------------------------------------------------------
MMLU_ROWS = [
    {
        "question": "What is the capital of France?",
        "choices": ["Paris", "London", "Berlin", "Rome"],
        "answer": 0,
        "subject": "geography",
    },
    {"question": "2 + 2 = ?", "choices": ["3", "4", "5", "6"], "answer": 1, "subject": "math"},
    {"question": "Which is a mammal?", "choices": ["Shark", "Trout", "Whale", "Eel"], "answer": "C", "subject": "bio"},
]


def test_create_subset_is_seeded(tmp_path, capsys):
    rows = [{"question": f"q{i}", "answer": i % 4} for i in range(30)]
    source = write_jsonl(tmp_path / "all.jsonl", rows)

    def subset(seed, out):
        assert (
            run_script(
                "DPO/Evals/create_subset.py",
                [
                    "--dataset_name",
                    str(source),
                    "--num_samples",
                    "5",
                    "--seed",
                    str(seed),
                    "--output",
                    str(tmp_path / out),
                ],
            )
            == 0
        )
        return read_jsonl(tmp_path / out)

    first, again, other = subset(1, "a.jsonl"), subset(1, "b.jsonl"), subset(2, "c.jsonl")
    assert first == again and first != other and len(first) == 5
    assert all(
        r["source_config"] == "default" and r in [{**x, "source_config": "default"} for x in rows] for r in first
    )
    assert len({r["question"] for r in first}) == 5
    assert (
        run_script(
            "DPO/Evals/create_subset.py",
            ["--dataset_name", str(source), "--num_samples", "31", "--output", str(tmp_path / "d.jsonl")],
        )
        == 1
    )
    assert "more than the 30 rows" in last_error_line(capsys) and not (tmp_path / "d.jsonl").exists()


def test_sample_mmlu_generates_and_grades(tiny_model_dir, tmp_path, monkeypatch):
    from ipo.selfimprove import sampling

    source = write_jsonl(tmp_path / "mmlu.jsonl", MMLU_ROWS)
    argv = [
        "--model_name",
        str(tiny_model_dir),
        "--dataset_name",
        str(source),
        "--output_dir",
        str(tmp_path),
        "--run_name",
        "m",
        "--max_new_tokens",
        "6",
        "--log_level",
        "warning",
    ]
    assert run_script("DPO/Evals/sample_mmlu.py", argv) == 0
    run = tmp_path / "m"
    predictions = read_jsonl(run / "predictions.jsonl")
    assert [p["answer"] for p in predictions] == [0, 1, 2]
    assert predictions[0]["formatted_input"].startswith("[INST] Answer the following multiple-choice question")
    assert predictions[0]["formatted_input"].endswith(
        "### Instruction: Choose the correct answer from the given options. [/INST]"
    )
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["n"] == 3 and metrics["accuracy"] == sum(p["correct"] for p in predictions) / 3
    # grading on known answers: a model that answers "2. ..." gets exactly the second question right
    monkeypatch.setattr(
        sampling.Sampler,
        "_generate",
        lambda self, prompts: [sampling.Sample(pid, ["2. that one"], [3], [True]) for pid, _ in prompts],
    )
    assert run_script("DPO/Evals/sample_mmlu.py", [*argv, "--run_name", "fixed"]) == 0
    fixed = json.loads((tmp_path / "fixed" / "metrics.json").read_text())
    assert fixed["accuracy"] == pytest.approx(1 / 3) and fixed["parsed"] == 1.0
    assert fixed["subjects"]["math"]["accuracy"] == 1.0 and fixed["subjects"]["bio"]["accuracy"] == 0.0


def test_bench_sampling_smoke(tiny_model_dir, capsys):
    bench = load_script("benchmarks/bench_sampling.py")
    assert (
        bench.main(
            [
                "--model",
                str(tiny_model_dir),
                "--num_prompts",
                "2",
                "--num_return_sequences",
                "2",
                "--max_new_tokens",
                "4",
                "--lora_r",
                "4",
                "--dpo_batch_size",
                "1",
            ]
        )
        == 0
    )
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("upstream_tokens_per_s", "batched_tokens_per_s", "ratio", "dpo_step_s", "dpo_peak_memory_mb"):
        assert report[key] > 0, key
    assert report["ratio"] == pytest.approx(report["batched_tokens_per_s"] / report["upstream_tokens_per_s"], rel=0.02)
    assert report["prompts"] == 2 and report["samples_per_prompt"] == 2
