"""Training again on a finished run's pairs: DPO/ours.py --pairs_from, DPO/train_preferences.py on a pairs.jsonl,
a sweep over it, the warmup warning, and the figures (training curves, before/after, sweep)."""

import json
import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
from helpers import load_script, run_script, write_jsonl

from ipo import cli
from ipo.training.options import TrainingOptions, warmup_warning
from ipo.training.run_pairs import pair_record

OURS = "DPO/ours.py"
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
CATEGORIES = ["chat", "code", "math", "safety"]


def read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def last_error_line(capsys):
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def source_run(tiny_model_dir, tmp_path_factory):
    """A chat-mode IPO run on the tiny model, finished up to its pairs: 10 prompts, 3 held out."""
    root = tmp_path_factory.mktemp("source")
    prompts = write_jsonl(
        root / "prompts.jsonl",
        [{"id": f"p{i}", "instruction": f"What is {i} plus {i}?", "category": CATEGORIES[i % 4]} for i in range(10)],
    )
    argv = [
        "--model_id",
        str(tiny_model_dir),
        "--dataset_name",
        str(prompts),
        "--prompt_format",
        "chat",
        "--test_fraction",
        "0.3",
        "--output_dir",
        str(root / "out"),
        "--run_name",
        "source",
        "--stop_after",
        "pairs",
        "--dtype",
        "float32",
        "--device",
        "cpu",
        *SMOKE,
    ]
    assert run_script(OURS, argv) == 0
    run = root / "out" / "source"
    assert (run / "round_1" / "pairs.jsonl").is_file()
    return run


def capture_trainer(monkeypatch):
    """Record the rows every trainer is built with (and still train on them)."""
    from ipo.training import dpo

    seen = []
    build = dpo.build_trainer

    def recording(model, train_records, options, output_dir, eval_records=None, **kwargs):
        seen.append({"train": list(train_records), "eval": list(eval_records or []), "beta": options.beta})
        return build(model, train_records, options, output_dir, eval_records=eval_records, **kwargs)

    monkeypatch.setattr(dpo, "build_trainer", recording)
    return seen


# ---------------------------------------------------------------------------------------------------
# DPO/ours.py --pairs_from
# ---------------------------------------------------------------------------------------------------
def test_a_second_beta_on_a_runs_pairs_respects_the_held_out_split(source_run, tmp_path, monkeypatch, capsys):
    """The slow test of this file: train, judge the held-out prompts after, write metrics, results and figures."""
    seen = capture_trainer(monkeypatch)
    source_pairs = read_jsonl(source_run / "round_1" / "pairs.jsonl")
    train_pairs = [p for p in source_pairs if p["split"] == "train"]
    test_pairs = [p for p in source_pairs if p["split"] == "test"]
    assert train_pairs and test_pairs
    # the command's --prompt_format and model differ from the source's: the source's win
    argv = ["--pairs_from", str(source_run), "--output_dir", str(tmp_path), "--beta", "0.3", "--judge_after"]
    argv += ["--prompt_format", "upstream", "--dtype", "float32", "--device", "cpu", *SMOKE]
    assert run_script(OURS, argv) == 0
    run = tmp_path / "source-round_1-sigmoid-beta0.3-lr0.005"
    round_dir = run / "round_1"
    # the trainer saw exactly the training split, in the run's chat format; the held-out pairs only evaluate
    assert len(seen) == 1 and seen[0]["beta"] == 0.3
    assert seen[0]["train"] == [pair_record(p, "chat") for p in train_pairs]
    assert seen[0]["eval"] == [pair_record(p, "chat") for p in test_pairs]
    trained_prompts = {r["prompt"][0]["content"] for r in seen[0]["train"]}
    assert not trained_prompts & {p["prompt"] for p in test_pairs}
    # nothing sampled or judged before training; the pairs are the source's, byte for byte
    assert not (round_dir / "responses.jsonl").exists() and not (round_dir / "scored.jsonl").exists()
    assert (round_dir / "pairs.jsonl").read_bytes() == (source_run / "round_1" / "pairs.jsonl").read_bytes()
    assert json.loads((round_dir / "dpo_config.json").read_text())["beta"] == 0.3
    # after DPO, only the held-out prompts are sampled and judged
    after_ids = {r["id"] for r in read_jsonl(round_dir / "after_scored.jsonl")}
    assert after_ids == {p["id"] for p in test_pairs}
    metrics = json.loads((run / "metrics.json").read_text())
    source_metrics = json.loads((source_run / "round_1" / "metrics.json").read_text())
    held = metrics["held_out"]
    assert set(held) == {"before", "after", "change", "n_prompts", "n_responses", "round"}
    assert held["before"] == source_metrics["judge"]["test"]["mean"] and held["n_prompts"] == len(test_pairs)
    assert held["change"] == pytest.approx(held["after"] - held["before"])
    assert metrics["run"]["benchmark"] == "selfimprove" and metrics["run"]["method"] == "dpo_loop_ipo"
    assert metrics["run"]["scoring"] == "chat"
    assert metrics["pairs_from"]["n_train"] == len(train_pairs) and metrics["pairs_from"]["round"] == 1
    results = (run / "results.md").read_text()
    assert results.splitlines()[2].startswith("**Held-out prompts (never trained on), round 1")
    for figure in ("training_curves.png", "before_after.png"):
        assert (run / figure).stat().st_size > 10_000, figure
    config = json.loads((run / "config.json").read_text())
    assert config["args"]["prompt_format"] == "chat" and str(source_run / "round_1" / "pairs.jsonl") in config["inputs"]

    # the source's pairs change: resuming the run on them is refused in one line, before anything loads
    pairs_file = source_run / "round_1" / "pairs.jsonl"
    original = pairs_file.read_bytes()
    edited = [{**p, "chosen": p["chosen"] + " (edited)"} if i == 0 else p for i, p in enumerate(source_pairs)]
    write_jsonl(pairs_file, edited)
    try:
        capsys.readouterr()
        assert run_script(OURS, argv) == 1
        line = last_error_line(capsys)
        assert "pairs.jsonl changed" in line and "--overwrite" in line
    finally:
        pairs_file.write_bytes(original)


def test_pairs_from_a_run_without_finished_pairs_is_one_line(tiny_model_dir, tmp_path, capsys):
    run = tmp_path / "unfinished"
    (run / "round_1").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"args": {"model_name": str(tiny_model_dir)}}))
    with pytest.raises(SystemExit) as exit_info:
        load_script(OURS).parse_args(["--pairs_from", str(run), "--output_dir", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "has no finished pairs" in last_error_line(capsys)
    with pytest.raises(SystemExit):
        load_script(OURS).parse_args(["--pairs_from", str(tmp_path / "nowhere"), "--output_dir", str(tmp_path)])
    assert "not a self-improvement run folder" in last_error_line(capsys)


def test_pairs_from_takes_the_source_settings_and_refuses_another_judge(source_run, tmp_path, capsys):
    args = load_script(OURS).parse_args(["--pairs_from", str(source_run), "--beta", "0.5", "--test_fraction", "0"])
    source_args = json.loads((source_run / "config.json").read_text())["args"]
    assert (args.model_name, args.prompt_format, args.test_fraction) == (
        source_args["model_name"],
        "chat",
        0.3,
    )
    assert args.beta == 0.5 and args.pairs_from == str((source_run / "round_1").resolve())
    with pytest.raises(SystemExit):
        load_script(OURS).parse_args(["--pairs_from", str(source_run), "--rounds", "2"])
    assert "--pairs_from trains one round" in last_error_line(capsys)
    argv = ["--pairs_from", str(source_run), "--output_dir", str(tmp_path), *SMOKE]
    assert run_script("DPO/self_reward.py", argv) == 1
    assert "judged by yes_no" in last_error_line(capsys)
    assert not any(tmp_path.iterdir())


# ---------------------------------------------------------------------------------------------------
# DPO/train_preferences.py on a run's pairs.jsonl
# ---------------------------------------------------------------------------------------------------
def fake_run(tmp_path, prompt_format, config=True):
    run = tmp_path / "dpo-run"
    pairs = [
        {
            "id": f"p{i}",
            "prompt": f"question {i}",
            "category": "chat",
            "chosen": f"good answer {i}",
            "rejected": f"bad {i}",
            "score_chosen": 0.9,
            "score_rejected": 0.1,
            "chosen_index": 0,
            "rejected_index": 1,
            "scores": [0.9, 0.1],
            "degenerate": None,
            "split": "test" if i in (1, 4) else "train",
        }
        for i in range(6)
    ]
    (run / "round_1").mkdir(parents=True)
    write_jsonl(run / "round_1" / "pairs.jsonl", pairs)
    if config:
        (run / "config.json").write_text(json.dumps({"args": {"prompt_format": prompt_format}}))
    return run / "round_1" / "pairs.jsonl", pairs


@pytest.mark.parametrize("prompt_format", ["upstream", "chat"])
def test_train_preferences_on_a_runs_pairs_uses_the_train_split_and_the_runs_format(
    prompt_format, tiny_model_dir, tmp_path, monkeypatch, capsys
):
    from ipo.training.dpo import TrainResult

    pairs_file, pairs = fake_run(tmp_path, prompt_format)
    script = load_script("DPO/train_preferences.py")
    seen = {}

    def fake_train(model, train_records, options, output_dir, eval_records=None, **kwargs):
        seen.update(train=train_records, eval=eval_records, extra=kwargs["extra_config"])
        return TrainResult(Path(output_dir) / "adapter", {})

    monkeypatch.setattr(script, "train_dpo", fake_train)
    argv = ["--model_name_or_path", str(tiny_model_dir), "--dataset", str(pairs_file), "--output_dir", str(tmp_path)]
    assert cli.run(script.main, argv) == 0
    assert seen["train"] == [pair_record(p, prompt_format) for p in pairs if p["split"] == "train"]
    assert seen["eval"] == [pair_record(p, prompt_format) for p in pairs if p["split"] == "test"]
    if prompt_format == "upstream":
        assert seen["train"][0]["prompt"] == "[INST] question 0 [/INST]"
    else:
        assert seen["train"][0]["prompt"] == [{"role": "user", "content": "question 0"}]
    assert seen["extra"]["prompt_format"] == prompt_format
    log = capsys.readouterr().err
    assert f"the train split of a self-improvement run's pairs, in its prompt format {prompt_format}" in log
    assert f"the test split of a self-improvement run's pairs, in its prompt format {prompt_format}" in log
    config = json.loads(
        (tmp_path / f"sigmoid-{tiny_model_dir.name}-dpo-run-round_1-beta0.1" / "config.json").read_text()
    )
    assert config["resolved"]["n_train"] == 4 and config["resolved"]["n_eval"] == 2
    assert config["resolved"]["run_pairs"]["prompt_format"] == prompt_format


def test_train_preferences_on_pairs_outside_their_run_or_on_the_held_out_split_is_one_line(
    tiny_model_dir, tmp_path, capsys
):
    pairs_file, _ = fake_run(tmp_path, "chat", config=False)
    argv = ["--model_name_or_path", str(tiny_model_dir), "--dataset", str(pairs_file), "--output_dir", str(tmp_path)]
    assert run_script("DPO/train_preferences.py", argv) == 1
    line = last_error_line(capsys)
    assert "config.json" in line and "prompt_format" in line
    (pairs_file.parent.parent / "config.json").write_text(json.dumps({"args": {"prompt_format": "chat"}}))
    assert run_script("DPO/train_preferences.py", [*argv, "--dataset_split", "test"]) == 1
    assert "held-out (test) pairs are never trained on" in last_error_line(capsys)
    assert [p.name for p in tmp_path.iterdir()] == ["dpo-run"]  # no run folder was made


def test_a_sweep_over_a_runs_pairs(tiny_model_dir, tmp_path, monkeypatch):
    """A recipe whose dataset_name is a run's pairs.jsonl: every point trains on its train split (the trainer is
    replaced by one that logs a loss and a margin depending on beta), and the summary draws the sweep figure."""
    import subprocess

    from ipo.training.dpo import TrainResult

    pairs_file, pairs = fake_run(tmp_path, "chat")
    recipe = tmp_path / "grid.yaml"
    recipe.write_text(
        f"model_name_or_path: {tiny_model_dir}\ndataset_name: {pairs_file}\nmax_steps: 1\n"
        "sweep:\n  beta: [0.1, 0.3]\n  loss_type: [sigmoid, ipo]\n"
    )
    train = load_script("DPO/train_preferences.py")
    seen = []

    def fake_train(model, train_records, options, output_dir, eval_records=None, **kwargs):
        seen.append((options.loss_type, options.beta, train_records, eval_records))
        log = [{"loss": 0.7 - options.beta, "rewards/margins": options.beta, "step": 1}]
        write_jsonl(Path(output_dir) / "train_log.jsonl", log)
        return TrainResult(Path(output_dir) / "adapter", {})

    monkeypatch.setattr(train, "train_dpo", fake_train)
    sweep = load_script("DPO/sweep.py")
    real_run = subprocess.run

    def in_process(command, *args, **kwargs):  # a point's train_preferences.py runs here, with the fake trainer
        if len(command) > 1 and str(command[1]).endswith("train_preferences.py"):
            return subprocess.CompletedProcess(command, cli.run(train.main, list(command[2:])))
        return real_run(command, *args, **kwargs)

    monkeypatch.setattr(subprocess, "run", in_process)
    assert sweep.main(["--config", str(recipe), "--output_dir", str(tmp_path / "sweeps")]) == 0
    expected_train = [pair_record(p, "chat") for p in pairs if p["split"] == "train"]
    expected_eval = [pair_record(p, "chat") for p in pairs if p["split"] == "test"]
    assert sorted((loss, beta) for loss, beta, _, _ in seen) == [
        ("ipo", 0.1),
        ("ipo", 0.3),
        ("sigmoid", 0.1),
        ("sigmoid", 0.3),
    ]
    assert all(train_rows == expected_train and eval_rows == expected_eval for _, _, train_rows, eval_rows in seen)
    rows = json.loads((tmp_path / "sweeps" / "grid" / "sweep_summary.json").read_text())
    assert {(r["loss_type"], r["beta"], r["reward_margin"]) for r in rows} >= {("ipo", 0.3, 0.3)}
    assert (tmp_path / "sweeps" / "grid" / "sweep_summary.png").stat().st_size > 10_000


# ---------------------------------------------------------------------------------------------------
# The warmup that leaves the only step at learning rate 0
# ---------------------------------------------------------------------------------------------------
def test_warmup_warning():
    one_step = warmup_warning(TrainingOptions(max_steps=1, warmup_ratio=0.1), 1)
    assert "only optimizer step runs at learning rate 0" in one_step and "--warmup_ratio 0.1" in one_step
    assert "--warmup_steps 3" in warmup_warning(TrainingOptions(warmup_ratio=0.0, warmup_steps=3), 1)
    assert "never reached" in warmup_warning(TrainingOptions(warmup_ratio=0.0, warmup_steps=5), 3)
    assert warmup_warning(TrainingOptions(warmup_ratio=0.0), 1) is None
    assert warmup_warning(TrainingOptions(warmup_ratio=0.1), 100) is None  # 10 warmup steps of 100
    assert warmup_warning(TrainingOptions(warmup_ratio=0.1, lr_scheduler_type="constant"), 1) is None


def test_planned_steps_counts_epochs_and_accumulation():
    from ipo.training.dpo import planned_steps

    def trainer(max_steps, n, batch=2, accumulation=2, epochs=3.0):
        config = SimpleNamespace(
            max_steps=max_steps,
            per_device_train_batch_size=batch,
            world_size=1,
            gradient_accumulation_steps=accumulation,
            num_train_epochs=epochs,
        )
        return SimpleNamespace(args=config, train_dataset=[0] * n)

    assert planned_steps(trainer(5, 100)) == 5
    assert planned_steps(trainer(-1, 9)) == 9  # 5 batches -> 3 steps per epoch, 3 epochs
    assert planned_steps(trainer(-1, 2, accumulation=1, epochs=1.0)) == 1


def test_one_step_under_warmup_warns_in_training(tiny_model_dir, tmp_path, caplog):
    from ipo.training.dpo import train_dpo

    rows = [pair_record({"prompt": f"q{i}", "chosen": "yes", "rejected": "no"}, "upstream") for i in range(2)]
    options = TrainingOptions(max_steps=1, warmup_ratio=0.1, lora_r=4, lora_alpha=8, per_device_train_batch_size=2)
    with caplog.at_level(logging.WARNING, logger="ipo"):
        train_dpo(str(tiny_model_dir), rows, options, tmp_path, device="cpu")
    assert "only optimizer step runs at learning rate 0" in caplog.text


# ---------------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------------
def test_sweep_figure_and_training_curves(tmp_path):
    from ipo.training.figures import sweep_figure, training_curves

    rows = [
        {"loss_type": loss, "beta": beta, "final_loss": 0.7 - beta * k, "reward_margin": beta * k, "status": "done"}
        for k, loss in enumerate(["sigmoid", "ipo", "kto_pair"], start=1)
        for beta in (0.01, 0.1, 0.5)
    ] + [{"loss_type": "sigmoid", "beta": 0.9, "final_loss": None, "reward_margin": None, "status": "failed"}]
    assert sweep_figure(rows, tmp_path / "sweep.png")
    assert (tmp_path / "sweep.png").stat().st_size > 10_000
    assert not sweep_figure(rows[-1:], tmp_path / "none.png") and not (tmp_path / "none.png").exists()
    log = [
        {
            "loss": 0.69 - 0.01 * s,
            "rewards/margins": 0.1 * s,
            "rewards/accuracies": 0.5,
            "learning_rate": 1e-4,
            "step": s,
        }
        for s in range(1, 4)
    ] + [{"eval_loss": 0.6, "eval_rewards/margins": 0.2, "step": 3}, {"train_loss": 0.68, "step": 3}]
    write_jsonl(tmp_path / "train_log.jsonl", log)
    assert training_curves(tmp_path / "train_log.jsonl", tmp_path / "curves.png")
    assert (tmp_path / "curves.png").stat().st_size > 10_000
