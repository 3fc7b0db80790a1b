"""DPO/sft.py and ipo.training.preference_data.load_sft_data: data layouts, two SFT steps, adapter, merge, --no_lora."""

from __future__ import annotations

import json
import math

import pytest
import torch
from helpers import load_script, run_script, write_jsonl
from test_train_preferences import pairs

from ipo import IpoError
from ipo.training.preference_data import ALPACA_PROMPT, ALPACA_PROMPT_WITH_INPUT, load_sft_data

SCRIPT = "DPO/sft.py"
DOLLY = [
    {"instruction": "Name a primary colour.", "context": "", "response": "Red.", "category": "open_qa"},
    {"instruction": "Summarise the text.", "context": "The sky is blue.", "response": "Blue sky.", "category": "summ"},
    {"instruction": "Say nothing.", "context": "", "response": "  ", "category": "x"},
]


def test_sft_data_layouts(tmp_path):
    dolly = load_sft_data(str(write_jsonl(tmp_path / "dolly.jsonl", DOLLY)))
    assert dolly.format == "instruction" and dolly.dropped == {"empty instruction or response": 1}
    assert dolly.records == [
        {"prompt": ALPACA_PROMPT.format(instruction="Name a primary colour."), "completion": "Red."},
        {
            "prompt": ALPACA_PROMPT_WITH_INPUT.format(instruction="Summarise the text.", input="The sky is blue."),
            "completion": "Blue sky.",
        },
    ]
    assert dolly.records[1]["prompt"].endswith("### Input:\nThe sky is blue.\n\n### Response:\n")
    chat = load_sft_data(str(tmp_path / "dolly.jsonl"), messages=True)
    assert chat.records[1] == {
        "prompt": [{"role": "user", "content": "Summarise the text.\n\nThe sky is blue."}],
        "completion": [{"role": "assistant", "content": "Blue sky."}],
    }
    alpaca = load_sft_data(
        str(write_jsonl(tmp_path / "alpaca.jsonl", [{"instruction": "Add 1 and 1.", "input": "", "output": "2"}]))
    )
    assert alpaca.records == [{"prompt": ALPACA_PROMPT.format(instruction="Add 1 and 1."), "completion": "2"}]
    preference = load_sft_data(str(write_jsonl(tmp_path / "pairs.jsonl", pairs(3))))
    assert preference.format.startswith("preference") and [r["completion"] for r in preference.records] == [
        p["chosen"] for p in pairs(3)
    ]
    hh = [{"chosen": "\n\nHuman: Hi\n\nAssistant: Hello!", "rejected": "\n\nHuman: Hi\n\nAssistant: Go away."}]
    hh_data = load_sft_data(str(write_jsonl(tmp_path / "hh.jsonl", hh)))
    assert hh_data.records == [{"prompt": "\n\nHuman: Hi\n\nAssistant:", "completion": " Hello!"}]
    unpaired = [
        {"prompt": "Q", "completion": "good", "label": True},
        {"prompt": "Q", "completion": "bad", "label": False},
    ]
    kept = load_sft_data(str(write_jsonl(tmp_path / "unpaired.jsonl", unpaired)))
    assert kept.records == [{"prompt": "Q", "completion": "good"}]  # only desirable examples are imitated
    plain = load_sft_data(str(write_jsonl(tmp_path / "pc.jsonl", [{"prompt": "Q", "completion": "A"}])))
    assert plain.format == "prompt_completion" and plain.records == [{"prompt": "Q", "completion": "A"}]
    with pytest.raises(IpoError, match="row 0 has no column 'completion'"):
        load_sft_data(
            str(write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "Q", "answer": "A"}])), format="prompt_completion"
        )
    with pytest.raises(IpoError, match="unknown SFT data format"):
        load_sft_data(str(tmp_path / "pc.jsonl"), format="csv")


@pytest.fixture(scope="module")
def sft_run(tiny_model_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("sft")
    data = write_jsonl(folder / "pairs.jsonl", pairs(8))
    argv = [
        "--model_name_or_path",
        str(tiny_model_dir),
        "--dataset",
        str(data),
        "--output_dir",
        str(folder),
        "--run_name",
        "sft",
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
        "--merge_adapters",
    ]
    assert run_script(SCRIPT, argv) == 0
    return folder / "sft", argv


def test_two_sft_steps_save_an_adapter_and_merge(sft_run, tiny_model_dir):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run, _ = sft_run
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["stage"] == "sft" and summary["steps"] == 2 and math.isfinite(summary["final_loss"])
    config = json.loads((run / "sft_config.json").read_text())
    assert config["n_train_examples"] == 8 and config["lora"]["r"] == 8 and config["trainer"]["completion_only_loss"]
    adapter = load_file(run / "adapter" / "adapter_model.safetensors")
    assert any("lora_B" in name and tensor.abs().sum() > 0 for name, tensor in adapter.items())
    merged = AutoModelForCausalLM.from_pretrained(run / "merged", dtype=torch.float32).eval()
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    ids = AutoTokenizer.from_pretrained(run / "merged")("What is 3 plus 3?", return_tensors="pt").input_ids
    with torch.no_grad():
        assert not torch.allclose(merged(ids).logits, base(ids).logits)
    assert not (run / "merged" / "adapter_config.json").exists()


def test_the_merged_sft_model_is_a_dpo_starting_point(sft_run, tmp_path):
    run, _ = sft_run
    data = write_jsonl(tmp_path / "pairs.jsonl", pairs(4))
    argv = [
        "--model_name_or_path",
        str(run / "merged"),
        "--dataset",
        str(data),
        "--output_dir",
        str(tmp_path),
        "--run_name",
        "rpo",
        "--loss_type",
        "rpo_diagonal",
        "--max_steps",
        "1",
        "--per_device_train_batch_size",
        "4",
        "--lora_r",
        "8",
        "--lora_alpha",
        "16",
    ]
    assert run_script("DPO/train_preferences.py", argv) == 0
    assert json.loads((tmp_path / "rpo" / "train_summary.json").read_text())["steps"] == 1


def test_rerun_is_not_retrained(sft_run, capsys):
    run, argv = sft_run
    stamp = (run / "adapter" / "adapter_model.safetensors").stat().st_mtime_ns
    capsys.readouterr()
    assert run_script(SCRIPT, argv) == 0
    assert "SFT already done" in capsys.readouterr().err
    assert (run / "adapter" / "adapter_model.safetensors").stat().st_mtime_ns == stamp


def test_full_fine_tuning_saves_a_model(tiny_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "dolly.jsonl", DOLLY[:2] * 2)
    argv = [
        "--model_name_or_path",
        str(tiny_model_dir),
        "--dataset",
        str(data),
        "--output_dir",
        str(tmp_path),
        "--run_name",
        "full",
        "--no_lora",
        "--max_steps",
        "1",
        "--per_device_train_batch_size",
        "2",
    ]
    assert run_script(SCRIPT, argv) == 0
    assert (tmp_path / "full" / "model" / "config.json").is_file() and not (tmp_path / "full" / "adapter").exists()


def test_help_hides_the_preference_flags(capsys):
    with pytest.raises(SystemExit) as exit:
        load_script(SCRIPT).main(["--help"])
    out = capsys.readouterr().out
    assert exit.value.code == 0 and "--dataset_format" in out and "--merge_adapters" in out and "--lora_r" in out
    assert "--rpo_distance_temperature" not in out and "--beta" not in out
