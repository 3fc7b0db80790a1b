"""API judges (ipo.judges.api, Reward_Bench/ours_gpt.py, Reward_Bench/binary_gpt.py).

Pure parsing and retry functions on hand-built inputs; the client and both scripts against a real
OpenAI-compatible HTTP server on 127.0.0.1 (tests/openai_server.py, the tiny model behind it) through the
real `openai` SDK: faults (429, 500, stalls, dropped connections), the cache, resume, bad input.
Nothing can hang: every request has a client timeout, every subprocess a timeout, stalls are bounded.
"""

import json
import math
import os
import random
import signal
import socket
import subprocess
import sys
import time

import pytest
from helpers import API_MODEL as MODEL
from helpers import REPO, api_argv, load_run, read_jsonl, rewardbench_rows, run_script, run_subprocess, write_jsonl

from ipo import IpoError
from ipo.benchmarks.api_failures import forget_failures
from ipo.judges import api, api_client
from ipo.prompts import (
    COMPARE_PROMPT_REWARDBENCH,
    REWARDBENCH_LAYOUT,
    REWARDBENCH_PROMPTS,
    chat_user_content,
    render_api_upstream,
)

OURS = "Preference_Comparison/Reward_Bench/ours_gpt.py"
BINARY = "Preference_Comparison/Reward_Bench/binary_gpt.py"
N_PAIRS = 16
ROWS = rewardbench_rows(N_PAIRS)  # what the scripts read; responses are unique texts, used to aim faults


def lp(token, logprob):
    return {"token": token, "logprob": logprob, "bytes": list(token.encode())}


def completion(top_logprobs=None, content="Yes", logprobs=True):
    """A chat-completions JSON answer as OpenAI sends it."""
    entries = [{**lp(content, -0.1), "top_logprobs": top_logprobs or []}] if logprobs else None
    return {
        "id": "x",
        "object": "chat.completion",
        "created": 0,
        "model": "m",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "logprobs": {"content": entries} if logprobs else None,
                "finish_reason": "length",
            }
        ],
    }


# ---------------------------------------------------------------------------------------------------
# Pure functions
# ---------------------------------------------------------------------------------------------------
TOP = [
    lp(" yes", -1.0),
    lp("Yes", -0.5),
    lp("Yesterday", -0.1),
    lp("Yes.", -0.2),
    lp(" No", -2.0),
    lp("no", -1.5),
    lp(" NO ", -3.0),
    lp("maybe", -0.3),
]


def test_yes_no_logprobs_upstream_takes_the_first_match_of_each_side():
    # upstream ours_gpt.py: first entry whose token.strip().lower() is "yes" / "no", in list order.
    assert api.yes_no_logprobs(TOP, "upstream") == (-1.0, -2.0)
    assert api.yes_no_logprobs([lp("Maybe", -1.0)], "upstream") == (None, None)
    assert api.yes_no_logprobs([lp("YES", -1.0)], "upstream") == (-1.0, None)


def test_yes_no_logprobs_chat_sums_every_variant():
    lp_yes, lp_no = api.yes_no_logprobs(TOP, "chat")
    assert lp_yes == pytest.approx(math.log(math.exp(-1.0) + math.exp(-0.5)))  # not "Yesterday", not "Yes."
    assert lp_no == pytest.approx(math.log(math.exp(-2.0) + math.exp(-1.5) + math.exp(-3.0)))
    with pytest.raises(ValueError):
        api.yes_no_logprobs(TOP, "other")


def test_p_yes_from_logprobs_is_the_normalised_ratio():
    a, b = -0.7, -1.9
    assert api.p_yes_from_logprobs(a, b) == pytest.approx(math.exp(a) / (math.exp(a) + math.exp(b)), abs=1e-15)
    assert api.p_yes_from_logprobs(-1.0, -1.0) == 0.5
    assert api.p_yes_from_logprobs(-1000.0, -1.0) == pytest.approx(0.0, abs=1e-300)  # no overflow
    assert api.p_yes_from_logprobs(-1.0, None) == 1.0 and api.p_yes_from_logprobs(None, -1.0) == 0.0  # upstream
    assert api.p_yes_from_logprobs(None, None) is None  # upstream: 0.0; here a failure


def test_parse_yes_no_values_and_failures():
    answer = api.parse_yes_no(completion(TOP), "upstream")
    assert answer.failure is None and answer.value == pytest.approx(1 / (1 + math.exp(-1.0)))
    assert answer.info == {"logprob_yes": -1.0, "logprob_no": -2.0}
    neither = api.parse_yes_no(completion([lp("Maybe", -0.1), lp("Yesterday", -0.2)]), "chat")
    assert (neither.value, neither.failure) == (None, "no_yes_no")
    missing = api.parse_yes_no(completion(logprobs=False), "upstream")
    assert (missing.value, missing.failure) == (None, "no_logprobs")
    assert api.parse_yes_no({"choices": []}, "upstream").failure == "no_logprobs"


@pytest.mark.parametrize(
    "text, upstream, chat",
    [
        ("Better response: Response 2\nExplanation: ...", 2, 2),
        ("better RESPONSE:Response1 because", 1, 1),
        ("Better response:\n  Response 2", 2, 2),
        ("**Better response:** Response 2", None, 2),  # markdown: upstream's regex misses it
        ("Better response: [Response 1]", None, 1),
        ("Better response: Response 1. Better response: Response 2", 1, 1),  # first match
        ("Response 2 is better.", None, None),
        ("", None, None),
    ],
)
def test_pairwise_verdict(text, upstream, chat):
    assert api.pairwise_verdict(text, "upstream") == upstream
    assert api.pairwise_verdict(text, "chat") == chat
    answer = api.parse_pairwise(completion(content=text, logprobs=False), "upstream")
    assert answer.value == upstream and answer.failure == (None if upstream else "unparsed")
    assert answer.info == {"judge_text": text}


def test_pairwise_fields_and_order_metrics():
    ok = {"failure": None, "failed": [], "info": [{"judge_text": "a"}, {"judge_text": "b"}]}
    assert api.pairwise_fields([1, 2], ok) == {
        "correct": True,
        "tie": False,
        "verdict_chosen_first": 1,
        "verdict_chosen_second": 2,
        "failure": None,
        "failed": [],
        "judge_text_chosen_first": "a",
        "judge_text_chosen_second": "b",
    }
    assert (api.pairwise_fields([1, 1], ok)["correct"], api.pairwise_fields([1, 1], ok)["tie"]) == (False, True)
    assert (api.pairwise_fields([2, 1], ok)["correct"], api.pairwise_fields([2, 1], ok)["tie"]) == (False, False)
    failed = {"failure": "unparsed", "failed": [0], "info": [{"judge_text": "?"}, {"judge_text": "b"}]}
    fields = api.pairwise_fields([None, 2], failed)
    assert (fields["correct"], fields["tie"], fields["failed"]) == (False, False, ["chosen_first"])
    records = [{"verdict_chosen_first": a, "verdict_chosen_second": b} for a, b in [(1, 2), (1, 1), (None, 2), (2, 1)]]
    metrics = api.order_metrics(records)
    assert metrics["orders"]["chosen_first"] == {"n_answered": 3, "accuracy": 2 / 3, "accuracy_all_pairs": 0.5}
    assert metrics["orders"]["chosen_second"] == {"n_answered": 4, "accuracy": 0.5, "accuracy_all_pairs": 0.5}
    assert metrics["agreement"] == 2 / 3 and metrics["n_answered_both_orders"] == 3  # (1,2) and (2,1) agree
    single = api.order_metrics(records, api.PAIRWISE_ORDERS[:1])
    assert set(single) == {"orders"} and set(single["orders"]) == {"chosen_first"}


def test_answer_fields_give_every_record_the_same_columns():
    extra = {"failure": "timeout", "failed": [1], "info": [{"logprob_yes": -1.0, "logprob_no": -2.0}, {"error": "x"}]}
    assert api.answer_fields(extra, ("chosen", "rejected"), keys=("logprob_yes", "logprob_no")) == {
        "failure": "timeout",
        "failed": ["rejected"],
        "logprob_yes_chosen": -1.0,
        "logprob_yes_rejected": None,
        "logprob_no_chosen": -2.0,
        "logprob_no_rejected": None,
    }


def test_requests_are_upstreams():
    template, question, response = REWARDBENCH_PROMPTS["hep-python"], "Q?", "R."
    content = api.yes_no_content("upstream", REWARDBENCH_LAYOUT, template, question, response)
    assert content == f"{template}\nUser: {question}\nResponse: {response}"
    assert content == render_api_upstream(template, question, response)
    assert api.yes_no_request("upstream", content) == {
        "messages": [{"role": "user", "content": content}],
        "max_tokens": 2,
        "logprobs": True,
        "top_logprobs": 10,
        "temperature": 0.7,
    }
    chat = api.yes_no_content("chat", REWARDBENCH_LAYOUT, template, question, response)
    assert chat == chat_user_content(template, question, response)
    assert api.yes_no_request("chat", chat)["top_logprobs"] == 20
    assert api.pairwise_request("upstream", "x") == {
        "messages": [{"role": "user", "content": "x"}],
        "max_tokens": 200,
        "temperature": 0.1,
    }


def test_request_key():
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": 0}
    key = api_client.request_key("http://h/v1", body)
    assert key == api_client.request_key("http://h/v1/", dict(reversed(list(body.items()))))  # canonical
    assert key != api_client.request_key("http://other/v1", body)
    assert key != api_client.request_key("http://h/v1", {**body, "model": "m2"})
    assert key != api_client.request_key("http://h/v1", {**body, "temperature": 0.1})


def test_retry_delay_and_retry_after():
    rng = random.Random(0)
    for attempt in (1, 2, 3, 4):
        delay = api_client.retry_delay(attempt, 1.0, None, rng)
        assert 2 ** (attempt - 1) / 2 <= delay <= 2 ** (attempt - 1)  # exponential, with jitter
    assert api_client.retry_delay(20, 1.0, None, rng) <= api_client.MAX_RETRY_DELAY
    assert api_client.retry_delay(3, 1.0, 0.25, rng) == 0.25  # the server's Retry-After wins
    assert api_client.retry_delay(1, 1.0, 3600, rng) <= 1.0  # ...unless it is longer than we would ever wait
    assert api_client.parse_retry_after({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    assert api_client.parse_retry_after({"retry-after": "2"}) == 2.0
    assert api_client.parse_retry_after({}) is None and api_client.parse_retry_after({"retry-after": "soon"}) is None
    assert (
        api_client.status_kind(429) == "rate_limited" and api_client.status_kind(429, "insufficient_quota") == "quota"
    )
    assert [api_client.status_kind(s) for s in (400, 401, 404, 500, 503)] == [
        "rejected",
        "unauthorized",
        "not_found",
        "server_error",
        "server_error",
    ]


def test_response_cache_survives_a_cut_last_line(tmp_path):
    cache = api_client.ResponseCache(tmp_path, "openai/gpt-4o-mini")
    assert cache.path.name == "openai_gpt-4o-mini.jsonl" and not cache.path.exists()  # nothing until an answer
    cache.put("k1", "m", {"a": 1})
    cache.put("k2", "m", {"a": 2})
    with open(cache.path, "a") as handle:
        handle.write('{"key": "k3", "resp')  # killed mid-write
    reloaded = api_client.ResponseCache(tmp_path, "openai/gpt-4o-mini")
    assert len(reloaded) == 2 and reloaded.get("k2") == {"a": 2} and reloaded.get("k3") is None
    reloaded.put("k3", "m", {"a": 3})
    assert len(api_client.ResponseCache(tmp_path, "openai/gpt-4o-mini")) == 3


def test_record_log_discard_rewrites_without_the_failures(tmp_path):
    from ipo.runs import RecordLog

    log = RecordLog(tmp_path / "p.jsonl")
    log.append([{"id": 1, "failure": None}, {"id": 2, "failure": "timeout"}, {"id": 3, "failure": None}])
    assert forget_failures(log) == 1 and 2 not in log and len(log) == 2
    assert [r["id"] for r in read_jsonl(tmp_path / "p.jsonl")] == [1, 3]
    assert sorted(RecordLog(tmp_path / "p.jsonl").records) == ["1", "3"]
    assert forget_failures(log) == 0


def test_read_api_key(monkeypatch):
    monkeypatch.setenv("MY_KEY", "  secret  ")
    assert api_client.read_api_key("MY_KEY") == "secret"
    monkeypatch.delenv("MY_KEY")
    with pytest.raises(IpoError, match="MY_KEY is not set"):
        api_client.read_api_key("MY_KEY")


# ---------------------------------------------------------------------------------------------------
# The client against the server
# ---------------------------------------------------------------------------------------------------
def make_client(server, tmp_path=None, **kwargs):
    settings = {"timeout": 30.0, "max_retries": 3, "retry_base_delay": 0.001, "max_concurrency": 4}
    settings.update(kwargs)
    cache = api_client.ResponseCache(tmp_path, MODEL) if tmp_path is not None else None
    return api_client.ApiClient(base_url=server.base_url, model=MODEL, api_key=server.api_key, cache=cache, **settings)


def body(text):
    return api.yes_no_request("upstream", text)


@pytest.mark.parametrize(
    "fault, times, kind",
    [("429", 2, "rate_limited"), ("503", 1, "server_error"), ("drop", 2, "connection"), ("garbage", 1, "bad_response")],
)
def test_client_retries_until_it_succeeds(openai_server, fault, times, kind):
    client = make_client(openai_server)
    openai_server.inject(fault, times)
    result = client.fetch(body("hello"))
    assert result.failure is None and api.parse_yes_no(result.response, "upstream").value is not None
    usage = client.usage()
    assert usage["requests_sent"] == openai_server.requests == times + 1
    assert usage["retries"] == times and usage["errors_by_kind"] == {kind: times} and usage["answered"] == 1


def test_client_times_out_a_stalled_request_and_retries(openai_server):
    client = make_client(openai_server, timeout=2.0)
    openai_server.inject("stall", 1)
    result = client.fetch(body("hello"))
    assert result.failure is None
    assert client.usage()["errors_by_kind"].get("timeout", 0) >= 1
    assert client.usage()["requests_sent"] == openai_server.requests == client.usage()["retries"] + 1


def test_client_gives_up_after_max_retries_and_counts_it(openai_server):
    client = make_client(openai_server, max_retries=2)
    openai_server.inject("500", 10)
    result = client.fetch(body("hello"))
    assert (result.response, result.failure) == (None, "server_error") and "500" in result.message
    usage = client.usage()
    assert usage["requests_sent"] == openai_server.requests == 3 and usage["retries"] == 2
    assert usage["gave_up_by_kind"] == {"server_error": 1}
    with pytest.raises(IpoError, match="failed the first request in 3 attempt"):
        client.fetch(body("hello"), strict=True)  # the probe's rule: nothing answered yet is fatal


def test_client_fatal_errors_are_one_clear_line(openai_server, tmp_path):
    with pytest.raises(IpoError, match="'nope'.*no such model.*does not exist"):
        api_client.ApiClient(base_url=openai_server.base_url, model="nope", api_key="test-key").fetch(body("x"))
    with pytest.raises(IpoError, match=r"refused the API key from \$OPENAI_API_KEY"):
        api_client.ApiClient(base_url=openai_server.base_url, model=MODEL, api_key="wrong-key").fetch(body("x"))
    openai_server.inject("400", 1)
    client = make_client(openai_server)
    assert client.fetch(body("x")).failure == "rejected"  # not retried, not fatal after the probe
    assert openai_server.requests == 3  # 404, 401, 400: one attempt each
    without_v1 = api_client.ApiClient(base_url=openai_server.base_url[: -len("/v1")], model=MODEL, api_key="test-key")
    with pytest.raises(IpoError, match="no such model or endpoint.*usually ends in /v1"):
        without_v1.fetch(body("x"))
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    client = api_client.ApiClient(base_url=closed, model=MODEL, api_key="k", max_retries=1, retry_base_delay=0.001)
    with pytest.raises(IpoError, match="cannot reach .* after 2 attempt"):
        client.fetch(body("x"), strict=True)


def test_fetch_many_is_concurrent_deduplicated_and_cached(openai_server, tmp_path):
    bodies = [body(f"question {i % 6}") for i in range(10)]  # 6 distinct requests
    client = make_client(openai_server, tmp_path)
    results = dict(pair for batch in client.fetch_many(bodies) for pair in batch)
    assert sorted(results) == list(range(10)) and all(r.failure is None for r in results.values())
    assert openai_server.requests == 6 and len(client.cache) == 6
    assert results[0].response == results[6].response
    again = make_client(openai_server, tmp_path)  # a new process: the cache is read from disk
    cached = dict(pair for batch in again.fetch_many(bodies) for pair in batch)
    assert openai_server.requests == 6 and again.usage()["cache_hits"] == 10 and again.usage()["requests_sent"] == 0
    assert all(cached[i].response == results[i].response and cached[i].cached for i in range(10))


# ---------------------------------------------------------------------------------------------------
# The scripts, end to end
# ---------------------------------------------------------------------------------------------------
@pytest.fixture
def rb_file(tmp_path):
    return write_jsonl(tmp_path / "rb.jsonl", rewardbench_rows(N_PAIRS))


argv_for = api_argv


def test_help():
    for script in (OURS, BINARY):
        result = run_subprocess(script, ["--help"], timeout=120)
        assert result.returncode == 0
        for flag in (
            "--base_url",
            "--api_key_env",
            "--max_retries",
            "--max_concurrency",
            "--timeout",
            "--cache_dir",
            "--scoring",
        ):
            assert flag in result.stdout, (script, flag)
    assert "--both_orders" in run_subprocess(BINARY, ["--help"], timeout=120).stdout


RECORD_COLUMNS = {
    "id",
    "subset",
    "p_yes_chosen",
    "p_yes_rejected",
    "correct",
    "tie",
    "failure",
    "failed",
    "logprob_yes_chosen",
    "logprob_no_chosen",
    "logprob_yes_rejected",
    "logprob_no_rejected",
}


def test_ours_gpt_end_to_end_resume_and_overwrite(openai_server, rb_file, tmp_path, capsys):
    out = tmp_path / "out"
    assert run_script(OURS, argv_for(openai_server, rb_file, out)) == 0
    run_dir = out / "r"
    assert "## API judge" in capsys.readouterr().out
    for name in (
        "config.json",
        "predictions.jsonl",
        "metrics.json",
        "results.md",
        "subset_accuracy.png",
        f"accuracy_reward-bench_yesno_{MODEL}.json",
    ):
        assert (run_dir / name).is_file(), name
    predictions, metrics = load_run(run_dir)
    assert sorted(predictions) == list(range(1000, 1000 + N_PAIRS))
    for p in predictions.values():
        assert set(p) == RECORD_COLUMNS
        assert p["failure"] is None and 0 < p["p_yes_chosen"] < 1 and 0 < p["p_yes_rejected"] < 1
        from_logprobs = api.p_yes_from_logprobs(p["logprob_yes_chosen"], p["logprob_no_chosen"])
        assert p["p_yes_chosen"] == pytest.approx(from_logprobs)
        assert p["correct"] == (p["p_yes_chosen"] > p["p_yes_rejected"])
    # One request per response, each the upstream request for its subset's question.
    assert openai_server.requests == 2 * N_PAIRS
    first = ROWS[0]
    assert openai_server.bodies[0] == {
        "model": MODEL,
        **api.yes_no_request(
            "upstream", render_api_upstream(REWARDBENCH_PROMPTS[first["subset"]], first["prompt"], first["chosen"])
        ),
    }  # the probe: pair 1000, chosen
    assert metrics["n_pairs"] == N_PAIRS and metrics["n_failed"] == 0 and metrics["failures_by_kind"] == {}
    assert (
        metrics["accuracy"]
        == metrics["accuracy_all_pairs"]
        == metrics["accuracy_answered"]
        == pytest.approx(sum(p["correct"] for p in predictions.values()) / N_PAIRS)
    )
    usage = metrics["api_usage_this_invocation"]
    assert usage["requests_sent"] == usage["answered"] == 2 * N_PAIRS and usage["cache_hits"] == 1  # the probe's
    assert usage["retries"] == 0 and usage["prompt_tokens"] > 0
    config = json.loads((run_dir / "config.json").read_text())
    assert config["resolved"]["request"]["top_logprobs"] == 10 and config["resolved"]["model"] == MODEL
    for path in out.rglob("*"):  # the key is nowhere on disk
        assert path.is_dir() or openai_server.api_key not in path.read_text(errors="ignore"), path
    cache = out / "api_cache" / f"{MODEL}.jsonl"
    assert len(cache.read_text().splitlines()) == 2 * N_PAIRS

    # The same command again: everything is done, nothing is sent.
    assert run_script(OURS, argv_for(openai_server, rb_file, out)) == 0
    assert openai_server.requests == 2 * N_PAIRS
    # --overwrite starts the run over, but the answers come from the shared cache: zero new requests.
    assert run_script(OURS, argv_for(openai_server, rb_file, out, "--overwrite")) == 0
    assert openai_server.requests == 2 * N_PAIRS
    again, metrics_again = load_run(run_dir)
    assert again == predictions
    assert metrics_again["api_usage_this_invocation"]["requests_sent"] == 0
    assert metrics_again["api_usage_this_invocation"]["cache_hits"] == 2 * N_PAIRS
    assert metrics_again["subsets"] == metrics["subsets"]


def test_ours_gpt_chat_mode(openai_server, rb_file, tmp_path):
    out = tmp_path / "out"
    assert run_script(OURS, argv_for(openai_server, rb_file, out, "--scoring", "chat", "--limit", "1")) == 0
    predictions, metrics = load_run(out / "r")
    assert metrics["n_pairs"] == 8 and metrics["n_failed"] == 0  # --limit 1 per subset, 8 subsets
    sent = openai_server.bodies[0]
    assert (sent["max_tokens"], sent["top_logprobs"], sent["temperature"]) == (1, 20, 0)
    row = ROWS[0]
    expected = chat_user_content(REWARDBENCH_PROMPTS[row["subset"]], row["prompt"], row["chosen"])
    assert sent["messages"][0]["content"] == expected


def clean_reference(server, data, tmp_path):
    """Predictions of a run without faults (its own output folder and cache)."""
    out = tmp_path / "clean"
    assert run_script(OURS, argv_for(server, data, out)) == 0
    server.reset()
    return load_run(out / "r")[0]


@pytest.mark.parametrize("fault, times, kind", [("429", 3, "rate_limited"), ("drop", 2, "connection")])
def test_faults_are_retried_and_nothing_is_lost(openai_server, rb_file, tmp_path, fault, times, kind):
    reference = clean_reference(openai_server, rb_file, tmp_path)
    openai_server.inject(fault, times)
    out = tmp_path / "out"
    assert run_script(OURS, argv_for(openai_server, rb_file, out, "--max_concurrency", "3")) == 0
    predictions, metrics = load_run(out / "r")
    assert predictions == reference  # every pair, the same values
    usage = metrics["api_usage_this_invocation"]
    assert usage["requests_sent"] == openai_server.requests == 2 * N_PAIRS + times
    assert usage["retries"] == times and usage["errors_by_kind"] == {kind: times} and usage["gave_up_by_kind"] == {}
    assert metrics["n_failed"] == 0


def test_stalled_request_times_out_and_is_retried(openai_server, rb_file, tmp_path):
    reference = clean_reference(openai_server, rb_file, tmp_path)
    openai_server.inject("stall", 1, match=ROWS[4]["rejected"])
    out = tmp_path / "out"
    assert run_script(OURS, argv_for(openai_server, rb_file, out, "--timeout", "3")) == 0
    predictions, metrics = load_run(out / "r")
    assert predictions == reference
    usage = metrics["api_usage_this_invocation"]
    assert usage["errors_by_kind"].get("timeout", 0) >= 1 and metrics["n_failed"] == 0
    assert usage["requests_sent"] == openai_server.requests == 2 * N_PAIRS + usage["retries"]


def test_failures_are_counted_not_scored_and_retried_by_the_next_run(openai_server, rb_file, tmp_path):
    reference = clean_reference(openai_server, rb_file, tmp_path)
    openai_server.inject("500", 3, match=ROWS[3]["rejected"])
    out = tmp_path / "out"
    argv = argv_for(openai_server, rb_file, out, "--max_retries", "2")
    assert run_script(OURS, argv) == 0
    predictions, metrics = load_run(out / "r")
    failed = predictions[1003]
    assert set(failed) == RECORD_COLUMNS and failed["failure"] == "server_error" and failed["failed"] == ["rejected"]
    assert failed["p_yes_rejected"] is None and failed["correct"] is False
    assert failed["p_yes_chosen"] == reference[1003]["p_yes_chosen"]
    assert metrics["n_failed"] == 1 and metrics["n_answered"] == N_PAIRS - 1
    assert metrics["failures_by_kind"] == {"server_error": 1}
    n_correct = sum(p["correct"] for p in predictions.values())
    assert metrics["accuracy_all_pairs"] == metrics["accuracy"] == pytest.approx(n_correct / N_PAIRS)
    assert metrics["accuracy_answered"] == metrics["answered_only"]["accuracy"]
    assert metrics["accuracy_answered"] == pytest.approx(n_correct / (N_PAIRS - 1))
    usage = metrics["api_usage_this_invocation"]
    assert usage["requests_sent"] == openai_server.requests == 2 * N_PAIRS + 2 and usage["retries"] == 2
    assert usage["gave_up_by_kind"] == {"server_error": 1}
    assert "1 failed (server_error: 1)" in (out / "r" / "results.md").read_text()
    # The same command again: only the failed request is sent; its pair's other answer is cached.
    sent_before = openai_server.requests
    assert run_script(OURS, argv) == 0
    predictions, metrics = load_run(out / "r")
    assert openai_server.requests == sent_before + 1
    assert predictions == reference and metrics["n_failed"] == 0
    assert metrics["api_usage_this_invocation"]["cache_hits"] == 2  # the chosen side and the probe's answer


def test_a_response_without_yes_or_no_is_a_failure(openai_server, rb_file, tmp_path):
    def no_answer_for_pair_1002(request):
        if ROWS[2]["chosen"] in request["messages"][0]["content"]:
            return {"content": "Maybe", "top_logprobs": [lp("Maybe", -0.1), lp("Perhaps", -2.0)]}
        return None

    openai_server.canned = no_answer_for_pair_1002
    out = tmp_path / "out"
    assert run_script(OURS, argv_for(openai_server, rb_file, out)) == 0
    predictions, metrics = load_run(out / "r")
    assert predictions[1002]["failure"] == "no_yes_no" and predictions[1002]["p_yes_chosen"] is None
    assert metrics["failures_by_kind"] == {"no_yes_no": 1}
    # Re-running asks the unreadable answer again (issue 11: it was not cached, so the failure can clear); the
    # server still answers "Maybe", so the pair is still a failure. The raw answers are kept for the record.
    assert run_script(OURS, argv_for(openai_server, rb_file, out)) == 0
    assert openai_server.requests == 2 * N_PAIRS + 1
    assert load_run(out / "r")[1]["failures_by_kind"] == {"no_yes_no": 1}
    assert len(read_jsonl(out / "api_cache" / f"{MODEL}.unreadable.jsonl")) == 2


def test_endpoint_without_logprobs_fails_at_once(openai_server, rb_file, tmp_path):
    openai_server.canned = lambda request: {"content": "Yes", "logprobs": False}
    out = tmp_path / "out"
    result = run_subprocess(OURS, argv_for(openai_server, rb_file, out, "--log_level", "error"), timeout=180)
    assert result.returncode == 1 and result.stderr.strip().count("\n") == 0, result.stderr
    assert "returned no log-probabilities" in result.stderr
    assert openai_server.requests == 1 and not (out / "r").exists()


def test_fatal_error_mid_run_keeps_the_cache(openai_server, rb_file, tmp_path, capsys):
    reference = clean_reference(openai_server, rb_file, tmp_path)
    openai_server.inject("401", 1, match=ROWS[5]["chosen"])  # the key "expires" at pair 1005
    out = tmp_path / "out"
    argv = argv_for(openai_server, rb_file, out, "--max_concurrency", "1")
    assert run_script(OURS, argv) == 1
    err = capsys.readouterr().err
    assert "refused the API key from $OPENAI_API_KEY" in err
    cached = len((out / "api_cache" / f"{MODEL}.jsonl").read_text().splitlines())
    assert 10 <= cached < 2 * N_PAIRS and openai_server.requests == cached + 1  # every answer before it kept
    assert run_script(OURS, argv) == 0  # the key "works" again: only what is missing is sent
    assert openai_server.requests == (cached + 1) + (2 * N_PAIRS - cached)
    assert load_run(out / "r")[0] == reference


def test_kill_minus_9_resumes_from_the_cache(openai_server, rb_file, tmp_path):
    reference = clean_reference(openai_server, rb_file, tmp_path)
    openai_server.canned = lambda request: time.sleep(0.1)  # a slow server (then the model answers)
    out = tmp_path / "out"
    argv = argv_for(openai_server, rb_file, out, "--max_concurrency", "2", "--log_level", "error")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(
        [sys.executable, str(REPO / OURS), *argv],
        env=env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    predictions = out / "r" / "predictions.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (predictions.exists() and predictions.read_text().count("\n") >= 3):
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    time.sleep(0.3)  # requests the dead client had on the wire reach the server
    done = predictions.read_text().count("\n")
    assert 3 <= done < N_PAIRS, "the run was not interrupted part-way"
    cached = len((out / "api_cache" / f"{MODEL}.jsonl").read_text().splitlines())
    assert cached >= 2 * done  # every saved pair's answers are cached
    sent_before = openai_server.requests
    openai_server.canned = None
    assert run_script(OURS, argv) == 0
    assert openai_server.requests - sent_before == 2 * N_PAIRS - cached  # only what was never answered
    assert load_run(out / "r")[0] == reference  # nothing lost, nothing twice


@pytest.mark.parametrize(
    "case, message, status",
    [
        ("missing_key", "OPENAI_API_KEY is not set", 1),
        ("missing_named_key", "MY_PROVIDER_KEY is not set", 1),
        ("key_on_command_line", "--api_key is not accepted", 2),
        ("wrong_key", "refused the API key", 1),
        ("unknown_model", "no such model", 1),
        ("unreachable", "cannot reach", 1),
        ("bad_base_url", "--base_url must be an http(s) URL", 2),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(openai_server, rb_file, tmp_path, monkeypatch, case, message, status):
    out = tmp_path / "out"
    argv = argv_for(openai_server, rb_file, out, "--log_level", "error", "--max_retries", "1")
    if case == "missing_key":
        monkeypatch.delenv("OPENAI_API_KEY")
    elif case == "missing_named_key":
        argv += ["--api_key_env", "MY_PROVIDER_KEY"]
    elif case == "key_on_command_line":
        argv += ["--api_key", "sk-TOPSECRET"]
    elif case == "wrong_key":
        monkeypatch.setenv("OPENAI_API_KEY", "sk-wrong")
    elif case == "unknown_model":
        argv[argv.index(MODEL)] = "openai/gpt-4o-mini"
    elif case == "unreachable":
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        argv[1] = f"http://127.0.0.1:{port}/v1"
    elif case == "bad_base_url":
        argv[1] = "openrouter.ai/api/v1"
    for script in (OURS, BINARY):
        result = run_subprocess(script, argv, timeout=180)
        assert result.returncode == status, (script, result.stderr)
        assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr, result.stderr
        assert message in result.stderr and "TOPSECRET" not in result.stderr and "sk-wrong" not in result.stderr
        assert not out.exists(), list(out.rglob("*"))


# ---------------------------------------------------------------------------------------------------
# The pairwise judge
# ---------------------------------------------------------------------------------------------------
def shown_first(request):
    content = request["messages"][0]["content"]
    return content.split("Response 1:\n    ")[1].split("\n\n    Response 2:")[0]


def always_first(request):
    """A judge with total position bias."""
    return {"content": "Better response: Response 1\nExplanation: it comes first."}


def knows_the_answer(request):
    """A judge that picks the right response (the rejected ones in the fixture say 'Hello')."""
    return {"content": f"Better response: Response {2 if 'Hello' in shown_first(request) else 1}\nExplanation: ok"}


def test_binary_upstream_asks_chosen_first_with_upstreams_request(openai_server, rb_file, tmp_path):
    openai_server.canned = always_first
    out = tmp_path / "out"
    assert run_script(BINARY, argv_for(openai_server, rb_file, out)) == 0
    predictions, metrics = load_run(out / "r")
    assert openai_server.requests == N_PAIRS
    row = ROWS[0]
    assert openai_server.bodies[0] == {
        "model": MODEL,
        "max_tokens": 200,
        "temperature": 0.1,
        "messages": [
            {
                "role": "user",
                "content": COMPARE_PROMPT_REWARDBENCH.format(
                    instruction=row["prompt"], response1=row["chosen"], response2=row["rejected"]
                ),
            }
        ],
    }
    assert metrics["accuracy"] == 1.0 and metrics["orders"]["chosen_first"]["accuracy"] == 1.0
    assert "chosen_second" not in metrics["orders"] and "agreement" not in metrics
    p = predictions[1000]
    assert p["verdict_chosen_first"] == 1 and p["correct"] and not p["tie"]
    assert p["judge_text_chosen_first"].startswith("Better response: Response 1")
    assert (out / "r" / f"accuracy_reward-bench_comparison_{MODEL}.json").is_file()


def test_binary_both_orders_exposes_position_bias(openai_server, rb_file, tmp_path):
    openai_server.canned = always_first
    out = tmp_path / "out"
    assert run_script(BINARY, argv_for(openai_server, rb_file, out, run_name="single")) == 0
    assert openai_server.requests == N_PAIRS
    # Both orders: the chosen-first answers come from the cache, only the swapped order is sent.
    assert run_script(BINARY, argv_for(openai_server, rb_file, out, "--both_orders", run_name="both")) == 0
    assert openai_server.requests == 2 * N_PAIRS
    predictions, metrics = load_run(out / "both")
    assert metrics["orders"]["chosen_first"]["accuracy"] == 1.0
    assert metrics["orders"]["chosen_second"]["accuracy"] == 0.0
    assert metrics["agreement"] == 0.0 and metrics["n_answered_both_orders"] == N_PAIRS
    assert metrics["accuracy"] == 0.0 and metrics["tie_rate"] == 1.0 and metrics["accuracy_ties_half"] == 0.5
    swapped = [b for b in openai_server.bodies if shown_first(b) == ROWS[0]["rejected"]]
    assert len(swapped) == 1
    assert {p["verdict_chosen_second"] for p in predictions.values()} == {1}


def test_binary_chat_mode_defaults_to_both_orders_and_reads_markdown(openai_server, rb_file, tmp_path):
    def bold(request):
        return {"content": "**Better response:** " + knows_the_answer(request)["content"].split(": ", 1)[1]}

    openai_server.canned = bold
    out = tmp_path / "out"
    assert run_script(BINARY, argv_for(openai_server, rb_file, out, "--scoring", "chat")) == 0
    predictions, metrics = load_run(out / "r")
    assert openai_server.requests == 2 * N_PAIRS and openai_server.bodies[0]["temperature"] == 0
    assert metrics["accuracy"] == 1.0 and metrics["agreement"] == 1.0 and metrics["n_failed"] == 0
    config = json.loads((out / "r" / "config.json").read_text())
    assert config["args"]["both_orders"] is True and config["resolved"]["orders"] == ["chosen_first", "chosen_second"]
    # --no_both_orders turns it off.
    assert (
        run_script(
            BINARY, argv_for(openai_server, rb_file, out, "--scoring", "chat", "--no_both_orders", run_name="one")
        )
        == 0
    )
    assert set(load_run(out / "one")[1]["orders"]) == {"chosen_first"}


def test_binary_unparsed_answer_is_a_counted_failure(openai_server, rb_file, tmp_path):
    def confused_on_pair_1006(request):
        if ROWS[6]["chosen"] in request["messages"][0]["content"]:
            return {"content": "Both are fine."}
        return knows_the_answer(request)

    openai_server.canned = confused_on_pair_1006
    out = tmp_path / "out"
    assert run_script(BINARY, argv_for(openai_server, rb_file, out, "--both_orders")) == 0
    predictions, metrics = load_run(out / "r")
    assert predictions[1006]["failure"] == "unparsed"
    assert predictions[1006]["failed"] == ["chosen_first", "chosen_second"]
    assert predictions[1006]["judge_text_chosen_first"] == "Both are fine."
    assert metrics["n_failed"] == 1 and metrics["failures_by_kind"] == {"unparsed": 1}
    all_but_one = pytest.approx((N_PAIRS - 1) / N_PAIRS)
    assert metrics["accuracy_all_pairs"] == all_but_one and metrics["accuracy_answered"] == 1.0
    assert metrics["orders"]["chosen_first"] == {
        "n_answered": N_PAIRS - 1,
        "accuracy": 1.0,
        "accuracy_all_pairs": all_but_one,
    }
