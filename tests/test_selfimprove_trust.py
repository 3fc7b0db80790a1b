"""DPO/ours.py and DPO/self_reward.py: every flag is checked before anything loads or config.json is written, and a
second run on a folder that a run holds stops at once (issue 11, items 4 and 6)."""

import json
import os
import subprocess
import sys
import time

import pytest
from helpers import REPO, run_script, write_jsonl
from test_dpo_scripts import EXACT, OURS, SMOKE, by_id, last_error_line, prompt_rows

SCRIPTS = [OURS, "DPO/self_reward.py"]
BAD_FLAGS = [
    (["--beta", "-1"], "--beta must be positive"),
    (["--learning_rate", "-1"], "--learning_rate must be positive"),
    (["--lora_r", "0"], "--lora_r must be positive"),
    (["--max_steps", "0"], "--max_steps must be positive (or -1"),
    (["--max_steps", "-5"], "--max_steps must be positive (or -1"),
    (["--top_p", "2"], "--top_p must be in (0, 1]"),
    (["--top_p", "0"], "--top_p must be in (0, 1]"),
    (["--top_k", "-1"], "--top_k must be >= 0"),
    (["--temperature", "-0.5"], "--temperature must be >= 0"),
    (["--num_train_epochs", "0"], "--num_train_epochs must be positive"),
    (["--warmup_ratio", "1.5"], "--warmup_ratio must be in [0, 1)"),
    (["--label_smoothing", "0.7"], "--label_smoothing must be in [0, 0.5)"),
    (["--max_grad_norm", "-1"], "--max_grad_norm must be >= 0"),
    (["--lr_scheduler_type", "nope"], "nope is not a valid SchedulerType"),
    (["--loss_type", "rpo_unpaired"], "the loop makes pairs"),
    (["--load_in_4bit", "--no_lora"], "drop --no_lora"),
    (["--max_new_tokens", "0"], "--max_new_tokens must be positive"),
    (["--test_fraction", "1"], "--test_fraction must be in [0, 1)"),
]


@pytest.fixture
def prompts_file(tmp_path):
    return write_jsonl(tmp_path / "prompts.jsonl", prompt_rows())


@pytest.fixture
def no_model_loads(monkeypatch):
    """Any model load or sampler fails the test."""
    from ipo import modeling
    from ipo.selfimprove import loop, sampling

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded (or a sampler built) before the flags were checked")

    for module, name in [(modeling, "load_model"), (loop, "load_model"), (sampling.Sampler, "__init__")]:
        monkeypatch.setattr(module, name, refuse)


def argv_for(model, prompts, out, *extra):
    return [
        "--model_id",
        str(model),
        "--dataset_name",
        str(prompts),
        "--output_dir",
        str(out),
        "--run_name",
        "r",
        *SMOKE,
        *EXACT,
        *extra,
    ]


@pytest.mark.parametrize("script", SCRIPTS)
@pytest.mark.parametrize("flags, message", BAD_FLAGS, ids=[" ".join(f) for f, _ in BAD_FLAGS])
def test_bad_flags_stop_before_anything_loads(
    script, flags, message, tiny_model_dir, prompts_file, tmp_path, capsys, no_model_loads
):
    with pytest.raises(SystemExit) as exit_info:
        run_script(script, argv_for(tiny_model_dir, prompts_file, tmp_path / "out", *flags))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1 and message in err
    assert not (tmp_path / "out").exists()  # no run folder, no config.json


def test_a_bad_flag_leaves_an_existing_run_untouched(tiny_model_dir, prompts_file, tmp_path, capsys, monkeypatch):
    argv = argv_for(tiny_model_dir, prompts_file, tmp_path, "--stop_after", "sample")
    assert run_script(OURS, argv) == 0
    run = tmp_path / "r"
    before = {name: (run / name).read_bytes() for name in ("config.json", "round_1/responses.jsonl")}
    from ipo.selfimprove import loop

    with monkeypatch.context() as patched:
        patched.setattr(loop, "load_model", lambda *a, **k: pytest.fail("loaded a model"))
        for flags, message in BAD_FLAGS[:6]:
            with pytest.raises(SystemExit):
                run_script(OURS, [*argv, *flags])
            assert message in last_error_line(capsys)
    assert before == {name: (run / name).read_bytes() for name in before}
    assert run_script(OURS, [*argv[: argv.index("--stop_after")], *argv[argv.index("--stop_after") + 2 :]]) == 0
    assert (run / "round_1" / "adapter" / "adapter_config.json").is_file()


def test_a_corrected_command_is_not_refused_as_other_settings(tiny_model_dir, prompts_file, tmp_path, capsys):
    """Before: --beta -1 sampled, judged and paired, wrote beta -1 into config.json and failed at training; the
    corrected command was then refused ("holds a run with different settings (beta: -1.0 -> 0.1)")."""
    argv = argv_for(tiny_model_dir, prompts_file, tmp_path)
    with pytest.raises(SystemExit):
        run_script(OURS, [*argv, "--beta", "-1"])
    assert "--beta must be positive" in last_error_line(capsys) and not (tmp_path / "r").exists()
    assert run_script(OURS, [*argv, "--beta", "0.1"]) == 0
    assert json.loads((tmp_path / "r" / "config.json").read_text())["args"]["beta"] == 0.1


# ---------------------------------------------------------------------------------------------------
# Two runs on one folder
# ---------------------------------------------------------------------------------------------------
# The first run, as its own process, pauses when its sampling stage starts (after it took the run folder's
# lock) until the test lets it go: a deterministic "two runs at once".
PAUSED_RUN = """
import pathlib, runpy, sys, time
from ipo.selfimprove import loop
ready, go, script = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), sys.argv[3]
real = loop.sample_into_log
def paused(*args, **kwargs):
    ready.touch()
    while not go.exists():
        time.sleep(0.05)
    return real(*args, **kwargs)
loop.sample_into_log = paused
sys.argv = [script, *sys.argv[4:]]
runpy.run_path(script, run_name="__main__")
"""


def test_a_second_run_on_the_same_folder_stops_at_once(tiny_model_dir, prompts_file, tmp_path, capsys, monkeypatch):
    argv = argv_for(tiny_model_dir, prompts_file, tmp_path, "--stop_after", "pairs")
    ready, go = tmp_path / "ready", tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    log = open(tmp_path / "first.log", "w")
    first = subprocess.Popen(
        [sys.executable, "-c", PAUSED_RUN, str(ready), str(go), str(REPO / OURS), *argv],
        env=env,
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 300
        while not ready.exists():
            assert first.poll() is None, (tmp_path / "first.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "the first run never started sampling"
            time.sleep(0.1)
        run = tmp_path / "r"
        config = (run / "config.json").read_bytes()
        from ipo.selfimprove import loop

        monkeypatch.setattr(loop, "load_model", lambda *a, **k: pytest.fail("the second run loaded a model"))
        started = time.monotonic()
        assert run_script(OURS, argv) == 1
        line = last_error_line(capsys)
        assert "is in use by another run" in line and f"PID {first.pid}" in line
        assert time.monotonic() - started < 60
        assert (run / "config.json").read_bytes() == config
        go.touch()
        first.wait(timeout=300)
    finally:
        go.touch()
        if first.poll() is None:
            first.kill()
        log.close()
    assert first.returncode == 0, (tmp_path / "first.log").read_text()[-2000:]
    for name in ("responses.jsonl", "scored.jsonl", "pairs.jsonl"):
        lines = (run / "round_1" / name).read_text().splitlines()
        assert len(lines) == 10 and len({json.loads(line)["id"] for line in lines}) == 10, name
    # the first run is whole: a re-run finds every stage done and changes nothing
    responses = by_id(run / "round_1" / "responses.jsonl")
    assert run_script(OURS, argv) == 0
    assert by_id(run / "round_1" / "responses.jsonl") == responses


def test_an_edited_prompt_file_is_refused_on_resume(tiny_model_dir, prompts_file, tmp_path, capsys):
    argv = argv_for(tiny_model_dir, prompts_file, tmp_path, "--stop_after", "sample")
    assert run_script(OURS, argv) == 0
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    assert len(config["inputs"][str(prompts_file)]["sha256"]) == 64  # the prompts' content is part of the run
    responses = (tmp_path / "r" / "round_1" / "responses.jsonl").read_bytes()
    rows = prompt_rows()
    write_jsonl(prompts_file, [{**rows[0], "instruction": rows[0]["instruction"] + " (edited)"}, *rows[1:]])
    capsys.readouterr()
    assert run_script(OURS, argv) == 1
    assert f"{prompts_file} changed" in last_error_line(capsys)
    assert (tmp_path / "r" / "round_1" / "responses.jsonl").read_bytes() == responses  # nothing resampled
