"""Reward_Bench/self_reward_gpt.py: the 5-point judge through an API, against the real OpenAI-compatible
server of tests/openai_server.py (canned answers the tests control) through the real `openai` SDK.

What it pins: upstream's request (the bullet prompt, max_tokens 200, temperature 0.1) and its own
regexes (exactly one whitespace after the colon) in upstream mode, the plain prompt and the chat parser
in chat mode; an answer without a score is a counted failure, not a 0; --set_name upstream14 (the 14
subsets upstream hard-coded); resume from the cache without a request.
"""

import json

import pytest
from helpers import API_MODEL, api_argv, load_run, rewardbench_rows, run_script, write_jsonl

from ipo.benchmarks.rewardbench import SELF_REWARD_GPT_SETS
from ipo.prompts import SELF_REWARD_PROMPT, SELF_REWARD_PROMPT_BULLET

SCRIPT = "Preference_Comparison/Reward_Bench/self_reward_gpt.py"
N_PAIRS = 16
ROWS = rewardbench_rows(N_PAIRS)  # rejected responses contain "Hello"


@pytest.fixture
def rb_file(tmp_path):
    return write_jsonl(tmp_path / "rb.jsonl", ROWS)


def judged_response(request):
    return request["messages"][0]["content"].split("<response>")[1].split("</response>")[0]


def five_point_judge(request):
    """Chosen 4, rejected 2; pair 1003's rejected answer has two spaces after the colon (upstream's
    regexes need exactly one; chat mode reads it); pair 1005 ties at 3."""
    response = judged_response(request)
    if response == ROWS[3]["rejected"]:
        return {"content": "Off topic.\nScore:  1"}
    if response in (ROWS[5]["chosen"], ROWS[5]["rejected"]):
        return {"content": "Fine.\nScore: 3"}
    return {"content": f"Justification.\nScore: {2 if 'Hello' in response else 4}"}


def test_upstream_mode_requests_regexes_and_failures(openai_server, rb_file, tmp_path):
    openai_server.canned = five_point_judge
    out = tmp_path / "out"
    argv = api_argv(openai_server, rb_file, out)
    assert run_script(SCRIPT, argv) == 0
    predictions, metrics = load_run(out / "r")
    assert openai_server.requests == 2 * N_PAIRS
    assert openai_server.bodies[0] == {
        "model": API_MODEL,
        "max_tokens": 200,
        "temperature": 0.1,
        "messages": [
            {
                "role": "user",
                "content": SELF_REWARD_PROMPT_BULLET.format(instruction=ROWS[0]["prompt"], response=ROWS[0]["chosen"]),
            }
        ],
    }
    failed = predictions[1003]
    assert (failed["score_chosen"], failed["score_rejected"], failed["correct"]) == (4, None, False)
    assert failed["failure"] == "unparsed" and failed["failed"] == ["rejected"] and failed["parse_failed_rejected"]
    assert failed["judge_text_rejected"] == "Off topic.\nScore:  1"
    assert predictions[1005]["tie"] and not predictions[1005]["correct"]
    assert metrics["n_failed"] == 1 and metrics["failures_by_kind"] == {"unparsed": 1}
    assert metrics["n_parse_failures"] == 1 and metrics["n_ties"] == 1
    assert metrics["accuracy_all_pairs"] == metrics["accuracy"] == pytest.approx((N_PAIRS - 2) / N_PAIRS)
    assert metrics["accuracy_answered"] == pytest.approx((N_PAIRS - 2) / (N_PAIRS - 1))
    assert (out / "r" / f"accuracy_reward-bench_self_{API_MODEL}-all.json").is_file()
    results = (out / "r" / "results.md").read_text()
    assert "Answers without a score: 1 of 32" in results and "1 failed (unparsed: 1)" in results
    # The same command again: the failed pair is tried again from the cache; nothing is sent.
    assert run_script(SCRIPT, argv) == 0
    assert openai_server.requests == 2 * N_PAIRS
    assert load_run(out / "r")[1]["accuracy"] == metrics["accuracy"]


def test_chat_mode_reads_what_upstream_misses(openai_server, rb_file, tmp_path):
    openai_server.canned = five_point_judge
    out = tmp_path / "out"
    assert run_script(SCRIPT, api_argv(openai_server, rb_file, out, "--scoring", "chat")) == 0
    predictions, metrics = load_run(out / "r")
    sent = openai_server.bodies[0]
    assert sent["temperature"] == 0 and sent["messages"][0]["content"] == SELF_REWARD_PROMPT.format(
        instruction=ROWS[0]["prompt"], response=ROWS[0]["chosen"]
    )
    assert predictions[1003]["score_rejected"] == 1 and predictions[1003]["correct"]
    assert metrics["n_failed"] == 0 and metrics["accuracy"] == pytest.approx((N_PAIRS - 1) / N_PAIRS)


def test_set_name_upstream14_keeps_upstreams_subsets(openai_server, rb_file, tmp_path):
    openai_server.canned = five_point_judge
    out = tmp_path / "out"
    assert run_script(SCRIPT, api_argv(openai_server, rb_file, out, "--set_name", "upstream14")) == 0
    predictions, metrics = load_run(out / "r")
    kept = {r["id"] for r in ROWS if r["subset"] in SELF_REWARD_GPT_SETS["upstream14"]}
    assert set(predictions) == kept and len(kept) == N_PAIRS // 2
    assert openai_server.requests == 2 * len(kept)
    upstream = json.loads((out / "r" / f"accuracy_reward-bench_self_{API_MODEL}-upstream14.json").read_text())
    assert set(upstream) <= set(SELF_REWARD_GPT_SETS["upstream14"])
    assert len(SELF_REWARD_GPT_SETS["upstream14"]) == 14
