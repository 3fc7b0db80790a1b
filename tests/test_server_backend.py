"""--backend server: sampling and Yes/No judging through an OpenAI-compatible completions endpoint, proven
against tests/openai_server.py (the same tiny model in-process, with vLLM's prompt_logprobs extension and
per-request seeded sampling): P(Yes) equals the in-process judge, samples equal the local sampler's, failures
are retried and counted, bad settings stop in one line before anything starts."""

from __future__ import annotations

import json
import math

import pytest
from helpers import load_run, read_jsonl, rewardbench_rows, rmbench_rows, run_script, write_json, write_jsonl

from ipo import IpoError
from ipo.data import Example
from ipo.judges.self_reward import SelfRewardScorer
from ipo.judges.server import (
    ServerSelfRewardScorer,
    ServerSettings,
    connect,
    make_yes_no_judge,
    p_yes_from_logprobs,
    top_logprob_ids,
)
from ipo.judges.yes_no import YesNoJudge, YesNoScorer
from ipo.prompts import DPO_CATEGORY_PROMPTS, REWARDBENCH_LAYOUT
from ipo.runs import RecordLog
from ipo.selfimprove.prompts_pool import Prompt
from ipo.selfimprove.sampling import Sampler, SamplingSettings, encode_prompt, sample_into_log
from ipo.selfimprove.server_sampling import ServerSampler

TOLERANCE = 1e-4  # the bound; measured here: < 1e-6 (float32 on both sides, same model)
FAST_RETRY = ["--server_retry_base_delay", "0.001"]


@pytest.fixture
def server(openai_server, monkeypatch):
    monkeypatch.setenv("VLLM_API_KEY", openai_server.api_key)
    return openai_server


def settings(server, **kw) -> ServerSettings:
    return ServerSettings(server.base_url, server.model_id, retry_base_delay=0.001, **kw)


EXAMPLES = [
    Example(id=i, prompt="What is the capital of France? " * (i + 1), responses=["Paris.", "No idea " * (i + 1)])
    for i in range(3)
]


def scores(judge) -> dict:
    scorer = YesNoScorer(judge, REWARDBENCH_LAYOUT, lambda e: DPO_CATEGORY_PROMPTS["chat"])
    return {e.id: s for batch in scorer.score(EXAMPLES) for e, s, _ in batch}


@pytest.mark.parametrize("scoring", ["upstream", "chat"])
def test_server_p_yes_equals_the_in_process_judge(server, tiny_model, tiny_model_dir, scoring):
    model, tokenizer = tiny_model
    local = scores(YesNoJudge(model, tokenizer, scoring=scoring))
    served = connect(str(tiny_model_dir), settings(server))
    exact = make_yes_no_judge(served, tokenizer, scoring=scoring)
    remote = scores(exact)
    assert exact.describe()["p_yes_method"] == "exact_prompt_logprobs" and not exact.describe()["approximate"]
    assert max(abs(a - b) for i in local for a, b in zip(local[i], remote[i])) < TOLERANCE
    assert len({round(p, 6) for s in remote.values() for p in s}) > 3  # real, different scores
    # One request per judged sequence, carrying one token-id prompt per Yes/No candidate.
    body = server.bodies[-1]
    assert isinstance(body["prompt"][0], list) and len(body["prompt"]) == len(exact.candidates)
    assert body["prompt_logprobs"] == 0

    # Approximate: with every candidate in the top K it is the same number; with a small K the random
    # model's Yes/No fall outside it, are counted, and the score is marked approximate.
    wide = make_yes_no_judge(
        connect(str(tiny_model_dir), settings(server, p_yes_method="approx", top_logprobs=600)),
        tokenizer,
        scoring=scoring,
    )
    assert max(abs(a - b) for i in local for a, b in zip(local[i], scores(wide)[i])) < TOLERANCE
    assert wide.stats["missing_ids"] == 0
    # Text prompts (for servers that take no token ids): the same numbers where the text round trip holds
    text = make_yes_no_judge(
        connect(str(tiny_model_dir), settings(server, p_yes_method="approx", top_logprobs=600, prompt_as="text")),
        tokenizer,
        scoring=scoring,
    )
    assert max(abs(a - b) for i in local for a, b in zip(local[i], scores(text)[i])) < TOLERANCE
    assert isinstance(server.bodies[-1]["prompt"], str) and text.describe()["prompt_as"] == "text"
    narrow = make_yes_no_judge(
        connect(str(tiny_model_dir), settings(server, p_yes_method="approx", top_logprobs=3)),
        tokenizer,
        scoring=scoring,
    )
    approx = scores(narrow)
    assert narrow.describe()["p_yes_method"] == "approx_top_logprobs" and narrow.describe()["approximate"]
    assert narrow.stats["missing_ids"] > 0 and all(0 <= p <= 1 for s in approx.values() for p in s)


def test_approximate_p_yes_reading():
    ids_of = {" Yes": [7], "Yes": [8], " No": [9]}
    top = {"token_id:7": -1.0, "Yes": -2.0, "token_id:9": -0.5, "other": -0.1}
    assert top_logprob_ids(top, ids_of) == {7: -1.0, 8: -2.0, 9: -0.5}
    expected = math.exp(-1) + math.exp(-2)
    assert p_yes_from_logprobs([-1.0, -2.0], [-0.5]) == pytest.approx(expected / (expected + math.exp(-0.5)))


def test_text_prompt_keeps_a_bos_the_tokenizer_does_not_add():
    """SmolLM2's BOS is <|im_start|>, which its chat template writes and its tokenizer never adds: kept in the text."""
    from helpers import build_tokenizer

    from ipo.judges.server import ServedModel

    tokenizer = build_tokenizer()
    tokenizer.bos_token = "<|im_start|>"
    ids = tokenizer(
        tokenizer.apply_chat_template(
            [{"role": "user", "content": "Yes?"}], tokenize=False, add_generation_prompt=True
        ),
        add_special_tokens=False,
    ).input_ids
    assert ids[0] == tokenizer.bos_token_id and tokenizer("a").input_ids[0] != tokenizer.bos_token_id
    served = ServedModel("m", ServerSettings("http://h/v1", "m", p_yes_method="approx", prompt_as="text"), None)
    assert tokenizer(served.prompt(tokenizer, ids), add_special_tokens=False).input_ids == ids


def run_rewardbench(tiny_model_dir, data, out, name, *extra):
    argv = [
        "--model_name",
        str(tiny_model_dir),
        "--dataset",
        str(data),
        "--output_dir",
        str(out),
        "--run_name",
        name,
        "--log_level",
        "warning",
        *extra,
    ]
    assert run_script("Preference_Comparison/Reward_Bench/ours.py", argv) == 0
    return load_run(out / name)


@pytest.mark.parametrize("scoring", ["upstream", "chat"])
def test_rewardbench_end_to_end_server_equals_hf(server, tiny_model_dir, tmp_path, scoring):
    data = write_jsonl(tmp_path / "rb.jsonl", rewardbench_rows(8))
    local, _ = run_rewardbench(
        tiny_model_dir, data, tmp_path, "hf", "--scoring", scoring, "--dtype", "float32", "--device", "cpu"
    )
    server.inject("500", times=2)  # a server failure mid-run: retried, counted, same predictions
    remote, metrics = run_rewardbench(
        tiny_model_dir,
        data,
        tmp_path,
        "server",
        "--scoring",
        scoring,
        "--backend",
        "server",
        "--base_url",
        server.base_url,
        "--served_model",
        server.model_id,
        *FAST_RETRY,
    )
    assert local.keys() == remote.keys()
    for key in local:
        assert local[key]["correct"] == remote[key]["correct"]
        for side in ("p_yes_chosen", "p_yes_rejected"):
            assert abs(local[key][side] - remote[key][side]) < TOLERANCE
    backend = metrics["server_backend"]
    assert backend["p_yes_method"] == "exact_prompt_logprobs" and backend["approximate"] is False
    requests = backend["requests_this_invocation"]
    assert requests["retries"] == 2 and requests["errors_by_kind"] == {"server_error": 2}
    config = json.loads((tmp_path / "server" / "config.json").read_text())
    assert config["args"]["backend"] == "server" and config["resolved"]["p_yes_method"] == "exact_prompt_logprobs"


def test_rmbench_end_to_end_server_equals_hf(server, tiny_model_dir, tmp_path):
    data = write_json(tmp_path / "chat_filtered.json", rmbench_rows(3, domain="chat"))
    base = [
        "--model_name",
        str(tiny_model_dir),
        "--dataset",
        str(data),
        "--output_dir",
        str(tmp_path),
        "--log_level",
        "warning",
    ]
    script = "Preference_Comparison/RM_Bench/ours.py"
    assert run_script(script, [*base, "--run_name", "hf", "--dtype", "float32", "--device", "cpu"]) == 0
    assert (
        run_script(
            script,
            [
                *base,
                "--run_name",
                "server",
                "--backend",
                "server",
                "--base_url",
                server.base_url,
                "--served_model",
                server.model_id,
            ],
        )
        == 0
    )
    local, _ = load_run(tmp_path / "hf", key="key")
    remote, metrics = load_run(tmp_path / "server", key="key")
    assert local.keys() == remote.keys() and len(local) == 3
    for key in local:
        for side in ("p_yes_chosen", "p_yes_rejected"):
            assert max(abs(a - b) for a, b in zip(local[key][side], remote[key][side])) < TOLERANCE
    assert metrics["server_backend"]["p_yes_method"] == "exact_prompt_logprobs"


def test_bad_backend_settings_stop_in_one_line(server, tiny_model_dir, tmp_path, capsys):
    data = write_jsonl(tmp_path / "rb.jsonl", rewardbench_rows(2))
    base = ["--model_name", str(tiny_model_dir), "--dataset", str(data), "--output_dir", str(tmp_path)]
    script = "Preference_Comparison/Reward_Bench/ours.py"
    with pytest.raises(SystemExit) as usage:
        run_script(script, [*base, "--backend", "server"])
    assert usage.value.code == 2 and "needs --base_url" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run_script(script, [*base, "--base_url", server.base_url])
    assert "for --backend server" in capsys.readouterr().err
    server_args = ["--backend", "server", "--base_url", server.base_url, *FAST_RETRY]
    assert run_script(script, [*base, *server_args, "--served_model", "other", "--run_name", "a"]) == 1
    assert "not --served_model 'other'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run_script(script, [*base, *server_args, "--server_prompt", "text"])
    assert "use --server_p_yes approx" in capsys.readouterr().err
    assert not (tmp_path / "a" / "config.json").exists()

    # exact P(Yes) from a server without prompt_logprobs (not vLLM): refused before the run starts
    plain = server.complete_text
    server.complete_text = lambda body: {
        **(answer := plain({k: v for k, v in body.items() if k != "prompt_logprobs"})),
        "choices": [{k: v for k, v in c.items() if k != "prompt_logprobs"} for c in answer["choices"]],
    }
    try:
        assert run_script(script, [*base, *server_args, "--served_model", server.model_id, "--run_name", "b"]) == 1
    finally:
        del server.complete_text
    assert "--server_p_yes approx" in capsys.readouterr().err.strip().splitlines()[-1]
    assert not (tmp_path / "b" / "config.json").exists()


def test_a_refused_key_names_the_server_backends_flag(server, tiny_model_dir, tmp_path, capsys, monkeypatch):
    """The server backend's key variable is chosen by --server_api_key_env: the error names that flag, not the
    API scripts' --api_key_env (which these scripts do not have)."""
    monkeypatch.setenv("VLLM_API_KEY", "not-the-key")
    data = write_jsonl(tmp_path / "rb.jsonl", rewardbench_rows(2))
    argv = ["--model_name", str(tiny_model_dir), "--dataset", str(data), "--output_dir", str(tmp_path)]
    argv += ["--backend", "server", "--base_url", server.base_url, "--served_model", server.model_id, *FAST_RETRY]
    assert run_script("Preference_Comparison/Reward_Bench/ours.py", argv) == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "refused the API key from $VLLM_API_KEY" in error
    assert "use --server_api_key_env to pick" in error and "--api_key_env" not in error.replace("--server_api", "")


PROMPTS = [Prompt(id=f"p{i}", instruction=f"What is {i} plus {i}?", category="chat") for i in range(5)]


def test_server_samples_equal_the_local_samplers_and_survive_resume(server, tiny_model, tiny_model_dir, tmp_path):
    """Same seeds (seed, salt, prompt id, sample index) -> the same samples as the local sampler; a failure that
    outlasts the retries stops the run in one line and the re-run completes with the same records."""
    model, tokenizer = tiny_model
    sampling = SamplingSettings(num_return_sequences=3, temperature=0.7, max_new_tokens=10, seed=5)
    served = connect(str(tiny_model_dir), settings(server, max_retries=1))
    reference = RecordLog(tmp_path / "reference.jsonl")
    sample_into_log(
        Sampler(model, tokenizer, sampling, batch_size=2, salt="round1"), tokenizer, PROMPTS, reference, "chat"
    )
    sampler = ServerSampler(served, tokenizer, sampling, batch_size=2, salt="round1")
    sampler.client.max_concurrency = 1  # windows of 4 requests: the failure below falls mid-run
    log = RecordLog(tmp_path / "responses.jsonl")
    target = json.dumps(encode_prompt(tokenizer, PROMPTS[3].instruction, "chat"))
    server.inject("500", times=2, match=target[1:-1])  # one retry is not enough for p3
    with pytest.raises(IpoError, match="re-run the same command to resume"):
        sample_into_log(sampler, tokenizer, PROMPTS, log, "chat")
    assert 0 < len(RecordLog(log.path)) < len(PROMPTS)
    assert sample_into_log(sampler, tokenizer, PROMPTS, RecordLog(log.path), "chat") < len(PROMPTS)
    assert by_id(log.path) == by_id(reference.path)
    assert sampler.resolved()["backend"] == "server" and sampler.client.usage()["retries"] >= 1
    assert len({r for rec in read_jsonl(log.path) for r in rec["responses"]}) > 5  # sampled, not greedy copies


def by_id(path):
    return {r["id"]: r for r in read_jsonl(path)}


def test_sampler_reads_token_ids_and_stop_reason(server, tiny_model, tiny_model_dir):
    _, tokenizer = tiny_model
    sampler = ServerSampler(connect(str(tiny_model_dir), settings(server)), tokenizer, SamplingSettings())
    eos = tokenizer.eos_token_id
    hello = tokenizer("Hello", add_special_tokens=False).input_ids
    stopped = {"choices": [{"token_ids": [*hello, eos], "finish_reason": "stop", "text": "Hello"}]}
    assert sampler.response(stopped) == ("Hello", len(hello), True)
    cut = {"choices": [{"text": " Hello ", "finish_reason": "length"}]}  # no token ids: counted from the text
    assert sampler.response(cut) == ("Hello", len(tokenizer(" Hello ", add_special_tokens=False).input_ids), False)
    assert sampler.stats["token_ids_from_text"] == 1
    body = sampler.request("p0", [1, 2], 0)
    assert body["extra_body"]["top_k"] == 50 and body["extra_body"]["stop_token_ids"] == [eos]


def test_self_reward_judge_on_the_server_equals_local(server, tiny_model, tiny_model_dir):
    model, tokenizer = tiny_model
    examples = EXAMPLES[:2]
    local = SelfRewardScorer(model, tokenizer, max_new_tokens=6)
    remote = ServerSelfRewardScorer(connect(str(tiny_model_dir), settings(server)), tokenizer, max_new_tokens=6)
    a = [(s, x["generated"]) for batch in local.score(examples) for _, s, x in batch]
    b = [(s, x["generated"]) for batch in remote.score(examples) for _, s, x in batch]
    assert a == b


def test_dpo_loop_samples_and_judges_through_the_server(server, tiny_model_dir, tmp_path):
    """DPO/ours.py --backend server up to the pairs: the same responses and (within 1e-4) scores as --backend hf."""
    prompts = write_jsonl(
        tmp_path / "prompts.jsonl",
        [{"id": f"p{i}", "instruction": f"What is {i} plus {i}?", "category": "chat"} for i in range(6)],
    )
    common = [
        "--model_id",
        str(tiny_model_dir),
        "--dataset_name",
        str(prompts),
        "--max_new_tokens",
        "6",
        "--stop_after",
        "pairs",
        "--output_dir",
        str(tmp_path),
        "--log_level",
        "warning",
    ]
    assert run_script("DPO/ours.py", [*common, "--run_name", "hf", "--dtype", "float32", "--device", "cpu"]) == 0
    assert (
        run_script(
            "DPO/ours.py",
            [
                *common,
                "--run_name",
                "server",
                "--backend",
                "server",
                "--base_url",
                server.base_url,
                "--served_model",
                server.model_id,
                *FAST_RETRY,
            ],
        )
        == 0
    )
    local, remote = (by_id(tmp_path / name / "round_1" / "scored.jsonl") for name in ("hf", "server"))
    assert local.keys() == remote.keys()
    for key in local:
        assert local[key]["responses"] == remote[key]["responses"]
        assert max(abs(a - b) for a, b in zip(local[key]["p_yes"], remote[key]["p_yes"])) < TOLERANCE
    metrics = json.loads((tmp_path / "server" / "round_1" / "metrics.json").read_text())
    assert metrics["sampling"]["backend"] == "server"
    assert metrics["judge_settings"]["p_yes_method"] == "exact_prompt_logprobs"
    assert (tmp_path / "server" / "round_1" / "pairs.jsonl").is_file()
