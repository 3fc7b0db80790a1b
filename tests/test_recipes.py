"""Training recipes (recipes/*.yaml) parse, use only known settings, and expand into sweep grids."""

from __future__ import annotations

from pathlib import Path

import pytest

from ipo import IpoError
from ipo.training.losses import LOSS_TYPES
from ipo.training.recipes import RECIPE_KEYS, expand_grid, load_recipe

RECIPES = Path(__file__).resolve().parent.parent / "recipes"
# recipes/paper/ holds grids of benchmark runs (Preference_Comparison/grid.py, tested in test_grid.py), not training.
TRAINING_RECIPES = sorted(
    p for p in RECIPES.rglob("*.yaml") if "accelerate_configs" not in p.parts and "paper" not in p.parts
)
SCAN_BETAS = [0.01, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]


def test_there_are_recipes():
    names = {str(p.relative_to(RECIPES)) for p in TRAINING_RECIPES}
    assert {
        "pref_align_scan/zephyr.yaml",
        "pref_align_scan/openhermes.yaml",
        "rpo/rpo_paired_hh.yaml",
        "rpo/rpo_unpaired_hh.yaml",
        "rpo/rpo_diagonal_hh.yaml",
        "rpo/sft_hh.yaml",
    } <= names


@pytest.mark.parametrize("path", TRAINING_RECIPES, ids=lambda p: str(p.relative_to(RECIPES)))
def test_every_recipe_parses_with_known_settings(path):
    settings, grid = load_recipe(path)
    assert settings and set(settings) <= set(RECIPE_KEYS) and set(grid) <= set(RECIPE_KEYS)
    for name, value in settings.items():
        assert isinstance(value, RECIPE_KEYS[name]), name
    assert settings.get("loss_type", "sigmoid") in LOSS_TYPES
    if settings.get("loss_type") == "rpo_unpaired":
        assert settings["unpaired"] is True and settings["per_device_train_batch_size"] % 2 == 0


@pytest.mark.parametrize("name", ["zephyr", "openhermes"])
def test_pref_align_scan_matches_the_hf_study(name):
    settings, grid = load_recipe(RECIPES / "pref_align_scan" / f"{name}.yaml")
    assert grid == {"loss_type": ["sigmoid", "kto_pair", "ipo"], "beta": SCAN_BETAS}
    expected = {
        "learning_rate": 5e-7,
        "lr_scheduler_type": "cosine",
        "warmup_ratio": 0.1,
        "optim": "adamw_torch",
        "num_train_epochs": 1,
        "per_device_train_batch_size": 8,
        "gradient_accumulation_steps": 2,
        "max_prompt_length": 512,
        "seed": 42,
    }
    assert {k: settings[k] for k in expected} == expected
    points = expand_grid(settings, grid)
    assert len(points) == 30 and len({name for name, _ in points}) == 30
    assert points[0] == ("loss_type-sigmoid__beta-0.01", {**settings, "loss_type": "sigmoid", "beta": 0.01})
    assert points[-1][1]["loss_type"] == "ipo" and points[-1][1]["beta"] == 0.9


def test_rpo_recipe_matches_the_paper_defaults():
    settings, grid = load_recipe(RECIPES / "rpo" / "rpo_paired_hh.yaml")
    expected = {
        "loss_type": "rpo_paired",
        "beta": 0.1,
        "rpo_distance_temperature": 0.5,
        "learning_rate": 5e-7,
        "optim": "rmsprop",
        "lr_scheduler_type": "constant_with_warmup",
        "warmup_steps": 150,
        "max_length": 512,
        "max_prompt_length": 256,
        "max_grad_norm": 10.0,
        "num_train_epochs": 1,
    }
    assert {k: settings[k] for k in expected} == expected and grid == {}


def test_expand_grid_two_by_two():
    points = expand_grid({"beta": 0.1, "seed": 1}, {"loss_type": ["sigmoid", "ipo"], "beta": [0.1, 0.5]})
    assert [name for name, _ in points] == [
        "loss_type-sigmoid__beta-0.1",
        "loss_type-sigmoid__beta-0.5",
        "loss_type-ipo__beta-0.1",
        "loss_type-ipo__beta-0.5",
    ]
    assert points[3][1] == {"beta": 0.5, "seed": 1, "loss_type": "ipo"}
    assert expand_grid({"beta": 0.1}, {}) == [("base", {"beta": 0.1})]
    assert expand_grid({}, {"rpo_embedding_model": ["org/model"]})[0][0] == "rpo_embedding_model-org_model"


@pytest.mark.parametrize(
    "text, message",
    [
        ("lerning_rate: 1.0e-6\n", r"unknown setting 'lerning_rate' \(did you mean 'learning_rate'\?\)"),
        ("learning_rate: 5e-7\nbeta: fast\n", r"beta must be number, got 'fast'"),
        ("per_device_train_batch_size: true\n", r"per_device_train_batch_size must be int, got True"),
        ("loss_type: dpo\n", r"unknown loss_type 'dpo'"),
        ("sweep:\n  beta: 0.1\n", r"sweep.beta must be a non-empty list"),
        ("sweep:\n  betas: [0.1]\n", r"unknown setting 'sweep.betas'"),
        ("- a\n- b\n", r"a recipe is a mapping"),
        ("beta: [\n", r"not valid YAML"),
    ],
)
def test_bad_recipes_give_one_line_errors(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(IpoError, match=message) as error:
        load_recipe(path)
    assert "\n" not in str(error.value)


def test_numbers_without_a_dot_are_numbers(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("learning_rate: 5e-7\n")
    assert load_recipe(path)[0] == {"learning_rate": 5e-7}


@pytest.mark.parametrize("name", ["ddp", "zero3", "fsdp"])
def test_accelerate_configs_parse_with_accelerate(name):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(RECIPES / "accelerate_configs" / f"{name}.yaml"))
    assert config.distributed_type.value == {"ddp": "MULTI_GPU", "zero3": "DEEPSPEED", "fsdp": "FSDP"}[name]
    assert config.mixed_precision == "bf16" and config.num_processes == 8
