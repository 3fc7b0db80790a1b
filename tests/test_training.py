"""ipo.training (options, config, dpo, merge): the paper's defaults reach TRL, LoRA trains only the adapter, resume, merge, 4-bit."""

import argparse
import json

import pytest
import torch

from ipo import IpoError
from ipo.cli.training import add_training_args, options_from_args
from ipo.training.config import build_dpo_config, build_lora_config
from ipo.training.dpo import build_trainer, train_dpo
from ipo.training.merge import merge_adapter, read_adapter_config
from ipo.training.options import TrainingOptions, check_options


def conversational_pairs(n=8):
    return [
        {
            "prompt": [{"role": "user", "content": f"What is {i} plus {i}?"}],
            "chosen": [{"role": "assistant", "content": f"The answer is {2 * i}."}],
            "rejected": [{"role": "assistant", "content": "Hello, how are you today?"}],
        }
        for i in range(n)
    ]


def small_options(**overrides):
    values = dict(
        max_steps=2,
        per_device_train_batch_size=2,
        per_device_eval_batch_size=2,
        lora_r=8,
        lora_alpha=16,
        learning_rate=5e-3,
        warmup_ratio=0.0,
        logging_steps=1,
        save_steps=1,
    )
    values.update(overrides)
    return TrainingOptions(**values)


def parse(argv):
    parser = argparse.ArgumentParser()
    add_training_args(parser)
    parser.add_argument("--seed", type=int, default=42)
    return parser.parse_args(argv)


def test_defaults_are_the_papers(tmp_path):
    options = options_from_args(parse([]))
    config = build_dpo_config(options, tmp_path, device="cpu")
    assert config.loss_type == ["sigmoid"] and config.beta == 0.1
    assert config.learning_rate == 5e-5 and config.lr_scheduler_type == "cosine" and config.warmup_steps == 0.1
    assert config.per_device_train_batch_size == 6 and config.num_train_epochs == 1 and config.max_grad_norm == 0.3
    assert config.max_length == 1024 and config.truncation_mode == "keep_start"
    # CPU: fp32 weights, no bf16 autocast (TRL's bf16 default raises on CPU), nothing reported anywhere
    assert config.bf16 is False and config.fp16 is False and config.use_cpu is True
    assert config.report_to == [] and config.push_to_hub is False and config.save_strategy == "steps"
    lora = build_lora_config(options)
    assert (lora.r, lora.lora_alpha, lora.lora_dropout, lora.target_modules) == (256, 128, 0.05, "all-linear")


def test_dpo_beta_and_loss_type_reach_the_trainer(tiny_model_dir, tmp_path):
    options = options_from_args(parse(["--dpo_beta", "0.05", "--lora_r", "4", "--lora_alpha", "8"]))
    assert options.beta == 0.05 and parse(["--beta", "0.2"]).beta == 0.2
    trainer, config, _ = build_trainer(str(tiny_model_dir), conversational_pairs(4), options, tmp_path, device="cpu")
    assert trainer.args.beta == 0.05 and trainer.beta == 0.05
    assert trainer.args.loss_type == ["sigmoid"] and trainer.loss_types == ["sigmoid"]


def test_wandb_project_is_used_only_with_report_to_wandb(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    build_dpo_config(options_from_args(parse(["--wandb_project", "p1"])), tmp_path, device="cpu")
    assert "WANDB_PROJECT" not in __import__("os").environ
    config = build_dpo_config(
        options_from_args(parse(["--wandb_project", "p1", "--report_to", "wandb"])), tmp_path, device="cpu"
    )
    assert config.report_to == ["wandb"] and __import__("os").environ["WANDB_PROJECT"] == "p1"


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"loss_type": "dpo"}, "unknown --loss_type"),
        ({"lora_target_modules": "q_proj,lm_head"}, "lm_head"),
        ({"beta": 0.0}, "--beta must be positive"),
        ({"warmup_ratio": 1.5}, "--warmup_ratio"),
    ],
)
def test_bad_options_fail_early(overrides, message):
    with pytest.raises(IpoError, match=message):
        check_options(TrainingOptions(**overrides))


def test_lora_step_freezes_the_base_and_moves_the_adapter(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    options = small_options(lora_target_modules="q_proj,v_proj,gate_proj")
    trainer, _, _ = build_trainer(str(tiny_model_dir), conversational_pairs(8), options, tmp_path, device="cpu")
    trainable = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    after = dict(trainer.model.named_parameters())
    moved = {n for n in before if not torch.equal(before[n], after[n].detach())}
    assert moved and moved <= trainable
    assert any("lora_B" in n for n in moved)  # B starts at zero, so the adapter now changes the output
    original = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).state_dict()
    base = trainer.model.get_base_model().state_dict()
    for name, weight in original.items():
        peft_name = (
            name.replace(".weight", ".base_layer.weight")
            if any(m in name for m in ("q_proj", "v_proj", "gate_proj"))
            else name
        )
        assert torch.equal(weight, base[peft_name]), name


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("trained")
    result = train_dpo(
        str(tiny_model_dir),
        conversational_pairs(8),
        small_options(max_steps=3),
        out,
        eval_records=conversational_pairs(2),
        device="cpu",
        extra_config={"round": 1},
    )
    return out, result


def test_train_writes_config_adapter_and_log(trained, tiny_model_dir):
    out, result = trained
    assert result.adapter_dir == out / "adapter" and not result.skipped and result.n_train == 8
    adapter_config = read_adapter_config(result.adapter_dir)
    assert adapter_config["base_model_name_or_path"] == str(tiny_model_dir) and adapter_config["r"] == 8
    assert (result.adapter_dir / "tokenizer_config.json").is_file()  # the tokenizer travels with the adapter
    config = json.loads((out / "dpo_config.json").read_text())
    assert config["beta"] == 0.1 and config["loss_type"] == ["sigmoid"] and config["max_length"] == 1024
    assert (
        config["lr_scheduler_type"] == "cosine"
        and config["max_grad_norm"] == 0.3
        and config["weights_dtype"] == "float32"
    )
    assert config["lora"] == {
        "r": 8,
        "alpha": 16,
        "dropout": 0.05,
        "target_modules": "all-linear",
        "bias": "none",
        "resolved_modules": ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"],
    }  # never lm_head
    assert config["round"] == 1 and config["n_eval_pairs"] == 2 and config["trainer"]["beta"] == 0.1
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert max(entry["step"] for entry in log) == 3 and any("eval_loss" in entry for entry in log)
    assert "eval_loss" in result.metrics and result.metrics["train_loss"] > 0
    # a finished stage is not redone
    assert train_dpo(str(tiny_model_dir), conversational_pairs(8), small_options(), out).skipped


def test_resume_from_the_last_checkpoint_gives_the_same_adapter(trained, tiny_model_dir, tmp_path):
    from safetensors.torch import load_file
    from transformers import TrainerCallback

    class Crash(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.global_step == 2:
                raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        train_dpo(
            str(tiny_model_dir),
            conversational_pairs(8),
            small_options(max_steps=3),
            tmp_path,
            eval_records=conversational_pairs(2),
            device="cpu",
            callbacks=[Crash()],
        )
    assert not (tmp_path / "adapter").exists() and (tmp_path / "checkpoints" / "checkpoint-2").is_dir()
    result = train_dpo(
        str(tiny_model_dir),
        conversational_pairs(8),
        small_options(max_steps=3),
        tmp_path,
        eval_records=conversational_pairs(2),
        device="cpu",
    )
    assert result.resumed_from.endswith("checkpoint-2")
    resumed = load_file(result.adapter_dir / "adapter_model.safetensors")
    straight = load_file(trained[1].adapter_dir / "adapter_model.safetensors")
    assert resumed.keys() == straight.keys()
    for name in straight:
        torch.testing.assert_close(resumed[name], straight[name], rtol=1e-5, atol=1e-6)


def test_merge_reload_gives_identical_logits(trained, tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, result = trained
    merged = merge_adapter(result.adapter_dir, tmp_path / "merged")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32).eval()
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "merged")
    ids = tokenizer("What is 3 plus 3? The answer is 6.", return_tensors="pt").input_ids
    with torch.no_grad():
        in_memory, from_disk, untrained = merged(ids).logits, reloaded(ids).logits, base(ids).logits
    assert torch.equal(in_memory, from_disk)
    assert not torch.allclose(from_disk, untrained)  # the adapter did something
    assert not (tmp_path / "merged" / "adapter_config.json").exists()
    assert (result.adapter_dir / "adapter_config.json").is_file()  # the adapter folder is left as it was


def test_merge_refuses_bad_adapter_folders(trained, tmp_path):
    (tmp_path / "not_an_adapter").mkdir()
    with pytest.raises(IpoError, match="no adapter_config.json"):
        merge_adapter(tmp_path / "not_an_adapter", tmp_path / "merged")
    with pytest.raises(IpoError, match="another folder"):
        merge_adapter(trained[1].adapter_dir, trained[1].adapter_dir)
    assert not (tmp_path / "merged").exists()


def test_qlora_4bit_two_steps_on_cpu(tiny_model_dir, tmp_path):
    pytest.importorskip("bitsandbytes")
    trainer, _, _ = build_trainer(
        str(tiny_model_dir), conversational_pairs(4), small_options(load_in_4bit=True), tmp_path, device="cpu"
    )
    base = trainer.model.get_base_model()
    assert getattr(base, "is_loaded_in_4bit", False)
    assert type(base.model.layers[0].self_attn.q_proj.base_layer).__name__ == "Linear4bit"
    trainer.train()
    assert trainer.state.global_step == 2 and trainer.state.log_history[-1]["train_loss"] > 0


def test_memory_flags_train_too(tiny_model_dir, tmp_path):
    options = small_options(max_steps=1, gradient_checkpointing=True, precompute_ref_log_probs=True)
    trainer, config, _ = build_trainer(str(tiny_model_dir), conversational_pairs(4), options, tmp_path, device="cpu")
    assert config.activation_checkpointing and config.precompute_ref_log_probs
    assert "ref_chosen_logps" in trainer.train_dataset.column_names  # computed once, before training
    trainer.train()
    assert trainer.state.global_step == 1
