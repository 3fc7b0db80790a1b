"""benchmarks/bench_scoring.py smoke test: tiny model, tiny sizes; checks the JSON lines, never a timing."""

import json
import os
import subprocess

import pytest
from helpers import REPO, load_script

from ipo.modeling import load_tokenizer

SCRIPT = "benchmarks/bench_scoring.py"


@pytest.mark.smollm2
def test_synthetic_pairs_have_the_settings_lengths(smollm2_dir):
    bench = load_script(SCRIPT)
    tokenizer = load_tokenizer(str(smollm2_dir))
    short = bench.synthetic_pairs(tokenizer, "short", 8)
    lengths = [bench.prompt_length(tokenizer, e.subset, e.prompt, r) for e in short for r in e.responses]
    assert max(lengths) < 60 and min(lengths) > 30 and len({e.subset for e in short}) == 4
    long = bench.synthetic_pairs(tokenizer, "long", 2)
    response_tokens = [len(tokenizer(r, add_special_tokens=False).input_ids) for e in long for r in e.responses]
    assert min(response_tokens) >= 295 and max(response_tokens) <= 401  # "responses of 300+ tokens"
    assert bench.synthetic_pairs(tokenizer, "short", 8)[3].responses == short[3].responses  # seeded


def test_bench_prints_one_json_line_per_setting(tiny_model_dir, capsys, monkeypatch):
    bench = load_script(SCRIPT)
    # The tiny tokenizer spells the judge questions in many pieces; let its "short" prompts be longer.
    monkeypatch.setitem(bench.SETTINGS["short"], "max_total_tokens", 400)
    argv = ["--model_name", str(tiny_model_dir), "--n_pairs", "3", "--rounds", "1", "--settings", "short,long"]
    argv += ["--dtypes", "float32", "--no_floor", "--agreement_data", "none"]
    assert bench.main(argv) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(line["setting"], line["dtype"]) for line in lines] == [("short", "float32"), ("long", "float32")]
    for line in lines:
        assert {"upstream_seq_per_s", "project_seq_per_s", "ratio", "max_abs_diff", "verdicts_changed"} <= set(line)
        assert line["n_sequences"] == 6 and line["upstream_seq_per_s"] > 0 and line["project_seq_per_s"] > 0
        assert line["max_abs_diff"] <= 1e-4 and line["verdicts_changed"] == 0  # the fast scorer's scores are the same
        assert line["ratio"] == line["ratio_vs_upstream_same_dtype"] > 0
        assert "floor_fraction" not in line and "demo_max_abs_diff" not in line


def test_bfloat16_rows_are_measured_against_the_float32_loop(tiny_model_dir, capsys, monkeypatch):
    """A bf16 row: ratio against the float32 upstream-style loop and against that loop in bf16, the floor at bf16's
    own matmul peak, and its agreement with float32 on the synthetic pairs and on the demo pairs."""
    bench = load_script(SCRIPT)
    monkeypatch.setitem(bench.SETTINGS["short"], "max_total_tokens", 400)
    peaks = {"float32": 1e11, "bfloat16": 2e11}
    monkeypatch.setattr(bench, "matmul_flops_per_second", lambda device, dtype: peaks[str(dtype).split(".")[-1]])
    argv = ["--model_name", str(tiny_model_dir), "--n_pairs", "3", "--rounds", "1", "--settings", "short"]
    assert bench.main([*argv, "--dtypes", "bfloat16"]) == 0  # float32 always runs: it is the reference
    fp32, bf16 = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert (fp32["dtype"], bf16["dtype"]) == ("float32", "bfloat16")
    assert bf16["upstream_float32_seq_per_s"] == fp32["upstream_seq_per_s"] != bf16["upstream_seq_per_s"]
    assert bf16["ratio"] == pytest.approx(bf16["project_seq_per_s"] / fp32["upstream_seq_per_s"], rel=0.01)
    assert bf16["ratio_vs_upstream_same_dtype"] == pytest.approx(
        bf16["project_seq_per_s"] / bf16["upstream_seq_per_s"], rel=0.01
    )
    assert (fp32["matmul_tflops"], bf16["matmul_tflops"]) == (0.1, 0.2) and 0 < bf16["floor_fraction"]
    assert fp32["demo_n_pairs"] == bf16["demo_n_pairs"] == 32  # data/demo_rewardbench.jsonl
    assert fp32["demo_max_abs_diff"] == 0 and fp32["demo_verdicts_changed"] == 0  # float32 against itself
    assert 0 < bf16["demo_max_abs_diff"] < 0.2 and 0 < bf16["max_abs_diff"] < 0.2  # bf16 rounding, measured
    assert 0 <= bf16["demo_verdicts_changed"] <= 32


def test_auto_dtypes_add_bfloat16_only_where_the_cpu_has_it(monkeypatch):
    import ipo.modeling

    bench = load_script(SCRIPT)
    monkeypatch.setattr(ipo.modeling, "cpu_has_native_bf16", lambda: True)
    assert bench.dtypes_to_run("auto", "cpu") == ["float32", "bfloat16"]
    monkeypatch.setattr(ipo.modeling, "cpu_has_native_bf16", lambda: False)
    assert bench.dtypes_to_run("auto", "cpu") == ["float32"]
    assert bench.dtypes_to_run("bfloat16,float16", "cpu") == ["float32", "bfloat16", "float16"]
    assert bench.verdicts_changed([0.9, 0.1, 0.4, 0.5], [0.2, 0.3, 0.4, 0.5]) == 1


@pytest.mark.smollm2
def test_random_model_has_the_asked_shape_and_dtype(smollm2_dir):
    import torch

    from ipo import IpoError
    from ipo.modeling import RANDOM_SHAPES, random_causal_lm

    tokenizer = load_tokenizer(str(smollm2_dir))
    model = random_causal_lm("tiny", "cpu", "bfloat16", tokenizer)
    assert model.dtype == torch.bfloat16 and model.config.num_hidden_layers == 2
    assert model.config.eos_token_id == tokenizer.eos_token_id
    again = random_causal_lm("tiny", "cpu", "bfloat16", tokenizer)
    assert torch.equal(model.lm_head.weight, again.lm_head.weight)  # seeded
    qwen = RANDOM_SHAPES["qwen2.5-0.5b"]  # Qwen/Qwen2.5-0.5B-Instruct's config.json
    assert (qwen["hidden_size"], qwen["num_hidden_layers"], qwen["num_attention_heads"]) == (896, 24, 14)
    assert (qwen["num_key_value_heads"], qwen["intermediate_size"], qwen["vocab_size"]) == (2, 4864, 151936)
    with pytest.raises(IpoError, match="unknown random model shape"):
        random_causal_lm("huge")


def test_gpu_check_script_parses_and_refuses_without_cuda_in_one_line():
    script = REPO / "benchmarks" / "gpu_check.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env, timeout=120)
    (line,) = result.stdout.splitlines()
    assert result.returncode == 1 and json.loads(line)["check"] == "gpu" and not json.loads(line)["ok"]


def test_bench_bad_setting_is_one_line(capsys):
    from ipo import cli

    with pytest.raises(SystemExit) as exit_info:
        cli.run(load_script(SCRIPT).main, ["--settings", "short,huge"])
    assert exit_info.value.code == 2 and "unknown setting 'huge'" in capsys.readouterr().err


def test_flop_floor_counts_the_tokens_the_scorer_runs(tiny_model_dir, capsys, monkeypatch):
    bench = load_script(SCRIPT)
    monkeypatch.setitem(bench.SETTINGS["short"], "max_total_tokens", 400)
    monkeypatch.setattr(bench, "matmul_flops_per_second", lambda device, dtype: 1e12)  # no peak run
    argv = ["--model_name", str(tiny_model_dir), "--n_pairs", "3", "--rounds", "1", "--settings", "short"]
    assert bench.main([*argv, "--dtypes", "float32", "--agreement_data", "none"]) == 0
    (line,) = [json.loads(row) for row in capsys.readouterr().out.splitlines()]
    # The floor is 2 x parameters x the scorer's own forward tokens (padding in, shared prefixes once), not the
    # upstream loop's token count, which the prefix sharing here makes larger.
    assert line["floor_tokens"] == line["project_forward_tokens"] != line["upstream_forward_tokens"]
    assert line["matmul_tflops"] == 1.0 and 0 < line["floor_fraction"]


def test_flop_floor_fraction_formula():
    bench = load_script(SCRIPT)
    # 2 x 1e6 parameters x 500 tokens = 1e9 FLOP; at 1e11 FLOP/s that is 0.01 s; measured 0.04 s -> 25%.
    assert bench.flop_floor_fraction(10**6, 500, 1e11, 0.04) == pytest.approx(0.25)
