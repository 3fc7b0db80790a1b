"""Training arguments from TRL's own dataclasses: every DPOConfig / SFTConfig / ModelConfig field works from the
command line and from a recipe in the alignment-handbook's flat YAML shape, the project's flags and defaults are
unchanged, and an unknown name is one line that names it and the closest known name."""

from __future__ import annotations

import argparse
import json

import pytest
from helpers import load_script, run_script, write_jsonl
from test_train_preferences import pairs

from ipo import IpoError
from ipo.cli.training import add_training_args, options_from_args
from ipo.training.config import build_dpo_config, build_lora_config, build_sft_config, describe_config
from ipo.training.recipes import load_recipe

TRAIN = "DPO/train_preferences.py"
SFT = "DPO/sft.py"

# The shape of an alignment-handbook recipe (recipes/zephyr/dpo/config_full.yaml and friends): TRL names,
# torch_dtype, dataset_name, lists for lora_target_modules and report_to, hub_model_id.
HANDBOOK = """\
model_name_or_path: {model}
torch_dtype: {dtype}
dataset_name: {data}
learning_rate: 5.0e-3
lr_scheduler_type: cosine
warmup_ratio: 0.0
weight_decay: 0.05
adam_beta2: 0.95
save_total_limit: 1
save_strategy: steps
logging_steps: 1
per_device_train_batch_size: 4
lora_r: 8
lora_alpha: 16
lora_target_modules:
- q_proj
- v_proj
report_to:
- none
hub_model_id: my-dpo-model
"""


def handbook(tmp_path, model="some/model", dtype="bfloat16", data="pairs.jsonl", extra=""):
    path = tmp_path / "handbook.yaml"
    path.write_text(HANDBOOK.format(model=model, dtype=dtype, data=data) + extra)
    return path


def parse(argv):
    parser = argparse.ArgumentParser()
    add_training_args(parser)
    parser.add_argument("--seed", type=int, default=42)
    return parser.parse_args(argv)


def test_handbook_recipe_reaches_the_dpo_config(tmp_path):
    args = load_script(TRAIN).parse_args(["--config", str(handbook(tmp_path))])
    assert (args.model_name, args.dataset, args.dtype, args.hub_repo_id) == (
        "some/model",
        "pairs.jsonl",
        "bfloat16",
        "my-dpo-model",
    )
    options = options_from_args(args)
    assert options.save_total_limit == 1 and options.lora_target_modules == "q_proj,v_proj"
    assert options.trainer_overrides == {"weight_decay": 0.05, "adam_beta2": 0.95, "save_strategy": "steps"}
    config = build_dpo_config(options, tmp_path, device="cpu")
    assert (config.weight_decay, config.adam_beta2, config.save_total_limit) == (0.05, 0.95, 1)
    assert config.bf16 is True and config.learning_rate == 5e-3 and config.report_to == []
    # what the recipe does not set keeps the project's value (max_grad_norm 0.3, beta 0.1), else TRL's
    assert config.max_grad_norm == 0.3 and config.beta == 0.1 and config.adam_beta1 == 0.9
    assert build_lora_config(options).target_modules == {"q_proj", "v_proj"}
    described = describe_config(config, None, options)
    assert described["trainer_overrides"] == options.trainer_overrides and described["trainer"]["adam_beta2"] == 0.95


def test_handbook_recipe_reaches_the_sft_config(tmp_path):
    recipe = handbook(tmp_path, extra="packing: true\n")
    options = options_from_args(load_script(SFT).parse_args(["--config", str(recipe)]))
    config = build_sft_config(options, tmp_path, device="cpu")
    assert (config.weight_decay, config.adam_beta2, config.save_total_limit, config.packing) == (0.05, 0.95, 1, True)
    assert config.bf16 is True and config.completion_only_loss is True and config.max_grad_norm == 0.3


def test_trl_flags_on_the_command_line_reach_the_config(tmp_path):
    args = parse(
        [
            "--adam_beta2",
            "0.95",
            "--save_total_limit",
            "2",
            "--weight-decay",
            "0.1",
            "--no_disable_dropout",
            "--bf16",
            "true",
            "--loss_weights",
            "1",
            "--lr_scheduler_kwargs",
            '{"num_cycles": 2}',
        ]
    )
    config = build_dpo_config(options_from_args(args), tmp_path, device="cpu")
    assert (config.adam_beta2, config.save_total_limit, config.weight_decay) == (0.95, 2, 0.1)
    assert config.disable_dropout is False and config.bf16 is True and config.loss_weights == [1.0]
    assert config.lr_scheduler_kwargs == {"num_cycles": 2}
    # the command line wins over the recipe
    recipe = handbook(tmp_path)
    args = load_script(TRAIN).parse_args(["--config", str(recipe), "--adam_beta2", "0.98", "--torch_dtype", "float32"])
    assert args.adam_beta2 == 0.98 and args.dtype == "float32" and args.weight_decay == 0.05


def test_no_trl_setting_changes_nothing(tmp_path):
    args = parse([])
    assert not any(hasattr(args, name) for name in ("adam_beta2", "weight_decay", "bf16", "dtype", "disable_dropout"))
    options = options_from_args(args)
    assert options.trainer_overrides == {}
    assert "trainer_overrides" not in describe_config(build_dpo_config(options, tmp_path, device="cpu"), None, options)


def test_sft_takes_sft_config_fields_and_dpo_does_not():
    sft = load_script(SFT).build_parser(default_model="m")
    train = load_script(TRAIN).build_parser(default_model="m")
    assert "--packing" in sft._option_string_actions and "--packing" not in train._option_string_actions
    assert "--rpo_alpha" not in sft._option_string_actions and "--disable_dropout" in train._option_string_actions


@pytest.mark.parametrize(
    "text, named, closest",
    [
        ("adam_beta3: 0.9\n", "'adam_beta3'", "'adam_beta2'"),
        ("weight_decya: 0.1\n", "'weight_decya'", "'weight_decay'"),
        ("sweep:\n  adam_betas2: [0.9]\n", "'sweep.adam_betas2'", "'adam_beta2'"),
    ],
)
def test_unknown_recipe_key_is_one_line_naming_the_closest(tmp_path, text, named, closest):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(IpoError) as error:
        load_recipe(path)
    message = str(error.value)
    assert "\n" not in message and named in message and f"did you mean {closest}" in message


def test_unknown_key_through_the_script_is_one_line(tmp_path, capsys):
    recipe = handbook(tmp_path, extra="adam_beta3: 0.9\n")
    assert run_script(TRAIN, ["--config", str(recipe)]) == 1
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 1 and "'adam_beta3'" in errors[0] and "'adam_beta2'" in errors[0]


def test_unknown_flag_is_one_line_naming_the_closest(capsys):
    with pytest.raises(SystemExit) as exit:
        load_script(TRAIN).parse_args(["--model_name_or_path", "m", "--dataset", "d.jsonl", "--adam_beta3", "0.9"])
    assert exit.value.code == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 1 and "--adam_beta3" in errors[0] and "--adam_beta2" in errors[0]


@pytest.mark.parametrize(
    "text, message",
    [
        ("adam_beta2: fast\n", "adam_beta2 must be a number, got 'fast'"),
        ("hub_token: hf_x\n", "HF_TOKEN"),
        ("load_in_8bit: true\n", "load_in_8bit: only False is supported"),
        ("torch_dtype: bfloat16\ndtype: float32\n", "torch_dtype and dtype are the same setting"),
    ],
)
def test_bad_trl_settings_are_one_line(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(IpoError, match=message) as error:
        load_recipe(path)
    assert "\n" not in str(error.value)


def test_settings_accepted_at_the_projects_value_only():
    assert options_from_args(parse(["--bnb_4bit_quant_type", "nf4"])).trainer_overrides == {
        "bnb_4bit_quant_type": "nf4"
    }
    with pytest.raises(IpoError, match="bnb_4bit_quant_type: only 'nf4'"):
        options_from_args(parse(["--bnb_4bit_quant_type", "fp4"]))


def test_handbook_recipe_trains_and_records_its_settings(tiny_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "pairs.jsonl", pairs(8))
    recipe = handbook(tmp_path, model=str(tiny_model_dir), dtype="float32", data=str(data))
    argv = ["--config", str(recipe), "--max_steps", "1", "--output_dir", str(tmp_path / "out"), "--run_name", "run"]
    assert run_script(TRAIN, argv) == 0
    run = tmp_path / "out" / "run"
    trainer = json.loads((run / "dpo_config.json").read_text())["trainer"]
    assert (trainer["weight_decay"], trainer["adam_beta2"], trainer["save_total_limit"]) == (0.05, 0.95, 1)
    args = json.loads((run / "config.json").read_text())["args"]
    assert args["adam_beta2"] == 0.95 and args["weight_decay"] == 0.05 and "adam_beta1" not in args


def test_a_sweep_grid_over_a_trl_field(tmp_path, capsys):
    recipe = tmp_path / "grid.yaml"
    recipe.write_text("dataset: d.jsonl\nsweep:\n  weight_decay: [0.0, 0.1]\n")
    argv = ["--config", str(recipe), "--output_dir", str(tmp_path), "--model_name_or_path", "m", "--dry_run"]
    assert run_script("DPO/sweep.py", argv) == 0
    commands = capsys.readouterr().out.strip().splitlines()
    assert len(commands) == 2 and "--weight_decay 0.0" in commands[0] and "--weight_decay 0.1" in commands[1]
