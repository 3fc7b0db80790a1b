"""API judges on RM-Bench (RM_Bench/ours_gpt.py, self_reward_gpt.py, binary_gpt.py) and the pieces of
ipo.judges.api / ipo.benchmarks.rmbench they add: 3x3 metrics with unmeasured cells (a pairwise judge that compared only
the same-style pairs), failed responses that lose their comparisons, failure accounting, the cache.

Against the real OpenAI-compatible HTTP server of tests/openai_server.py through the real `openai` SDK:
the tiny model's log-probabilities for the Yes/No judge, canned answers (which the tests control) for
the text judges.
"""

import json
import socket

import pytest
from helpers import (
    API_MODEL,
    api_argv,
    load_run,
    load_script,
    read_jsonl,
    rmbench_rows,
    run_script,
    run_subprocess,
    write_json,
)

from ipo.benchmarks import rmbench, rmbench_api, rmbench_metrics
from ipo.data import Example
from ipo.judges import api
from ipo.prompts import COMPARE_PROMPT_RMBENCH, RMBENCH_LAYOUT, SELF_REWARD_PROMPT, render_upstream

OURS = "Preference_Comparison/RM_Bench/ours_gpt.py"
SELF = "Preference_Comparison/RM_Bench/self_reward_gpt.py"
BINARY = "Preference_Comparison/RM_Bench/binary_gpt.py"
SELF_RB = "Preference_Comparison/Reward_Bench/self_reward_gpt.py"
MARK = " Hello"  # every rejected response ends with it, so canned judges can tell the sides apart


def marked_rows(n, first_id):
    rows = rmbench_rows(n, first_id=first_id)
    for row in rows:
        row["rejected"] = [text + MARK for text in row["rejected"]]
    return rows


CHAT_ROWS, REFUSE_ROWS = marked_rows(4, first_id=8), marked_rows(2, first_id=100)
N_PROMPTS = len(CHAT_ROWS) + len(REFUSE_ROWS)


@pytest.fixture
def rm_files(tmp_path):
    return [
        write_json(tmp_path / "chat_filtered.json", CHAT_ROWS),
        write_json(tmp_path / "safety-refuse_filtered.json", REFUSE_ROWS),
    ]


def load(run_dir):
    return load_run(run_dir, key=rmbench.RECORD_KEY)


def diagonal_accuracy(chosen, rejected):
    """Upstream's levels averaged (RM-Bench's normal), by hand: None loses."""
    wins = [c is not None and r is not None and c > r for c, r in zip(chosen, rejected)]
    return sum(wins) / len(wins)


# ---------------------------------------------------------------------------------------------------
# Pure functions
# ---------------------------------------------------------------------------------------------------
def test_pairwise_matrices_leave_unmeasured_cells_out():
    def record(domain, correct_diagonal, tie_diagonal):
        correct = [[None] * 3 for _ in range(3)]
        tie = [[None] * 3 for _ in range(3)]
        for k in range(3):
            correct[k][k], tie[k][k] = correct_diagonal[k], tie_diagonal[k]
        return {"domain": domain, "correct": correct, "tie": tie}

    records = [
        record("chat", [True, False, True], [False, True, False]),
        record("chat", [True, True, False], [False, False, False]),
    ]
    matrix, ties = rmbench_metrics.pairwise_matrices(records)
    assert [matrix[k][k] for k in range(3)] == [1.0, 0.5, 0.5]
    assert matrix[0][1] is None and ties[2][0] is None and ties[1][1] == 0.5
    assert rmbench_metrics.hard_normal_easy(matrix) == {"hard": None, "normal": pytest.approx(2 / 3), "easy": None}
    metrics = rmbench_metrics.compute_metrics(records, matrices=rmbench_metrics.pairwise_matrices)
    chat = metrics["domains"]["chat"]
    assert chat["score"] is None and chat["normal"] == pytest.approx(2 / 3) and metrics["average"] is None
    assert chat["tie_rate"] == pytest.approx(1 / 6)  # over the 3 cells compared, not the 9
    assert metrics["levels_by_source"]["chat"] == {"n": 2, "level_1": 1.0, "level_2": 0.5, "level_3": 0.5}


def test_a_failed_response_loses_every_comparison_and_ties_with_nothing():
    records = [{"domain": "math", "p_yes_chosen": [0.9, None, 0.5], "p_yes_rejected": [0.1, 0.2, 0.5]}]
    metrics = rmbench_metrics.compute_metrics(records)
    assert metrics["domains"]["math"]["matrix"] == [[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [1.0, 1.0, 0.0]]
    assert metrics["tie_rate"] == pytest.approx(1 / 9)  # 0.5 vs 0.5; None ties with nothing


def test_style_pair_fields_and_requests():
    example = Example(id="chat/1", prompt="Q", responses=["c1", "c2", "c3", "r1", "r2", "r3"], domain="chat")
    cells = rmbench_api.STYLE_PAIRS["diagonal"]
    bodies = rmbench_api.style_pair_requests("upstream", COMPARE_PROMPT_RMBENCH, example, cells)
    assert len(bodies) == 6  # 3 cells x 2 orders, slot = cell * 2 + order
    assert bodies[2]["messages"][0]["content"] == COMPARE_PROMPT_RMBENCH.format(
        instruction="Q", response1="c2", response2="r2"
    )
    assert bodies[3]["messages"][0]["content"] == COMPARE_PROMPT_RMBENCH.format(
        instruction="Q", response1="r2", response2="c2"
    )
    kinds = [None, None, None, "timeout", None, None]
    extra = {"failure": "timeout", "kinds": kinds, "info": [{"judge_text": str(s)} for s in range(6)]}
    fields = rmbench_api.style_pair_fields([1, 2, 1, None, 1, 1], extra, cells)
    assert [fields["correct"][k][k] for k in range(3)] == [True, False, False]
    assert [fields["tie"][k][k] for k in range(3)] == [False, False, True]  # a failure is no tie
    assert fields["correct"][0][1] is None and fields["verdict_chosen_second"][2][2] == 1
    assert fields["failed"] == ["chosen_2-rejected_2/chosen_second"] and fields["failure"] == "timeout"
    assert fields["judge_text_chosen_first"][1][1] == "2"
    assert (
        len(
            rmbench_api.style_pair_requests(
                "upstream", COMPARE_PROMPT_RMBENCH, example, rmbench_api.STYLE_PAIRS["all"], api.PAIRWISE_ORDERS[:1]
            )
        )
        == 9
    )


# ---------------------------------------------------------------------------------------------------
# ours_gpt.py: the Yes/No judge, six requests per prompt
# ---------------------------------------------------------------------------------------------------
def test_ours_gpt_end_to_end_and_resume_from_the_cache(openai_server, rm_files, tmp_path, capsys):
    out = tmp_path / "out"
    assert run_script(OURS, api_argv(openai_server, rm_files, out)) == 0
    assert "## API judge" in capsys.readouterr().out
    run_dir = out / "r"
    for name in (
        "config.json",
        "predictions.jsonl",
        "metrics.json",
        "results.md",
        "style_matrix_chat.png",
        f"accuracy-rm-bench-{API_MODEL}-yesno.json",
    ):
        assert (run_dir / name).is_file(), name
    predictions, metrics = load(run_dir)
    assert sorted(predictions) == sorted(
        [f"chat/{r['id']}" for r in CHAT_ROWS] + [f"safety-refuse/{r['id']}" for r in REFUSE_ROWS]
    )
    assert openai_server.requests == 6 * N_PROMPTS
    row = CHAT_ROWS[0]  # the probe: the first prompt's first response, upstream's RM-Bench wrapper
    assert openai_server.bodies[0] == {
        "model": API_MODEL,
        **api.yes_no_request(
            "upstream", render_upstream(RMBENCH_LAYOUT, rmbench.judge_question("chat"), row["prompt"], row["chosen"][0])
        ),
    }
    for p in predictions.values():
        assert p["failure"] is None and len(p["p_yes_chosen"]) == len(p["logprob_yes_rejected"]) == 3
        assert p["p_yes_rejected"][2] == pytest.approx(
            api.p_yes_from_logprobs(p["logprob_yes_rejected"][2], p["logprob_no_rejected"][2])
        )
    chat = [p for p in predictions.values() if p["domain"] == "chat"]
    normal = sum(diagonal_accuracy(p["p_yes_chosen"], p["p_yes_rejected"]) for p in chat) / len(chat)
    assert metrics["domains"]["chat"]["normal"] == pytest.approx(normal)
    assert metrics["n_answered"] == N_PROMPTS and metrics["n_failed"] == 0
    assert metrics["answered_only"]["average"] == metrics["average"]
    levels = json.loads((run_dir / f"accuracy-rm-bench-{API_MODEL}-yesno.json").read_text())
    assert set(levels) == {"RM-Bench-chat", "RM-Bench-safety-refuse"}
    assert metrics["api_usage_this_invocation"]["cache_hits"] == 1  # the probe's answer, not paid twice
    for path in out.rglob("*"):
        assert path.is_dir() or openai_server.api_key not in path.read_text(errors="ignore"), path

    # The same command again, then --overwrite: everything comes from the run or the cache.
    assert run_script(OURS, api_argv(openai_server, rm_files, out)) == 0
    assert run_script(OURS, api_argv(openai_server, rm_files, out, "--overwrite")) == 0
    assert openai_server.requests == 6 * N_PROMPTS
    again, metrics_again = load(run_dir)
    assert again == predictions and metrics_again["domains"] == metrics["domains"]
    assert metrics_again["api_usage_this_invocation"]["requests_sent"] == 0


def response_line(text):
    """A substring of exactly one RM-Bench Yes/No request: the line that shows this response."""
    return f"Response : {text}\n"


def test_ours_gpt_faults_are_retried_failures_counted_and_tried_again(openai_server, rm_files, tmp_path):
    clean = tmp_path / "clean"
    assert run_script(OURS, api_argv(openai_server, rm_files, clean)) == 0
    reference, _ = load(clean / "r")
    openai_server.reset()
    openai_server.inject("429", 2, match=response_line(CHAT_ROWS[2]["chosen"][1]))  # retried: nothing lost
    openai_server.inject("500", 3, match=response_line(CHAT_ROWS[1]["rejected"][1]))  # more than the retries
    out = tmp_path / "out"
    argv = api_argv(openai_server, rm_files, out, "--max_retries", "2", "--max_concurrency", "3")
    assert run_script(OURS, argv) == 0
    predictions, metrics = load(out / "r")
    failed = predictions["chat/9"]
    assert failed["failure"] == "server_error" and failed["failed"] == ["rejected_2"]
    assert failed["p_yes_rejected"][1] is None and failed["p_yes_chosen"] == reference["chat/9"]["p_yes_chosen"]
    assert {k: p for k, p in predictions.items() if k != "chat/9"} == {
        k: p for k, p in reference.items() if k != "chat/9"
    }
    assert metrics["n_failed"] == 1 and metrics["n_answered"] == N_PROMPTS - 1
    assert metrics["failures_by_kind"] == {"server_error": 1}
    assert metrics["answered_only"]["n_prompts"] == N_PROMPTS - 1
    # The failed response loses its comparisons in the main metrics (by hand, over the 4 chat prompts).
    chat = [predictions[f"chat/{r['id']}"] for r in CHAT_ROWS]
    assert metrics["domains"]["chat"]["levels"]["level_2"] == pytest.approx(
        sum(p["p_yes_rejected"][1] is not None and p["p_yes_chosen"][1] > p["p_yes_rejected"][1] for p in chat) / 4
    )
    usage = metrics["api_usage_this_invocation"]
    assert usage["requests_sent"] == openai_server.requests == 6 * N_PROMPTS + 2 + 2  # 429 x2, then 500 x3 (2 retried)
    assert usage["errors_by_kind"] == {"rate_limited": 2, "server_error": 3}
    assert usage["gave_up_by_kind"] == {"server_error": 1}
    assert "1 failed (server_error: 1)" in (out / "r" / "results.md").read_text()
    # The same command again: only the failed request is sent.
    sent = openai_server.requests
    assert run_script(OURS, argv) == 0
    assert openai_server.requests == sent + 1
    predictions, metrics = load(out / "r")
    assert predictions == reference and metrics["n_failed"] == 0


# ---------------------------------------------------------------------------------------------------
# self_reward_gpt.py: the 5-point judge, six requests per prompt
# ---------------------------------------------------------------------------------------------------
# Chosen responses all get 3; rejected ones 2 (concise), 4 (detailed plain), 3 (markdown): M[i] = [1, 0, 0]
# (the markdown column ties). CHAT_ROWS[0]'s markdown chosen response gets no score at all.
REJECTED_SCORES = {"concise": 2, "plain": 4, "markdown": 3}


def style_of(response):
    if response.startswith("**Answer:**"):
        return "markdown"
    return "plain" if response.startswith("The answer") else "concise"


def five_point_judge(request):
    content = request["messages"][0]["content"]
    response = content.split("<response>")[1].split("</response>")[0]
    if response == CHAT_ROWS[0]["chosen"][2]:
        return {"content": "This response is fine, I would rate it highly."}
    score = REJECTED_SCORES[style_of(response)] if response.endswith(MARK) else 3
    return {"content": f"Relevant and clear.\nScore: {score}"}


def test_self_reward_gpt_metrics_requests_and_parse_failures(openai_server, rm_files, tmp_path):
    openai_server.canned = five_point_judge
    out = tmp_path / "out"
    argv = api_argv(openai_server, rm_files, out)
    assert run_script(SELF, argv) == 0
    predictions, metrics = load(out / "r")
    assert openai_server.requests == 6 * N_PROMPTS
    row = CHAT_ROWS[0]
    assert openai_server.bodies[0] == {
        "model": API_MODEL,
        "max_tokens": 200,
        "temperature": 0.1,
        "messages": [
            {"role": "user", "content": SELF_REWARD_PROMPT.format(instruction=row["prompt"], response=row["chosen"][0])}
        ],
    }
    unparsed = predictions["chat/8"]
    assert unparsed["score_chosen"] == [3, 3, None] and unparsed["score_rejected"] == [2, 4, 3]
    assert unparsed["failure"] == "unparsed" and unparsed["failed"] == ["chosen_3"]
    assert unparsed["parse_failed_chosen"] == [False, False, True]
    assert unparsed["judge_text_chosen"][2].startswith("This response is fine")
    safety, chat = metrics["domains"]["safety"], metrics["domains"]["chat"]
    assert (safety["hard"], safety["normal"], safety["easy"]) == (0.0, pytest.approx(1 / 3), pytest.approx(2 / 3))
    assert chat["matrix"][2] == [0.75, 0.0, 0.0]  # the unscored response loses, 3 of 4 prompts win
    assert chat["easy"] == pytest.approx((1 + 0.75 + 0) / 3) and chat["tie_rate"] == pytest.approx(2.75 / 9)
    assert metrics["answered_only"]["domains"]["chat"]["easy"] == pytest.approx(2 / 3)
    assert metrics["n_failed"] == 1 and metrics["failures_by_kind"] == {"unparsed": 1}
    assert metrics["n_parse_failures"] == 1 and metrics["prompts_with_parse_failure"] == 1
    level_file = json.loads((out / "r" / f"accuracy-rm-bench-{API_MODEL}-scores.json").read_text())
    assert level_file["RM-Bench-safety-refuse"] == {"level_1": 100.0, "level_2": 0.0, "level_3": 0.0}
    # Again: the unparsed answer is tried again from the cache, nothing is sent.
    assert run_script(SELF, argv) == 0
    assert openai_server.requests == 6 * N_PROMPTS
    assert load(out / "r")[1]["failures_by_kind"] == {"unparsed": 1}


# ---------------------------------------------------------------------------------------------------
# binary_gpt.py: the pairwise judge
# ---------------------------------------------------------------------------------------------------
def shown_first(request):
    return request["messages"][0]["content"].split("Response 1:\n    ")[1].split("\n    \n    Response 2:")[0]


def always_first(request):
    return {"content": "Better response: Response 1\nExplanation: it comes first."}


def knows_the_answer(request):
    return {"content": f"Better response: Response {2 if shown_first(request).endswith(MARK) else 1}\nExplanation: ok"}


def test_binary_gpt_upstream_compares_same_style_pairs_chosen_first(openai_server, rm_files, tmp_path):
    openai_server.canned = always_first
    out = tmp_path / "out"
    assert run_script(BINARY, api_argv(openai_server, rm_files, out)) == 0
    predictions, metrics = load(out / "r")
    assert openai_server.requests == 3 * N_PROMPTS
    row = CHAT_ROWS[0]
    assert openai_server.bodies[0] == {
        "model": API_MODEL,
        "max_tokens": 200,
        "temperature": 0.1,
        "messages": [
            {
                "role": "user",
                "content": COMPARE_PROMPT_RMBENCH.format(
                    instruction=row["prompt"], response1=row["chosen"][0], response2=row["rejected"][0]
                ),
            }
        ],
    }
    p = predictions["chat/8"]
    assert [p["correct"][k][k] for k in range(3)] == [True] * 3 and p["correct"][0][2] is None
    assert p["verdict_chosen_first"][1][1] == 1 and "verdict_chosen_second" not in p
    assert metrics["normal"] == 1.0 and metrics["hard"] is None and metrics["easy"] is None
    assert metrics["average"] is None and metrics["domains"]["chat"]["levels"]["level_3"] == 1.0
    assert metrics["orders"] == {
        "chosen_first": {"n_answered": 3 * N_PROMPTS, "accuracy": 1.0, "accuracy_all_pairs": 1.0}
    }
    levels = json.loads((out / "r" / f"accuracy-rm-bench-{API_MODEL}-comparative.json").read_text())
    assert levels["RM-Bench-chat"] == {"level_1": 100.0, "level_2": 100.0, "level_3": 100.0}
    assert "RM-Bench normal over all examples" in (out / "r" / "results.md").read_text()

    # --both_orders: the chosen-first answers come from the cache, only the swapped order is sent.
    assert run_script(BINARY, api_argv(openai_server, rm_files, out, "--both_orders", run_name="both")) == 0
    assert openai_server.requests == 2 * 3 * N_PROMPTS
    swapped = [b for b in openai_server.bodies if shown_first(b) == row["rejected"][0]]
    assert len(swapped) == 1
    predictions, metrics = load(out / "both")
    orders = metrics["orders"]
    assert orders["chosen_first"]["accuracy"] == 1.0 and orders["chosen_second"]["accuracy"] == 0.0
    assert metrics["agreement"] == 0.0 and metrics["n_answered_both_orders"] == 3 * N_PROMPTS
    assert metrics["normal"] == 0.0 and metrics["tie_rate"] == 1.0  # total position bias: every pair a tie
    assert predictions["safety-refuse/101"]["verdict_chosen_second"][2][2] == 1


def test_binary_gpt_all_style_pairs_in_chat_mode(openai_server, rm_files, tmp_path):
    def bold(request):
        return {"content": "**Better response:** [" + knows_the_answer(request)["content"].split(": ", 1)[1]}

    openai_server.canned = bold
    out = tmp_path / "out"
    assert (
        run_script(
            BINARY, api_argv(openai_server, rm_files, out, "--scoring", "chat", "--pairs", "all", "--limit", "1")
        )
        == 0
    )
    predictions, metrics = load(out / "r")
    assert openai_server.requests == 2 * 9 * 2  # 2 prompts (one per domain), 9 pairs, both orders
    assert openai_server.bodies[0]["temperature"] == 0
    assert (metrics["hard"], metrics["normal"], metrics["easy"], metrics["average"]) == (1.0, 1.0, 1.0, 1.0)
    assert metrics["agreement"] == 1.0 and metrics["orders"]["chosen_second"]["n_answered"] == 18
    config = json.loads((out / "r" / "config.json").read_text())
    assert config["args"]["both_orders"] is True and len(config["resolved"]["style_pairs"]) == 9


def test_binary_gpt_failed_comparison_is_counted_and_wrong(openai_server, rm_files, tmp_path):
    openai_server.canned = knows_the_answer
    target = CHAT_ROWS[3]["chosen"][1]  # in exactly one same-style comparison
    openai_server.inject("500", 2, match=target)
    out = tmp_path / "out"
    assert run_script(BINARY, api_argv(openai_server, rm_files, out, "--max_retries", "1")) == 0
    predictions, metrics = load(out / "r")
    failed = predictions["chat/11"]
    assert failed["failure"] == "server_error" and failed["failed"] == ["chosen_2-rejected_2/chosen_first"]
    assert [failed["correct"][k][k] for k in range(3)] == [True, False, True]
    assert metrics["n_failed"] == 1 and metrics["domains"]["chat"]["levels"]["level_2"] == 0.75
    assert metrics["domains"]["chat"]["normal"] == pytest.approx(2.75 / 3)
    assert metrics["normal"] == pytest.approx((2.75 / 3 + 1) / 2) and metrics["answered_only"]["normal"] == 1.0
    assert metrics["orders"]["chosen_first"]["n_answered"] == 3 * N_PROMPTS - 1
    assert openai_server.requests == 3 * N_PROMPTS + 1


# ---------------------------------------------------------------------------------------------------
# Bad input, every new script
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("script", [OURS, SELF, BINARY, SELF_RB])
@pytest.mark.parametrize(
    "case, message", [("missing_key", "OPENAI_API_KEY is not set"), ("unreachable", "cannot reach")]
)
def test_bad_input_is_one_line_and_writes_nothing(
    openai_server, rm_files, tmp_path, monkeypatch, script, case, message
):
    data = rm_files
    if script == SELF_RB:
        data = write_json(
            tmp_path / "rb.json", [{"id": 1, "subset": "hep-go", "prompt": "Q", "chosen": "a", "rejected": "b"}]
        )
    out = tmp_path / "out"
    argv = api_argv(openai_server, data, out, "--log_level", "error", "--max_retries", "0")
    if case == "missing_key":
        monkeypatch.delenv("OPENAI_API_KEY")
    else:
        with socket.socket() as sock:  # a port nobody listens on
            sock.bind(("127.0.0.1", 0))
            argv[1] = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    result = run_subprocess(script, argv, timeout=180)
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr, result.stderr
    assert message in result.stderr
    assert not out.exists(), list(out.rglob("*"))
    assert openai_server.requests == 0


def test_help_lists_the_flags(capsys):
    for script, flags in ((OURS, ()), (SELF, ()), (BINARY, ("--both_orders", "--pairs")), (SELF_RB, ("--set_name",))):
        with pytest.raises(SystemExit) as exit_info:
            load_script(script).parse_args(["--help"])
        assert exit_info.value.code == 0
        text = capsys.readouterr().out
        for flag in (
            "--base_url",
            "--api_key_env",
            "--max_retries",
            "--max_concurrency",
            "--cache_dir",
            "--dataset",
            *flags,
        ):
            assert flag in text, (script, flag)


def test_predictions_have_the_same_columns_on_every_line(openai_server, rm_files, tmp_path):
    openai_server.canned = five_point_judge
    out = tmp_path / "out"
    assert run_script(SELF, api_argv(openai_server, rm_files, out)) == 0
    columns = {frozenset(r) for r in read_jsonl(out / "r" / "predictions.jsonl")}
    assert len(columns) == 1
