"""Training that can be trusted (issues 11 and 14, training side): a checkpoint cut off by a kill never blocks a
resume, train_loss covers the whole run after one, a file's layout is decided from all its rows, merge_peft never
deletes the run it merges from and cleans up after a killed merge, one run per folder, flags checked before any
load; full fine-tuning in half precision keeps float32 master weights, RPO's encoder stays whole under ZeRO-3,
merges run in float32, native bf16 only. One test per promise, on the tiny model."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil

import pytest
import torch
from helpers import run_script, write_jsonl
from test_train_preferences import pairs, small_args

from ipo import IpoError
from ipo.training import dpo as dpo_module
from ipo.training import merge as merge_module
from ipo.training.config import resolve_precision, training_weights_dtype
from ipo.training.distributed import fp32_master_launcher
from ipo.training.dpo import build_trainer, resume_checkpoint, train_dpo, whole_run_train_loss
from ipo.training.merge import dtype_for_merge, merge_adapter
from ipo.training.options import TrainingOptions
from ipo.training.preference_data import load_preference_data, load_sft_data

TRAIN = "DPO/train_preferences.py"
SFT = "DPO/sft.py"
MERGE = "DPO/merge_peft.py"


def options(**overrides):
    values = dict(
        max_steps=3,
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


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


def no_load(*args, **kwargs):
    raise AssertionError("a model was loaded before the checks")


def hold_lock(folder):
    """Another process's lock on a run folder (an flock through another open file: the same conflict)."""
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT, 0o666)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.pwrite(fd, json.dumps({"pid": 4242, "host": "elsewhere", "started": "earlier"}).encode(), 0)
    return fd


def adapter_weights(folder):
    from safetensors.torch import load_file

    return load_file(folder / "adapter_model.safetensors")


def assert_same_weights(ours, theirs):
    assert ours.keys() == theirs.keys()
    for name in theirs:
        torch.testing.assert_close(ours[name], theirs[name], rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------------
# Issue 11, item 3: a kill during a checkpoint save never blocks the run; item 10: train_loss after a resume
# ---------------------------------------------------------------------------------------------------
def test_train_dpo_resumes_from_the_newest_complete_checkpoint(tiny_model_dir, tmp_path, caplog):
    from transformers import TrainerCallback

    class Kill(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.global_step == 2:
                raise RuntimeError("killed")

    straight = train_dpo(str(tiny_model_dir), pairs(8), options(max_steps=4), tmp_path / "straight", device="cpu")
    run = tmp_path / "killed"
    with pytest.raises(RuntimeError, match="killed"):
        train_dpo(str(tiny_model_dir), pairs(8), options(max_steps=4), run, device="cpu", callbacks=[Kill()])
    # the save of step 3 was cut off after the weights, before trainer_state.json
    shutil.copytree(run / "checkpoints" / "checkpoint-2", run / "checkpoints" / "checkpoint-3")
    (run / "checkpoints" / "checkpoint-3" / "trainer_state.json").unlink()
    assert resume_checkpoint(run / "checkpoints").endswith("checkpoint-2")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="ipo"):
        result = train_dpo(str(tiny_model_dir), pairs(8), options(max_steps=4), run, device="cpu")
    skipped = [r.getMessage() for r in caplog.records if "incomplete checkpoint" in r.getMessage()]
    assert len(skipped) == 1 and "checkpoint-3 (no trainer_state.json)" in skipped[0] and "checkpoint-2" in skipped[0]
    assert result.resumed_from.endswith("checkpoint-2")
    assert_same_weights(adapter_weights(result.adapter_dir), adapter_weights(straight.adapter_dir))
    # train_loss covers steps 1-4, not only steps 3-4 (the resumed session), though checkpoint-2 is rotated away
    assert not (run / "checkpoints" / "checkpoint-2").exists()
    assert result.metrics["train_loss"] == pytest.approx(straight.metrics["train_loss"], rel=1e-5)
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    session = sum(entry["loss"] for entry in log if entry.get("step", 0) > 2 and "loss" in entry) / 2
    assert abs(straight.metrics["train_loss"] - session) > 1e-3  # what the resumed trainer alone reported
    assert log[-1]["train_loss"] == result.metrics["train_loss"]


def test_every_checkpoint_incomplete_starts_over(tmp_path, caplog):
    root = tmp_path / "checkpoints"
    (root / "checkpoint-4").mkdir(parents=True)  # empty: killed right after mkdir
    (root / "checkpoint-2").mkdir()
    (root / "checkpoint-2" / "trainer_state.json").write_text('{"global_step": 2, "log_hi')  # cut off
    (root / "checkpoint-2" / "adapter_model.safetensors").write_bytes(b"weights")
    with caplog.at_level(logging.WARNING, logger="ipo"):
        assert resume_checkpoint(root) is None
    assert "checkpoint-4 (no trainer_state.json), checkpoint-2 (trainer_state.json is cut off)" in caplog.text
    assert "starting from the beginning" in caplog.text
    (root / "checkpoint-1").mkdir()
    (root / "checkpoint-1" / "trainer_state.json").write_text('{"global_step": 1}')
    (root / "checkpoint-1" / "model.safetensors.index.json").write_text('{"weight_map": {"a": "model-1.safetensors"}}')
    assert resume_checkpoint(root) is None  # its shard is missing
    (root / "checkpoint-1" / "model-1.safetensors").write_bytes(b"weights")
    assert resume_checkpoint(root).endswith("checkpoint-1")


def test_whole_run_train_loss_from_the_log_history():
    # steps 1-3 logged (windows 0-1 and 1-3), checkpoint at 4 with step 4 never logged, killed; the resumed
    # session ran steps 5-7, logged 5-6 and reported train_loss 5.0 over its own 3 steps
    history = [
        {"loss": 1.0, "step": 1},
        {"loss": 2.0, "step": 3},
        {"eval_loss": 9.0, "step": 3},
        {"loss": 4.0, "step": 6},
        {"train_loss": 5.0, "step": 7},
    ]
    # 1*1 + 2*2 (steps 1-3) + 4*2 (steps 5-6) + (15 - 8) (step 7) over 6 steps with a known loss
    assert whole_run_train_loss(history, 5.0, resumed_step=4, global_step=7) == pytest.approx(20 / 6)
    # not resumed: the Trainer's own average, whatever was logged
    assert whole_run_train_loss(history[:2], 1.5, resumed_step=0, global_step=4) == pytest.approx(1.5)


@pytest.mark.parametrize("script, model_dir", [(TRAIN, "adapter"), (SFT, "adapter")])
def test_the_scripts_resume_past_an_interrupted_save(script, model_dir, tiny_model_dir, tmp_path, capsys):
    data = write_jsonl(tmp_path / "pairs.jsonl", pairs(8))
    argv = small_args(tiny_model_dir, data, tmp_path / "out", "--max_steps", "3")
    assert run_script(script, argv) == 0
    run = tmp_path / "out" / "run"
    straight = adapter_weights(run / model_dir)
    summary = json.loads((run / "train_summary.json").read_text())
    # a kill while checkpoint-3 was being saved: no adapter, no summary, an empty checkpoint-3
    shutil.rmtree(run / model_dir)
    (run / "train_summary.json").unlink()
    shutil.rmtree(run / "checkpoints" / "checkpoint-3")
    (run / "checkpoints" / "checkpoint-3").mkdir()
    capsys.readouterr()
    assert run_script(script, argv) == 0
    err = capsys.readouterr().err
    assert err.count("incomplete checkpoint") == 1 and "checkpoint-3 (no trainer_state.json)" in err
    assert "from " + str(run / "checkpoints" / "checkpoint-2") in err
    assert_same_weights(adapter_weights(run / model_dir), straight)
    resumed = json.loads((run / "train_summary.json").read_text())
    assert resumed["steps"] == 3 and resumed["mean_loss"] == pytest.approx(summary["mean_loss"], rel=1e-5)


# ---------------------------------------------------------------------------------------------------
# Issue 11, item 5: a file's layout comes from all its rows
# ---------------------------------------------------------------------------------------------------
def standard_rows(n):
    """Pairs whose chosen and rejected share a beginning: read as implicit pairs, they would train on nonsense."""
    return [
        {"prompt": f"What is {i} plus {i}?", "chosen": f"The answer is {2 * i}.", "rejected": f"The answer is {i}."}
        for i in range(1, n + 1)
    ]


def test_a_null_prompt_in_the_first_row_is_refused(tiny_model_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(dpo_module, "load_model", no_load)
    rows = standard_rows(4)
    rows[0]["prompt"] = None
    data = write_jsonl(tmp_path / "pairs.jsonl", rows)
    assert run_script(TRAIN, small_args(tiny_model_dir, data, tmp_path / "out")) == 1
    line = one_error_line(capsys)
    assert "row 0: column 'prompt' must be text" in line and "NoneType" in line
    assert not (tmp_path / "out").exists()
    # the same null anywhere else: the same refusal, naming its row
    rows = standard_rows(4)
    rows[2]["prompt"] = None
    with pytest.raises(IpoError, match="row 2: column 'prompt' must be text"):
        load_preference_data(str(write_jsonl(tmp_path / "p2.jsonl", rows)))


def test_a_file_that_mixes_layouts_is_refused(tmp_path):
    # half and half: the first row's layout (implicit) wins the tie, and the standard row is not read silently
    rows = [{"prompt": None, "chosen": "Paris is the capital.", "rejected": "Paris is a city."}, standard_rows(1)[0]]
    with pytest.raises(IpoError, match=r"row 1 is a standard row, but most rows of the file are implicit") as error:
        load_preference_data(str(write_jsonl(tmp_path / "tie.jsonl", rows)))
    assert "\n" not in str(error.value)
    # layouts read the same way (HH dialogues among implicit pairs) still load; a forced format reads every row
    hh = {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello!", "rejected": "\n\nHuman: Hi\n\nAssistant: Go away."}
    mixed = write_jsonl(tmp_path / "hh.jsonl", [hh, hh, rows[0]])
    assert load_preference_data(str(mixed)).format == "hh"
    assert (
        load_preference_data(str(write_jsonl(tmp_path / "forced.jsonl", rows)), format="implicit").format == "implicit"
    )
    # SFT: an unpaired (labelled) row among prompt/completion rows would be imitated, rejected or not
    sft_rows = [
        {"prompt": "Q", "completion": "A"},
        {"prompt": "Q2", "completion": "A2"},
        {"prompt": "Q", "completion": "bad", "label": False},
    ]
    with pytest.raises(IpoError, match="row 2 is a preference row, but most rows of the file are prompt_completion"):
        load_sft_data(str(write_jsonl(tmp_path / "sft.jsonl", sft_rows)))


# ---------------------------------------------------------------------------------------------------
# Issue 11, items 8 and 10: merge_peft never deletes the run, cleans a killed merge; locks; names; early checks
# ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def adapter_run(tiny_model_dir, tmp_path_factory):
    run = tmp_path_factory.mktemp("R") / "run1"
    train_dpo(str(tiny_model_dir), pairs(4), options(max_steps=1, lora_r=4, lora_alpha=8), run, device="cpu")
    return run


def test_merge_peft_refuses_an_output_that_holds_the_adapter(adapter_run, capsys, monkeypatch):
    monkeypatch.setattr(merge_module, "load_model", no_load)
    before = sorted(str(p.relative_to(adapter_run)) for p in adapter_run.rglob("*"))
    adapter = adapter_run / "adapter"
    for output, message in (
        (adapter_run, "contains the adapter"),
        (adapter_run.parent, "contains the adapter"),
        (adapter / "merged", "lies inside the adapter folder"),
        (adapter, "another folder than the adapter"),
    ):
        argv = ["--model_dir", str(adapter), "--output_dir", str(output), "--overwrite"]
        assert run_script(MERGE, argv) == 1, output
        assert message in one_error_line(capsys), output
    assert sorted(str(p.relative_to(adapter_run)) for p in adapter_run.rglob("*")) == before  # the run is intact


def test_merge_peft_cleans_a_killed_merge_and_takes_the_lock(adapter_run, capsys, monkeypatch):
    adapter = adapter_run / "adapter"
    leftovers = [adapter_run / ".adapter-merged.k2j4h5g6.tmp", adapter_run / ".adapter-merged.a1b2c3d4"]
    for folder in leftovers:
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"half a model")
    unrelated = adapter_run / ".train_log.jsonl.x9y8z7w6.tmp"
    unrelated.write_text("another write's leftover")
    fd = hold_lock(adapter_run)
    try:
        with monkeypatch.context() as patch:
            patch.setattr(merge_module, "load_model", no_load)
            assert run_script(MERGE, ["--model_dir", str(adapter)]) == 1
            line = one_error_line(capsys)
            assert "in use by another run (PID 4242 on host elsewhere" in line
    finally:
        os.close(fd)
    assert all(folder.exists() for folder in leftovers)  # nothing is touched while another process holds the folder
    assert run_script(MERGE, ["--model_dir", str(adapter)]) == 0
    assert (adapter_run / "adapter-merged" / "config.json").is_file()
    assert not any(folder.exists() for folder in leftovers) and unrelated.exists()


@pytest.mark.parametrize("script", [TRAIN, SFT])
def test_a_run_folder_in_use_is_refused_before_any_load(script, tiny_model_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(dpo_module, "load_model", no_load)  # SFT loads through dpo.load_policy_model too
    data = write_jsonl(tmp_path / "pairs.jsonl", pairs(4))
    fd = hold_lock(tmp_path / "out" / "run")
    try:
        assert run_script(script, small_args(tiny_model_dir, data, tmp_path / "out")) == 1
        assert "in use by another run (PID 4242 on host elsewhere" in one_error_line(capsys)
    finally:
        os.close(fd)
    assert sorted(p.name for p in (tmp_path / "out" / "run").iterdir()) == [".lock"]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--max_steps", "0"], "--max_steps must be positive (or -1"),
        (["--max_steps", "-5"], "--max_steps must be positive (or -1"),
        (["--lora_r", "0"], "--lora_r must be positive"),
        (["--max_grad_norm", "-1"], "--max_grad_norm must be >= 0"),
    ],
)
def test_flags_are_checked_before_any_load(extra, message, tiny_model_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(dpo_module, "load_model", no_load)
    data = write_jsonl(tmp_path / "pairs.jsonl", pairs(4))
    assert run_script(TRAIN, small_args(tiny_model_dir, data, tmp_path / "out", *extra)) == 1
    assert message in one_error_line(capsys)
    assert not (tmp_path / "out").exists()


def test_a_sweep_name_that_leaves_its_folder_is_refused(tmp_path, capsys):
    recipe = tmp_path / "grid.yaml"
    recipe.write_text("dataset: pairs.jsonl\nsweep:\n  beta: [0.1, 0.5]\n")
    for name in ("../../x", "a/b", ".."):
        argv = ["--config", str(recipe), "--output_dir", str(tmp_path / "sweeps"), "--sweep_name", name, "--dry_run"]
        assert run_script("DPO/sweep.py", argv) == 1
        assert "invalid --sweep_name" in one_error_line(capsys)
    assert not (tmp_path / "sweeps").exists() and not (tmp_path / "x").exists()


# ---------------------------------------------------------------------------------------------------
# Issue 14, item 1: full fine-tuning in half precision keeps float32 master weights
# ---------------------------------------------------------------------------------------------------
def test_full_fine_tuning_in_bf16_keeps_float32_master_weights(tiny_model_dir, tmp_path):
    settings = options(use_lora=False, dtype="bfloat16", learning_rate=5e-7, save_steps=100)
    trainer, config, _ = build_trainer(str(tiny_model_dir), pairs(6), settings, tmp_path, device="cpu")
    trainable = {name: p for name, p in trainer.model.named_parameters() if p.requires_grad}
    assert config.bf16 and {p.dtype for p in trainable.values()} == {torch.float32}
    before = {name: p.detach().clone() for name, p in trainable.items()}
    trainer.train()
    changed = sum(int((before[name] != p.detach()).sum()) for name, p in trainable.items())
    # bf16 weights: 0.8% of them move in 3 AdamW steps at lr 5e-7 (the rest rounds away); float32 masters: 80%
    assert changed / sum(p.numel() for p in trainable.values()) > 0.5


def test_lora_trains_float32_adapters_on_a_bf16_base(tiny_model_dir, tmp_path):
    trainer, _, _ = build_trainer(str(tiny_model_dir), pairs(4), options(dtype="bfloat16"), tmp_path, device="cpu")
    dtypes = {("lora_" in name, p.dtype) for name, p in trainer.model.named_parameters()}
    assert dtypes == {(True, torch.float32), (False, torch.bfloat16)}


def test_deepspeed_and_fsdp_keep_their_own_float32_masters(monkeypatch):
    full = TrainingOptions(use_lora=False, dtype="bfloat16")
    assert training_weights_dtype(full, "cuda", None) == "float32"
    assert training_weights_dtype(TrainingOptions(dtype="bfloat16"), "cuda", None) == "bfloat16"  # LoRA
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED", raising=False)
    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    assert fp32_master_launcher({}) is None and fp32_master_launcher({"deepspeed": "ds.json"}) == "DeepSpeed"
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    assert fp32_master_launcher({}) == "FSDP"
    assert training_weights_dtype(full, "cuda", fp32_master_launcher({})) == "bfloat16"


# ---------------------------------------------------------------------------------------------------
# Issue 14, item 3: RPO's sentence-transformer is loaded whole under ZeRO-3, however ZeRO-3 was switched on
# ---------------------------------------------------------------------------------------------------
def test_the_rpo_encoder_loads_outside_zero3(tiny_model_dir, tmp_path, monkeypatch):
    from transformers.integrations import deepspeed as hf_deepspeed

    from ipo.training import trainer as trainer_module

    class Zero3Config:  # what accelerate's DeepSpeed plugin registers (then there is no args.hf_deepspeed_config)
        def is_zero3(self):
            return True

    config = Zero3Config()
    seen = []

    class Embedder:
        def __init__(self, *args, **kwargs):
            hf_deepspeed.set_hf_deepspeed_config(config)  # ZeRO-3 on from here (after the Trainer's own setup)

        @property
        def model(self):
            seen.append(hf_deepspeed.is_deepspeed_zero3_enabled())
            return object()

    monkeypatch.setattr(trainer_module, "PromptEmbedder", Embedder)
    try:
        trainer, _, _ = build_trainer(
            str(tiny_model_dir), pairs(4), options(loss_type="rpo_paired"), tmp_path, device="cpu"
        )
        assert seen == [False]  # loaded with ZeRO-3's sharded init off
        assert hf_deepspeed.is_deepspeed_zero3_enabled() and hf_deepspeed._hf_deepspeed_config_weak_ref() is config
        assert not hasattr(trainer.args, "hf_deepspeed_config")
    finally:
        hf_deepspeed.unset_hf_deepspeed_config()


# ---------------------------------------------------------------------------------------------------
# Issue 14, item 6: merges run in float32, saved in the chosen dtype; a Hub base's dtype from its config
# ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_update_adapter(tiny_model_dir, tmp_path_factory):
    """A LoRA adapter on the (float32) tiny model whose update has std 1e-4, as after a short DPO run."""
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora import LoraLayer
    from transformers import AutoModelForCausalLM

    folder = tmp_path_factory.mktemp("lora") / "adapter"
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32),
        LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"),
    )
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, LoraLayer):
                for weights in (module.lora_A["default"].weight, module.lora_B["default"].weight):
                    weights.copy_(torch.randn(weights.shape, generator=generator))
                module.lora_B["default"].weight.mul_(1e-4 / module.get_delta_weight("default").std())
    model.save_pretrained(folder)
    config = json.loads((folder / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(tiny_model_dir)
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return folder


def float32_reference(adapter, tiny_model_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    original = {name: weight.clone() for name, weight in base.state_dict().items()}
    return original, PeftModel.from_pretrained(base, str(adapter)).merge_and_unload().state_dict()


def test_a_bf16_merge_rounds_once_from_the_float32_merge(small_update_adapter, tiny_model_dir, tmp_path, caplog):
    from transformers import AutoModelForCausalLM

    original, reference = float32_reference(small_update_adapter, tiny_model_dir)
    with caplog.at_level(logging.INFO, logger="ipo"):
        merge_adapter(small_update_adapter, tmp_path / "bf16", dtype="bfloat16")
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "bf16", dtype="auto").state_dict()
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["dtype"] == "bfloat16"
    lost = update = 0.0
    for name, exact in reference.items():
        assert merged[name].dtype == torch.bfloat16
        # the float32 merge, rounded once to the nearest bf16 (a bf16 merge of the bf16-loaded base rounds twice:
        # a quarter of these weights came out one bf16 step off, and 46% of the update was lost instead of 33%)
        assert torch.equal(merged[name], exact.to(torch.bfloat16)), name
        if "proj" in name:  # the layers the adapter changes
            lost += float((merged[name].float() - exact).pow(2).sum())
            update += float((exact - original[name]).pow(2).sum())
    assert 0.30 < (lost / update) ** 0.5 < 0.36  # what bf16 storage itself cannot hold of a 1e-4 update: 33%
    assert "rounding the merged weights to bfloat16 loses 33." in caplog.text and "--dtype float32" in caplog.text
    # in float32 the update is kept whole
    merge_adapter(small_update_adapter, tmp_path / "fp32", dtype="float32")
    kept = AutoModelForCausalLM.from_pretrained(tmp_path / "fp32", dtype="auto").state_dict()
    for name, exact in reference.items():
        assert kept[name].dtype == torch.float32
        torch.testing.assert_close(kept[name] - original[name], exact - original[name], rtol=0, atol=1e-7)


def test_a_bf16_base_is_merged_in_its_own_dtype_layer_by_layer(
    small_update_adapter, tiny_model_dir, tmp_path, monkeypatch
):
    from transformers import AutoModelForCausalLM

    base = tmp_path / "base-bf16"  # how most 7B checkpoints are saved
    AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16).save_pretrained(base)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json"):
        if (tiny_model_dir / name).is_file():
            shutil.copy(tiny_model_dir / name, base / name)
    loaded = []
    real_load = merge_module.load_model
    monkeypatch.setattr(merge_module, "load_model", lambda *a, **k: loaded.append(k["dtype"]) or real_load(*a, **k))
    merge_adapter(small_update_adapter, tmp_path / "merged", base_model=str(base))
    assert loaded == ["bfloat16"]  # not a float32 copy of the whole model: only one layer at a time is
    original, reference = float32_reference(small_update_adapter, base)
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype="auto").state_dict()
    for name, exact in reference.items():
        assert torch.equal(merged[name], exact.to(torch.bfloat16)), name


def test_the_merge_dtype_of_a_hub_base_comes_from_its_config(tiny_model_dir, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(merge_module, "_hub_config", lambda repo: '{"dtype": "bfloat16", "model_type": "llama"}')
    assert dtype_for_merge("someone/model-7b", "auto") == "bfloat16"  # not float32: 14 GB for 7B, not 28
    assert dtype_for_merge("someone/model-7b", "float16") == "float16"
    monkeypatch.setattr(merge_module, "_hub_config", lambda repo: None)
    assert dtype_for_merge("someone/model-7b", "auto") == "auto"
    # a base whose dtype is unknown is saved in float32, and the log says so
    base = tmp_path / "base"
    shutil.copytree(tiny_model_dir, base)
    config = json.loads((base / "config.json").read_text())
    config.pop("dtype", None), config.pop("torch_dtype", None)
    (base / "config.json").write_text(json.dumps(config))
    run = tmp_path / "run"
    train_dpo(str(base), pairs(4), options(max_steps=1, lora_r=4, lora_alpha=8), run, device="cpu")
    with caplog.at_level(logging.INFO, logger="ipo"):
        merge_adapter(run / "adapter", tmp_path / "merged")
    assert "is unknown" in caplog.text and "saving the merged model in float32" in caplog.text


# ---------------------------------------------------------------------------------------------------
# Issue 14, item 8: only native bf16 counts
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("native, expected", [(False, ("float16", False, True)), (True, ("bfloat16", True, False))])
def test_emulated_bf16_falls_back_to_fp16(native, expected, monkeypatch):
    def is_bf16_supported(including_emulation: bool = True) -> bool:  # a V100 or T4: bf16 only emulated
        return True if including_emulation else native

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    assert resolve_precision("auto", "cuda") == expected
    assert resolve_precision("auto", "cpu") == ("float32", False, False)
    assert resolve_precision("bfloat16", "cuda") == ("bfloat16", True, False)  # asked for: kept
