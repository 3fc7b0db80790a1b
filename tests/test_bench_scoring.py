"""benchmarks/bench_scoring.py smoke test: tiny model, tiny sizes; checks the JSON lines, never a timing."""

import json

import pytest
from helpers import load_script

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
    assert bench.main(argv) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["setting"] for line in lines] == ["short", "long"]
    for line in lines:
        assert {"upstream_seq_per_s", "project_seq_per_s", "ratio", "max_abs_diff"} <= set(line)
        assert line["n_sequences"] == 6 and line["upstream_seq_per_s"] > 0 and line["project_seq_per_s"] > 0
        assert line["max_abs_diff"] <= 1e-4  # the fast scorer computes the same scores
        assert line["ratio"] > 0 and "flop_floor_fraction" not in line


def test_bench_bad_setting_is_one_line(capsys):
    from ipo import cli

    with pytest.raises(SystemExit) as exit_info:
        cli.run(load_script(SCRIPT).main, ["--settings", "short,huge"])
    assert exit_info.value.code == 2 and "unknown setting 'huge'" in capsys.readouterr().err


def test_flop_floor_counts_the_tokens_the_scorer_runs(tiny_model_dir, capsys, monkeypatch):
    bench = load_script(SCRIPT)
    monkeypatch.setitem(bench.SETTINGS["short"], "max_total_tokens", 400)
    monkeypatch.setattr(bench, "matmul_flops_per_second", lambda device, dtype: 1e12)  # no minute-long peak run
    argv = [
        "--model_name",
        str(tiny_model_dir),
        "--n_pairs",
        "3",
        "--rounds",
        "1",
        "--settings",
        "short",
        "--flop_floor",
    ]
    assert bench.main(argv) == 0
    (line,) = [json.loads(row) for row in capsys.readouterr().out.splitlines()]
    # The floor is 2 x parameters x the scorer's own forward tokens (padding in, shared prefixes once), not the
    # upstream loop's token count, which the prefix sharing here makes larger.
    assert line["floor_tokens"] == line["project_forward_tokens"] != line["upstream_forward_tokens"]
    assert line["matmul_tflops"] == 1.0 and 0 < line["flop_floor_fraction"]


def test_flop_floor_fraction_formula():
    bench = load_script(SCRIPT)
    # 2 x 1e6 parameters x 500 tokens = 1e9 FLOP; at 1e11 FLOP/s that is 0.01 s; measured 0.04 s -> 25%.
    assert bench.flop_floor_fraction(10**6, 500, 1e11, 0.04) == pytest.approx(0.25)
