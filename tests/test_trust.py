"""Trust every number (issue 11): one run per folder, a run's identity covers its inputs' content and its
coverage, every folder check before a model load or a request, unreadable API answers asked again, files
with the user's umask, leftovers of killed writes cleaned, secrets never echoed, names that stay in their
folder. One test per promise, on the tiny models and the local OpenAI-compatible test server."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
from helpers import (
    API_MODEL,
    REPO,
    api_argv,
    load_run,
    read_jsonl,
    rewardbench_rows,
    rmbench_rows,
    run_script,
    write_json,
    write_jsonl,
)

from ipo import IpoError, cli, modeling
from ipo.runs import LOCK_FILE, RunDir, atomic_write_dir, atomic_write_json, validate_name

OURS = "Preference_Comparison/Reward_Bench/ours.py"
OURS_GPT = "Preference_Comparison/Reward_Bench/ours_gpt.py"
LOCAL_SCRIPTS = {  # every local-model entry point of Preference_Comparison, with the data it reads
    "Preference_Comparison/Reward_Bench/ours.py": "rb",
    "Preference_Comparison/Reward_Bench/reward_model.py": "rb",
    "Preference_Comparison/Reward_Bench/self_reward.py": "rb",
    "Preference_Comparison/Reward_Bench/prompt_search.py": "rb",
    "Preference_Comparison/RM_Bench/ours.py": "rm",
    "Preference_Comparison/RM_Bench/reward_model.py": "rm",
    "Preference_Comparison/RM_Bench/self_reward.py": "rm",
}
API_SCRIPTS = {
    "Preference_Comparison/Reward_Bench/ours_gpt.py": "rb",
    "Preference_Comparison/Reward_Bench/binary_gpt.py": "rb",
    "Preference_Comparison/Reward_Bench/self_reward_gpt.py": "rb",
    "Preference_Comparison/RM_Bench/ours_gpt.py": "rm",
    "Preference_Comparison/RM_Bench/binary_gpt.py": "rm",
    "Preference_Comparison/RM_Bench/self_reward_gpt.py": "rm",
}
N_PAIRS = 16


@pytest.fixture
def rb_file(tmp_path):
    return write_jsonl(tmp_path / "rb.jsonl", rewardbench_rows(N_PAIRS))


@pytest.fixture
def rm_file(tmp_path):
    return write_json(tmp_path / "chat_filtered.json", rmbench_rows(2))


@pytest.fixture(autouse=True)
def _private_hash_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("IPO_CACHE_DIR", str(tmp_path / "ipo_cache"))


def local_argv(model, data, out, *extra):
    return [
        "--model_name",
        str(model),
        "--dataset",
        str(data),
        "--output_dir",
        str(out),
        "--log_level",
        "error",
        *extra,
    ]


def one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    return err


# ---------------------------------------------------------------------------------------------------
# 1. A run's identity: the content of its inputs, and its coverage
# ---------------------------------------------------------------------------------------------------
def test_an_edited_data_file_or_model_is_refused_on_resume(tiny_model_dir, rb_file, tmp_path, capsys):
    model = shutil.copytree(tiny_model_dir, tmp_path / "model")
    argv = local_argv(model, rb_file, tmp_path / "out", "--run_name", "r")
    assert run_script(OURS, argv) == 0
    run_dir = tmp_path / "out" / "r"
    config = json.loads((run_dir / "config.json").read_text())
    assert config["inputs"][str(rb_file)]["kind"] == "file" and len(config["inputs"][str(rb_file)]["sha256"]) == 64
    assert "config.json" in config["inputs"][str(model)]["files"]
    assert "model.safetensors" in config["inputs"][str(model)]["files"]
    predictions = (run_dir / "predictions.jsonl").read_text()

    os.utime(rb_file)  # touched, same content: resumes (the hash is taken again and matches)
    assert run_script(OURS, argv) == 0
    capsys.readouterr()

    rows = rewardbench_rows(N_PAIRS)  # chosen and rejected swapped, same path
    write_jsonl(rb_file, [{**r, "chosen": r["rejected"], "rejected": r["chosen"]} for r in rows])
    assert run_script(OURS, argv) == 1
    err = one_line(capsys)
    assert f"{rb_file} changed" in err and "--overwrite" in err
    assert (run_dir / "predictions.jsonl").read_text() == predictions  # nothing rescored or merged

    write_jsonl(rb_file, rows)  # the original content again: resumes
    assert run_script(OURS, argv) == 0
    config_file = model / "config.json"  # a model re-saved at the same path
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "note": "re-saved"}))
    assert run_script(OURS, argv) == 1
    assert f"{config_file} changed" in one_line(capsys)
    assert run_script(OURS, [*argv, "--overwrite"]) == 0  # the way out the message names


def test_limit_on_a_full_run_never_changes_its_metrics(tiny_model_dir, rb_file, tmp_path, capsys):
    out = tmp_path / "out"
    assert run_script(OURS, local_argv(tiny_model_dir, rb_file, out)) == 0
    run_dir = out / f"rewardbench-raw-{tiny_model_dir.name}-upstream"
    metrics_text, results_text = (run_dir / "metrics.json").read_text(), (run_dir / "results.md").read_text()
    metrics = json.loads(metrics_text)
    assert metrics["coverage"] == {
        "n_scored": 16,
        "n_in_data": 16,
        "complete": True,
        "limit": None,
        "limit_per": None,
        "selection": None,
    }
    assert "Coverage: 16 of 16 pairs in the data." in results_text
    capsys.readouterr()

    # The same command with --limit: refused, the full run's outputs untouched.
    assert run_script(OURS, local_argv(tiny_model_dir, rb_file, out, "--limit", "1")) == 1
    err = one_line(capsys)
    assert "holds a run over more examples (limit: None -> 1)" in err and "--run_name" in err
    assert (run_dir / "metrics.json").read_text() == metrics_text
    assert (run_dir / "results.md").read_text() == results_text

    # In its own folder it runs, and says what it covers.
    assert run_script(OURS, local_argv(tiny_model_dir, rb_file, out, "--limit", "1", "--run_name", "smoke")) == 0
    small = json.loads((out / "smoke" / "metrics.json").read_text())
    assert small["n_pairs"] == 8 and small["coverage"]["limit"] == 1 and not small["coverage"]["complete"]
    assert "Coverage: 8 of 16 pairs in the data (--limit 1 per subset)." in (out / "smoke" / "results.md").read_text()
    # Widening a smoke run is a resume: only the new pairs are scored, and the metrics then cover them all.
    assert run_script(OURS, local_argv(tiny_model_dir, rb_file, out, "--run_name", "smoke")) == 0
    widened = json.loads((out / "smoke" / "metrics.json").read_text())
    assert widened["coverage"]["complete"] and widened["subsets"] == metrics["subsets"]
    assert len((out / "smoke" / "predictions.jsonl").read_text().splitlines()) == 16


# ---------------------------------------------------------------------------------------------------
# 2. One run per folder
# ---------------------------------------------------------------------------------------------------
def test_a_second_run_on_the_same_folder_stops_at_once(openai_server, rb_file, tmp_path, capsys):
    out = tmp_path / "out"
    argv = api_argv(openai_server, rb_file, out, "--max_concurrency", "1", "--log_level", "error")
    openai_server.canned = lambda request: time.sleep(0.15)  # a slow server: the first run takes a while
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, str(REPO / OURS_GPT), *argv]
    first = subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lock = out / "r" / LOCK_FILE
    deadline = time.time() + 120
    while time.time() < deadline and not (lock.exists() and '"pid"' in lock.read_text()):
        time.sleep(0.05)
    assert first.poll() is None, first.stderr.read()
    try:
        assert run_script(OURS_GPT, argv) == 1
        err = one_line(capsys)
        assert f"PID {first.pid} on host {socket.gethostname()}" in err and "in use by another run" in err
        assert run_script(OURS_GPT, [*argv, "--overwrite"]) == 1  # nor can it discard the running one
    finally:
        assert first.wait(timeout=180) == 0, first.stderr.read()
    predictions, metrics = load_run(out / "r")
    lines = (out / "r" / "predictions.jsonl").read_text().splitlines()
    assert len(lines) == len(predictions) == N_PAIRS and metrics["n_pairs"] == N_PAIRS  # the first: unaffected
    assert openai_server.requests == 2 * N_PAIRS  # the second sent nothing
    # A lock dies with its process: a crashed run leaves nothing that blocks the next one.
    code = f"import time; from ipo.runs import lock_folder; lock_folder({str(out / 'r')!r}); print('locked')"
    holder = subprocess.Popen(
        [sys.executable, "-u", "-c", code + "; time.sleep(60)"], env=env, stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout.readline().strip() == "locked"
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    openai_server.canned = None
    assert run_script(OURS_GPT, argv) == 0


# ---------------------------------------------------------------------------------------------------
# 3. Output folders checked before any model load or request
# ---------------------------------------------------------------------------------------------------
def test_an_output_folder_that_is_a_file_is_one_line_before_any_load(
    tiny_model_dir, rb_file, rm_file, tmp_path, capsys, monkeypatch, openai_server
):
    def no_load(*args, **kwargs):
        raise AssertionError("a model was loaded before the output folder was checked")

    monkeypatch.setattr(modeling, "load_model", no_load)
    monkeypatch.setattr(modeling, "load_tokenizer", no_load)
    data = {"rb": rb_file, "rm": rm_file}
    not_a_folder = tmp_path / "results.txt"
    not_a_folder.write_text("my notes")
    for script, kind in LOCAL_SCRIPTS.items():
        assert run_script(script, local_argv(tiny_model_dir, data[kind], not_a_folder)) == 1, script
        assert f"--output_dir {not_a_folder} is a file, not a folder" in one_line(capsys), script
    for script, kind in API_SCRIPTS.items():
        assert run_script(script, api_argv(openai_server, data[kind], not_a_folder / "sub")) == 1, script
        assert f"lies under {not_a_folder}, which is a file" in one_line(capsys), script
    assert openai_server.requests == 0  # not one (paid) answer sent, so none lost
    # A run folder that is a file: the same, one line.
    out = tmp_path / "out"
    out.mkdir()
    (out / "r").write_text("not a run")
    assert run_script(OURS, local_argv(tiny_model_dir, rb_file, out, "--run_name", "r")) == 1
    assert "is a file, not a run folder" in one_line(capsys)
    assert not_a_folder.read_text() == "my notes" and (out / "r").read_text() == "not a run"


# ---------------------------------------------------------------------------------------------------
# 4. API answers that could not be read are asked again
# ---------------------------------------------------------------------------------------------------
def test_an_unreadable_cached_answer_is_asked_again(openai_server, rb_file, tmp_path, capsys):
    clean = tmp_path / "clean"
    assert run_script(OURS_GPT, api_argv(openai_server, rb_file, clean)) == 0
    reference = load_run(clean / "r")[0]
    # A cache as earlier versions wrote it: one answer without Yes/No among its log-probabilities, cached.
    out = tmp_path / "out"
    cache = out / "api_cache" / f"{API_MODEL}.jsonl"
    cache.parent.mkdir(parents=True)
    lines = [json.loads(line) for line in (clean / "api_cache" / f"{API_MODEL}.jsonl").read_text().splitlines()]
    maybe = [{"token": "Maybe", "logprob": -0.1, "bytes": [77]}]
    lines[5]["response"]["choices"][0]["logprobs"]["content"][0]["top_logprobs"] = maybe
    write_jsonl(cache, lines)
    sent = openai_server.requests
    assert run_script(OURS_GPT, api_argv(openai_server, rb_file, out)) == 0
    assert openai_server.requests == sent + 1  # only the unreadable answer, asked again
    predictions, metrics = load_run(out / "r")
    assert predictions == reference and metrics["n_failed"] == 0
    # The new answer replaced it: the next run pays for nothing.
    assert run_script(OURS_GPT, api_argv(openai_server, rb_file, out, run_name="again")) == 0
    assert openai_server.requests == sent + 1
    # An unreadable answer now: kept for the record, not cached, asked again next time.
    pair_3 = rewardbench_rows(N_PAIRS)[3]["chosen"]
    openai_server.canned = lambda request: {"content": "Maybe"} if pair_3 in str(request) else None
    other = tmp_path / "other"
    assert run_script(OURS_GPT, api_argv(openai_server, rb_file, other)) == 0
    assert load_run(other / "r")[1]["failures_by_kind"] == {"no_yes_no": 1}
    assert len(read_jsonl(other / "api_cache" / f"{API_MODEL}.unreadable.jsonl")) == 1
    openai_server.canned = None
    sent = openai_server.requests
    assert run_script(OURS_GPT, api_argv(openai_server, rb_file, other)) == 0
    assert openai_server.requests == sent + 1 and load_run(other / "r")[1]["n_failed"] == 0
    # A damaged cache: one line naming the file to delete (not --overwrite, which does not touch the cache).
    with open(cache, "a") as handle:
        handle.write("{not json\n{}\n")
    capsys.readouterr()
    assert run_script(OURS_GPT, api_argv(openai_server, rb_file, out)) == 1
    err = one_line(capsys)
    assert f"delete {cache}" in err and "--overwrite" not in err


# ---------------------------------------------------------------------------------------------------
# 5. Files with the user's umask; leftovers of killed writes; names that stay in their folder
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("umask, file_mode", [(0o022, 0o644), (0o002, 0o664)])
def test_files_are_written_with_the_users_umask(openai_server, rb_file, tmp_path, umask, file_mode):
    old = os.umask(umask)
    try:
        out = tmp_path / "out"
        assert run_script(OURS_GPT, api_argv(openai_server, rb_file, out)) == 0
        atomic_write_dir(tmp_path / "folder", lambda tmp: (tmp / "weights.bin").write_bytes(b"0"))
        atomic_write_json(tmp_path / "folder" / "x.json", {})
    finally:
        os.umask(old)
    run_dir = out / "r"
    names = [
        "config.json",
        "predictions.jsonl",
        "metrics.json",
        "results.md",
        "subset_accuracy.png",
        LOCK_FILE,
        f"accuracy_reward-bench_yesno_{API_MODEL}.json",
    ]
    modes = {name: oct(os.stat(run_dir / name).st_mode & 0o777) for name in names}
    assert modes == {name: oct(file_mode) for name in names}
    assert os.stat(out / "api_cache" / f"{API_MODEL}.jsonl").st_mode & 0o777 == file_mode
    assert os.stat(tmp_path / "folder").st_mode & 0o777 == 0o777 & ~umask
    assert os.stat(tmp_path / "folder" / "x.json").st_mode & 0o777 == file_mode


def test_leftovers_of_killed_writes_are_cleaned_at_the_next_start(openai_server, rb_file, tmp_path):
    out = tmp_path / "out"
    argv = api_argv(openai_server, rb_file, out)
    assert run_script(OURS_GPT, argv) == 0
    run_dir = out / "r"
    metrics = (run_dir / "metrics.json").read_text()
    files = [run_dir / ".metrics.json.k2j4x_9a.tmp", run_dir / ".subset_accuracy.ab12cd34.png"]
    folders = [run_dir / "round_1" / name for name in (".merged.q8w7e6r5", ".merged.q8w7e6r5.tmp", ".adapter.saving")]
    for path in files:
        path.write_text("half a file")
    for path in folders:
        path.mkdir(parents=True)
        (path / "model.safetensors").write_bytes(b"0" * 1000)
    kept = [run_dir / "notes.md", run_dir / ".hidden", run_dir / "round_1" / "merged" / "config.json"]
    for path in kept:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("mine")
    assert run_script(OURS_GPT, argv) == 0
    assert [p for p in files + folders if p.exists()] == [] and all(p.read_text() == "mine" for p in kept)
    assert json.loads((run_dir / "metrics.json").read_text())["subsets"] == json.loads(metrics)["subsets"]


def test_names_that_would_leave_their_folder_are_refused(tiny_model_dir, rb_file, tmp_path, capsys):
    for bad in ("", " ", ".", "..", "../escape", "a/b", "/abs", "a\\b"):
        with pytest.raises(IpoError, match="invalid --sweep_name"):
            validate_name(bad, "--sweep_name")
        with pytest.raises(IpoError, match="invalid --run_name"):
            RunDir(tmp_path, bad)
    assert validate_name("run-1.v2") == "run-1.v2"
    assert run_script(OURS, local_argv(tiny_model_dir, rb_file, tmp_path / "out", "--run_name", "../escape")) == 1
    assert "invalid --run_name '../escape'" in one_line(capsys)
    assert not (tmp_path / "escape").exists() and not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------------
# 6. Secrets never echoed by argument errors
# ---------------------------------------------------------------------------------------------------
def test_argument_errors_never_echo_a_secret(capsys):
    parser = cli.ArgumentParser(prog="merge.py")  # a script without --hf_key
    parser.add_argument("--model_dir")
    parser.add_argument("--split", choices=["raw", "filtered"])
    cases = [
        ["--model_dir", "m", "--hf_key", "hf_TOPSECRETTOPSECRET"],
        ["--hf_key=hf_TOPSECRETTOPSECRET"],
        ["--hf_token", "TOPSECRET-not-token-shaped"],
        ["--model_dir", "m", "--split", "sk-proj-TOPSECRET123"],
        ["--api_key", "TOPSECRET"],
    ]
    for argv in cases:
        with pytest.raises(SystemExit) as exit_info:
            parser.parse_args(argv)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "TOPSECRET" not in err and "***" in err, err
    # A real script: upstream's --hf_key is accepted and never saved, another token flag is scrubbed.
    with pytest.raises(SystemExit):
        run_script(OURS, ["--model_name", "m", "--hf_token", "hf_TOPSECRETTOPSECRET"])
    err = capsys.readouterr().err
    assert "unrecognized arguments: --hf_token ***" in err and "TOPSECRET" not in err
    assert cli.is_secret_flag("--hf_key") and cli.is_secret_flag("--hf_ke") and cli.is_secret_flag("--wandb_key")
    assert not cli.is_secret_flag("--api_key_env") and not cli.is_secret_flag("--max_new_tokens")
