"""DPO/train_preferences.py and the PreferenceLossTrainer: every loss trains, matches ipo.training.losses on independently
computed log-probs, RPO skips one-sided batches, recipes, resume, bad input."""

from __future__ import annotations

import json
import math

import pytest
import torch
from helpers import load_script, run_script, write_jsonl

from ipo import IpoError
from ipo.training.dpo import build_trainer, train_summary
from ipo.training.losses import paired_preference_loss, rpo_unpaired_loss
from ipo.training.options import TrainingOptions
from ipo.training.trainer import BalancedBatchSampler, custom_trainer_class, cut_long_prompt

SCRIPT = "DPO/train_preferences.py"
REJECTED = ["Hello, how are you today?", "No.", "The sky is blue and the weather is nice.", "I am fine, thank you."]


def pairs(n=8):
    """Conversational pairs (the tiny model has a ChatML template); rejected answers of varied length."""
    return [
        {
            "prompt": [{"role": "user", "content": f"What is {i} plus {i}?" + " Please explain." * (i % 3)}],
            "chosen": [{"role": "assistant", "content": f"The answer is {2 * i}."}],
            "rejected": [{"role": "assistant", "content": REJECTED[i % len(REJECTED)]}],
        }
        for i in range(n)
    ]


def unpaired(n=8):
    return [
        {"prompt": p["prompt"], "completion": p[side], "label": side == "chosen"}
        for p in pairs(n)
        for side in ("chosen", "rejected")
    ]


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("data") / "pairs.jsonl", pairs(8))


def small_args(model_dir, data, out, *extra):
    return [
        "--model_name_or_path",
        str(model_dir),
        "--dataset",
        str(data),
        "--output_dir",
        str(out),
        "--max_steps",
        "2",
        "--per_device_train_batch_size",
        "4",
        "--lora_r",
        "8",
        "--lora_alpha",
        "16",
        "--learning_rate",
        "5e-3",
        "--warmup_ratio",
        "0",
        "--logging_steps",
        "1",
        "--save_steps",
        "1",
        "--run_name",
        "run",
        *extra,
    ]


def small_options(**overrides):
    values = dict(
        max_steps=2,
        per_device_train_batch_size=4,
        per_device_eval_batch_size=4,
        lora_r=8,
        lora_alpha=16,
        learning_rate=5e-3,
        warmup_ratio=0.0,
        logging_steps=1,
        save_steps=100,
    )
    values.update(overrides)
    return TrainingOptions(**values)


# ---------------------------------------------------------------------------------------------------
# Every loss trains end to end through the script
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "loss_type", ["sigmoid", "ipo", "ipo_sum", "kto_pair", "rpo_paired", "rpo_unpaired", "rpo_diagonal"]
)
def test_two_training_steps_per_loss(loss_type, tiny_model_dir, pairs_file, tmp_path, capsys):
    from safetensors.torch import load_file

    extra = ["--loss_type", loss_type] + (["--unpaired"] if loss_type == "rpo_unpaired" else [])
    assert run_script(SCRIPT, small_args(tiny_model_dir, pairs_file, tmp_path, *extra)) == 0
    run = tmp_path / "run"
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["status"] == "done" and summary["loss_type"] == loss_type and summary["steps"] == 2
    assert math.isfinite(summary["final_loss"]) and math.isfinite(summary["reward_margin"])
    assert summary["n_train"] == (16 if loss_type == "rpo_unpaired" else 8)
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["final_loss"] == summary["final_loss"]
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    losses = [entry["loss"] for entry in log if "loss" in entry]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    # at step 1 the adapter is still zero (LoRA B starts at 0), so policy == reference and the loss is the
    # loss at margin 0: log 2 for the sigmoid family, (1/(2 beta))^2 for IPO, 0.5 for kto_pair
    at_zero = {"ipo": 25.0, "ipo_sum": 25.0, "kto_pair": 0.5}.get(loss_type, math.log(2))
    assert losses[0] == pytest.approx(at_zero, rel=1e-5)
    assert "rewards/margins" in log[1] and log[1]["rewards/margins"] != 0  # step 2 runs on a trained adapter
    adapter = load_file(run / "adapter" / "adapter_model.safetensors")
    assert any("lora_B" in name and tensor.abs().sum() > 0 for name, tensor in adapter.items())  # it moved
    config = json.loads((run / "dpo_config.json").read_text())
    assert config["loss_type"] == [loss_type] and config["trainer_class"] == (
        "DPOTrainer" if loss_type in ("sigmoid", "ipo") else "PreferenceLossTrainer"
    )
    if loss_type.startswith("rpo"):
        assert summary["skipped_rpo_batches"] == 0 and "rpo/skipped_batches" in log[0]


def test_rpo_diagonal_with_weight_one_is_trls_dpo(tiny_model_dir, tmp_path):
    """rpo_diagonal with diagonal weight 1 is plain DPO: our log-prob path must reproduce TRL's step for step."""
    histories, adapters = [], []
    for loss_type, weight in (("sigmoid", 0.8), ("rpo_diagonal", 1.0)):
        options = small_options(loss_type=loss_type, rpo_diagonal_weight=weight)
        trainer, _, _ = build_trainer(str(tiny_model_dir), pairs(8), options, tmp_path / loss_type, device="cpu")
        trainer.train()
        histories.append([e["loss"] for e in trainer.state.log_history if "loss" in e])
        adapters.append({n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_" in n})
    assert type(trainer).__name__ == "PreferenceLossTrainer"
    assert histories[0] == pytest.approx(histories[1], rel=1e-5) and histories[0][1] != histories[0][0]
    for name in adapters[0]:
        torch.testing.assert_close(adapters[0][name], adapters[1][name], rtol=1e-4, atol=1e-6)


def test_precomputed_reference_log_probs_give_the_same_training(tiny_model_dir, tmp_path):
    histories = []
    for precompute in (False, True):
        options = small_options(loss_type="kto_pair", precompute_ref_log_probs=precompute)
        trainer, _, _ = build_trainer(str(tiny_model_dir), pairs(8), options, tmp_path / str(precompute), device="cpu")
        assert ("ref_chosen_logps" in trainer.train_dataset.column_names) == precompute
        trainer.train()
        histories.append([e["loss"] for e in trainer.state.log_history if "loss" in e])
    assert histories[0] == pytest.approx(histories[1], rel=1e-5)


# ---------------------------------------------------------------------------------------------------
# The loss the trainer computes = ipo.training.losses on log-probs computed here by a plain forward
# ---------------------------------------------------------------------------------------------------
def independent_logps(model, batch):
    """Summed completion log-probs per row from full logits (no fused head), for the policy and the base."""

    def summed(m):
        logits = m(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
        token_logps = logits.log_softmax(-1).gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1)
        return (token_logps * batch["completion_mask"][:, 1:]).sum(1)

    with torch.no_grad():
        policy = summed(model)
        with model.disable_adapter():
            reference = summed(model)
    return policy, reference


def prompt_embeddings(trainer, prompts):
    """MiniLM embeddings of the prompts as the model sees them: chat template, special tokens dropped."""
    tokenizer = trainer.processing_class
    texts = [
        tokenizer.decode(
            tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=True, return_dict=False),
            skip_special_tokens=True,
        )
        for p in prompts
    ]
    from ipo.training.embeddings import PromptEmbedder

    return PromptEmbedder().encode(texts)


def perturbed_trainer(tiny_model_dir, tmp_path, records, **overrides):
    trainer, _, _ = build_trainer(str(tiny_model_dir), records, small_options(**overrides), tmp_path, device="cpu")
    torch.manual_seed(1)
    with torch.no_grad():  # a non-zero adapter, so that policy != reference
        for name, parameter in trainer.model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.2)
    trainer.model.eval()
    return trainer


@pytest.mark.parametrize("loss_type", ["ipo_sum", "kto_pair", "rpo_paired", "rpo_diagonal", "rpo_uniform"])
def test_paired_loss_matches_the_pure_function(loss_type, tiny_model_dir, tmp_path):
    records = pairs(4)
    trainer = perturbed_trainer(
        tiny_model_dir, tmp_path, records, loss_type=loss_type, rpo_diagonal_weight=0.7, rpo_distance_temperature=0.3
    )
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])  # dataset order = records order
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, dict(batch))
    policy, reference = independent_logps(trainer.model, batch)
    embeddings = prompt_embeddings(trainer, [r["prompt"] for r in records]) if loss_type == "rpo_paired" else None
    expected = paired_preference_loss(
        loss_type,
        *policy.chunk(2),
        *reference.chunk(2),
        beta=0.1,
        prompt_embeddings=embeddings,
        temperature=0.3,
        diagonal_weight=0.7,
    )
    assert policy[:4].sub(reference[:4]).abs().max() > 0.01  # the check is not trivially at margin 0
    assert loss.item() == pytest.approx(expected.losses.mean().item(), rel=1e-4)
    assert trainer._metrics["eval"]["rewards/margins"][-1] == pytest.approx(
        (expected.chosen_rewards - expected.rejected_rewards).mean().item(), rel=1e-4
    )


def test_unpaired_loss_matches_the_pure_function(tiny_model_dir, tmp_path):
    records = unpaired(4)
    trainer = perturbed_trainer(tiny_model_dir, tmp_path, records, loss_type="rpo_unpaired")
    indices = [0, 3, 4, 1, 6, 5]  # chosen, rejected, chosen, rejected, chosen, rejected (3 + 3, mixed prompts)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in indices])
    assert batch["is_chosen"].tolist() == [records[i]["label"] for i in indices]
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, dict(batch))
    policy, reference = independent_logps(trainer.model, batch)
    embeddings = prompt_embeddings(trainer, [records[i]["prompt"] for i in indices])
    expected = rpo_unpaired_loss(policy, reference, batch["is_chosen"], embeddings, beta=0.1, temperature=0.5)
    assert loss.item() == pytest.approx(expected.losses.mean().item(), rel=1e-4)


def test_a_one_sided_unpaired_batch_is_skipped_and_counted(tiny_model_dir, tmp_path):
    records = unpaired(4)
    trainer = perturbed_trainer(tiny_model_dir, tmp_path, records, loss_type="rpo_unpaired")
    trainer.model.train()
    only_chosen = trainer.data_collator([trainer.train_dataset[i] for i in (0, 2, 4, 6)])
    loss = trainer.compute_loss(trainer.model, dict(only_chosen))
    assert loss.item() == 0 and loss.requires_grad
    loss.backward()  # a zero-valued backward that reaches every trainable parameter (DDP needs one on every rank)
    grads = [p.grad for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.count_nonzero(g) == 0 for g in grads)
    assert trainer._metrics["train"]["rpo/skipped_batches"] == [1]
    assert "rewards/margins" not in trainer._metrics["train"]
    balanced = trainer.data_collator([trainer.train_dataset[i] for i in (0, 1, 2, 3)])
    trainer.compute_loss(trainer.model, dict(balanced))
    assert trainer._metrics["train"]["rpo/skipped_batches"] == [1] and trainer._metrics["train"]["rewards/margins"]


def test_unpaired_training_batches_are_balanced(tiny_model_dir, tmp_path):
    trainer, _, _ = build_trainer(
        str(tiny_model_dir), unpaired(6), small_options(loss_type="rpo_unpaired"), tmp_path, device="cpu"
    )
    loader = trainer.get_train_dataloader()
    batches = list(loader)
    assert len(batches) == len(loader) == 3  # 6 desirable, 6 undesirable, 2 + 2 per batch
    for batch in batches:
        assert batch["is_chosen"].tolist() == [True, False, True, False]
    sampler = BalancedBatchSampler([True, False] * 6, batch_size=4, seed=0)
    first = list(sampler)
    sampler.set_epoch(1)
    assert list(sampler) != first and sorted(i for b in first for i in b) == list(range(12))


# ---------------------------------------------------------------------------------------------------
# Prompt truncation (--max_prompt_length)
# ---------------------------------------------------------------------------------------------------
def test_cut_long_prompt_follows_trl_07_and_rpo():
    prompt = list(range(10))
    assert cut_long_prompt(prompt, 5, 4, 12) == [6, 7, 8, 9]  # 10 + 5 > 12: keep the prompt's end
    assert cut_long_prompt(prompt, 2, 4, 12) == prompt  # fits: untouched
    assert cut_long_prompt(prompt, 5, 12, 12) == prompt  # already <= max_prompt_length
    assert cut_long_prompt(prompt, 5, None, 12) == prompt


def test_long_prompts_are_cut_instead_of_dropped(tiny_model_dir, tmp_path):
    records = pairs(4)
    records[0]["prompt"][0]["content"] = "Please explain. " * 60  # about 180 tokens
    plain, _, _ = build_trainer(
        str(tiny_model_dir), records, small_options(max_length=64), tmp_path / "a", device="cpu"
    )
    assert len(plain.train_dataset) == 3  # TRL drops a pair whose prompt alone fills max_length
    options = small_options(max_length=64, max_prompt_length=32)
    assert custom_trainer_class(options) is not None
    cut, _, _ = build_trainer(str(tiny_model_dir), records, options, tmp_path / "b", device="cpu")
    assert len(cut.train_dataset) == 4 and len(cut.train_dataset[0]["prompt_ids"]) == 32
    # the others: cut only when prompt + longer response exceeds max_length (TRL 0.7 / RPO's rule)
    lengths = [(len(r["prompt_ids"]), max(len(r["chosen_ids"]), len(r["rejected_ids"]))) for r in plain.train_dataset]
    assert [len(cut.train_dataset[i]["prompt_ids"]) for i in (1, 2, 3)] == [
        32 if p + c > 64 and p > 32 else p for p, c in lengths
    ]
    assert any(p > 32 and p + c <= 64 for p, c in lengths)  # a prompt over 32 tokens whose pair fits: kept whole
    assert any(p + c > 64 for p, c in lengths)


# ---------------------------------------------------------------------------------------------------
# Script: recipes, resume, bad input, help
# ---------------------------------------------------------------------------------------------------
def test_recipe_values_and_command_line_overrides(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "model_name_or_path: some/model\ndataset: d.jsonl\nloss_type: ipo_sum\nbeta: 0.2\n"
        "use_peft: false\nwarmup_steps: 150\nmax_prompt_length: 256\n"
    )
    script = load_script(SCRIPT)
    args = script.parse_args(["--config", str(recipe), "--beta", "0.3"])
    assert (args.model_name, args.dataset, args.loss_type, args.beta) == ("some/model", "d.jsonl", "ipo_sum", 0.3)
    assert args.use_lora is False and args.warmup_steps == 150 and args.max_prompt_length == 256
    assert script.parse_args(["--config", str(recipe), "--use_peft"]).use_lora is True
    recipe.write_text("dataset: d.jsonl\nrpo_embedding_model: x\nunpaired: true\n")
    with pytest.raises(SystemExit):  # no model anywhere
        script.parse_args(["--config", str(recipe)])


def test_every_recipe_setting_is_a_flag_of_train_preferences():
    from ipo.training.recipes import RECIPE_KEYS

    parser = load_script(SCRIPT).build_parser(default_model="m")
    flags = {option[2:] for action in parser._actions for option in action.option_strings}
    assert set(RECIPE_KEYS) <= flags, set(RECIPE_KEYS) - flags


def test_every_training_recipe_parses_as_flags():
    from test_recipes import RECIPES, TRAINING_RECIPES

    train, sft = load_script(SCRIPT), load_script("DPO/sft.py")
    for path in TRAINING_RECIPES:
        parser = sft if path.name.startswith("sft") else train
        args = parser.parse_args(["--config", str(path), "--model_name_or_path", "m"])
        assert args.dataset and args.use_lora is False and args.dtype == "bfloat16", path.relative_to(RECIPES)


def test_resume_after_a_kill_gives_the_same_adapter(tiny_model_dir, pairs_file, tmp_path, capsys):
    import shutil

    from safetensors.torch import load_file

    argv = small_args(tiny_model_dir, pairs_file, tmp_path, "--loss_type", "kto_pair", "--max_steps", "3")
    assert run_script(SCRIPT, argv) == 0
    run = tmp_path / "run"
    straight = load_file(run / "adapter" / "adapter_model.safetensors")
    summary = json.loads((run / "train_summary.json").read_text())
    assert run_script(SCRIPT, argv) == 0  # finished: nothing is retrained, the summary is the same
    assert json.loads((run / "train_summary.json").read_text())["final_loss"] == summary["final_loss"]
    # what a kill after the checkpoint of step 2 leaves behind: no adapter, no summary, no checkpoint-3
    for name in ("adapter", "checkpoints/checkpoint-3"):
        shutil.rmtree(run / name)
    (run / "train_summary.json").unlink()
    capsys.readouterr()
    assert run_script(SCRIPT, argv) == 0
    err = capsys.readouterr().err
    assert "resuming training from" in err and "checkpoint-2" in err and (run / "checkpoints" / "checkpoint-3").is_dir()
    resumed = load_file(run / "adapter" / "adapter_model.safetensors")
    for name in straight:
        torch.testing.assert_close(resumed[name], straight[name], rtol=1e-5, atol=1e-6)
    assert json.loads((run / "train_summary.json").read_text())["steps"] == 3
    with pytest.raises(IpoError, match="different settings"):  # a resumed run must keep its settings
        load_script(SCRIPT).main(argv + ["--beta", "0.5"])


@pytest.mark.parametrize(
    "extra, status, message",
    [
        (["--loss_type", "dpo"], 2, "invalid choice: 'dpo'"),
        (["--loss_type", "rpo_unpaired"], 1, "pass --unpaired to split each pair"),
        (["--loss_type", "rpo_paired", "--rpo_distance_temperature", "0"], 1, "--rpo_distance_temperature must be > 0"),
        (
            ["--loss_type", "rpo_paired", "--rpo_distance_temperature", "-1"],
            1,
            "--rpo_distance_temperature must be > 0",
        ),
        (["--loss_type", "rpo_unpaired", "--unpaired", "--per_device_train_batch_size", "3"], 1, "even"),
        (["--loss_type", "sigmoid", "--unpaired"], 1, "needs chosen/rejected pairs"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(extra, status, message, tiny_model_dir, pairs_file, tmp_path, capsys):
    argv = small_args(tiny_model_dir, pairs_file, tmp_path / "out", *extra)
    try:
        code = run_script(SCRIPT, argv)
    except SystemExit as exit:
        code = exit.code
    assert code == status
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1 and message in errors[0] and "Traceback" not in errors[0]
    assert not (tmp_path / "out").exists()


def test_unpaired_data_file_trains_rpo_unpaired_directly(tiny_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "unpaired.jsonl", unpaired(4))
    argv = small_args(tiny_model_dir, data, tmp_path, "--loss_type", "rpo_unpaired", "--max_steps", "1")
    assert run_script(SCRIPT, argv) == 0
    assert json.loads((tmp_path / "run" / "train_summary.json").read_text())["steps"] == 1


def test_help(capsys):
    with pytest.raises(SystemExit) as exit:
        load_script(SCRIPT).main(["--help"])
    out = capsys.readouterr().out
    assert exit.value.code == 0
    for flag in (
        "--model_name_or_path",
        "--dataset",
        "--loss_type",
        "--rpo_distance_temperature",
        "--rpo_embedding_model",
        "--unpaired",
        "--config",
        "--max_steps",
        "--merge_adapters",
        "--push_to_hub",
    ):
        assert flag in out, flag


def test_train_summary_reads_the_last_logged_values():
    history = [
        {"loss": 0.7, "rewards/margins": 0.0, "rewards/accuracies": 0.0, "step": 1},
        {"loss": 0.6, "rewards/margins": 0.2, "rewards/accuracies": 0.75, "rpo/skipped_batches": 2, "step": 2},
        {"eval_loss": 0.65, "eval_rewards/margins": 0.1, "step": 2},
        {"train_loss": 0.65, "step": 2},
    ]
    summary = train_summary(history)
    assert summary == {
        "final_loss": 0.6,
        "reward_margin": 0.2,
        "reward_accuracy": 0.75,
        "mean_loss": 0.65,
        "steps": 2,
        "skipped_rpo_batches": 2,
        "eval_loss": 0.65,
        "eval_rewards/margins": 0.1,
    }


# ---------------------------------------------------------------------------------------------------
# Launchers: accelerate launch (one CPU process) and two DDP processes on CPU (gloo through torchrun)
# ---------------------------------------------------------------------------------------------------
def launch(module_argv, script_argv, cwd):
    import os
    import subprocess
    import sys

    from helpers import REPO

    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run(
        [sys.executable, "-m", *module_argv, str(REPO / SCRIPT), *script_argv],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=600,
    )


def test_accelerate_launch_on_one_cpu_process(tiny_model_dir, pairs_file, tmp_path):
    argv = small_args(tiny_model_dir, pairs_file, tmp_path, "--loss_type", "rpo_paired", "--max_steps", "1")
    result = launch(
        [
            "accelerate.commands.launch",
            "--num_processes",
            "1",
            "--cpu",
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
        ],
        argv,
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads((tmp_path / "run" / "train_summary.json").read_text())["steps"] == 1


def test_two_ddp_processes_share_the_data_and_write_once(tiny_model_dir, pairs_file, tmp_path):
    """rpo_unpaired under DDP: each process gets whole balanced micro-batches, one adapter is written."""
    argv = small_args(
        tiny_model_dir, pairs_file, tmp_path, "--loss_type", "rpo_unpaired", "--unpaired", "--merge_adapters"
    )
    result = launch(["torch.distributed.run", "--standalone", "--nproc_per_node", "2"], argv, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "run"
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    # 8 pairs -> 16 examples -> 4 balanced batches of 4, 2 per process: 2 steps are one epoch
    # (one process alone would be at half an epoch)
    assert max(entry["step"] for entry in log) == 2 and log[-1]["epoch"] == 1.0
    assert math.isfinite(json.loads((run / "train_summary.json").read_text())["final_loss"])
    assert (run / "adapter" / "adapter_config.json").is_file() and (run / "merged" / "config.json").is_file()
    assert not list(run.glob(".*saving*")) and not list(run.glob(".merged*"))
