"""DPO/self_reward.py, the Self-Rewarding arm: DPO/ours.py's loop with the 5-point judge of ipo/self_reward.py.

The tiny random model cannot write "Score: N", so most tests replace the judge's generation with scripted
replies (a fixed function of the response text) and check what the loop makes of them: pairs, ties, parse
failures, resume. One run lets the tiny model judge for real.
"""

import json
import random
import zlib
from collections import Counter

import pytest
from helpers import load_script, run_script, write_jsonl
from test_dpo_scripts import EXACT, SMOKE, by_id, last_error_line, prompt_rows, read_jsonl

from ipo.judges.self_reward import SelfRewardScorer, parse_score_upstream, render_upstream
from ipo.selfimprove.judging import self_reward_judge_spec
from ipo.selfimprove.pairs import build_pairs, strip_common_prefix

SELF_REWARD = "DPO/self_reward.py"
JUDGE_SMOKE = ["--max_new_tokens_judge", "8", "--judge_batch_size", "4"]  # a batch = one prompt's 4 responses
UNREADABLE = " I cannot say."


@pytest.fixture
def prompts_file(tmp_path):
    # No category column: the 5-point judge asks the same question whatever the category.
    return write_jsonl(
        tmp_path / "prompts.jsonl", [{k: v for k, v in r.items() if k != "category"} for r in prompt_rows()]
    )


def reply_for(response: str) -> str:
    """The scripted judge: a fixed reply per response text; scores 1-3 (many ties), 1 in 6 unreadable."""
    h = zlib.crc32(response.encode("utf-8"))
    return UNREADABLE if h % 6 == 0 else f" Fair. Score: {1 + h % 3}"


def judged_response(tokenizer, prompt_ids) -> str:
    text = tokenizer.decode(prompt_ids)
    start = text.rindex("<response>") + len("<response>")
    return text[start : text.rindex("</response>")]


@pytest.fixture
def scripted_judge(monkeypatch):
    """Replace SelfRewardScorer.generate with ``reply(response)``; returns the list of judged responses."""
    judged = []

    def script(reply=reply_for):
        def generate(self, prompts):
            out = []
            for ids in prompts:
                response = judged_response(self.tokenizer, ids)
                judged.append(response)
                out.append(
                    self.tokenizer(reply(response), add_special_tokens=False).input_ids + [self.tokenizer.eos_token_id]
                )
            return out

        monkeypatch.setattr(SelfRewardScorer, "generate", generate)
        return judged

    return script


def upstream_choice(instruction, responses, scores, judge_texts):
    """Upstream DPO/self_reward.py: (response, (score, decoded prompt + generation)) tuples sorted on the
    second item, descending; chosen = first, rejected = last."""
    decoded = [render_upstream(instruction, r) + t for r, t in zip(responses, judge_texts)]
    ranked = sorted(zip(range(len(responses)), zip(scores, decoded)), key=lambda item: item[1], reverse=True)
    return ranked[0][0], ranked[-1][0]


# ---------------------------------------------------------------------------------------------------
# Pair building at the function level (judge -> scored.jsonl fields -> pairs)
# ---------------------------------------------------------------------------------------------------
def test_strip_common_prefix_keeps_order_and_equality():
    rng = random.Random(0)
    for _ in range(200):
        texts = ["RUBRIC " + "".join(rng.choice("ab") for _ in range(rng.randint(0, 4))) for _ in range(4)]
        stripped = strip_common_prefix(texts)
        assert not texts[0].startswith("RUBRIC ") or all(not s.startswith("RUBRIC") for s in stripped)
        for i in range(4):
            for j in range(4):
                assert (texts[i] < texts[j]) == (stripped[i] < stripped[j])
                assert (texts[i] == texts[j]) == (stripped[i] == stripped[j])


def judge_records(tiny_model, scoring, rows):
    """scored.jsonl records of ``rows`` (id, prompt, responses) by the 5-point judge spec, generation scripted."""
    from ipo.data import Example

    model, tokenizer = tiny_model
    spec = self_reward_judge_spec(scoring, max_new_tokens=16)
    scorer = spec.build(model, tokenizer)
    examples = [Example(id=r["id"], prompt=r["prompt"], responses=r["responses"]) for r in rows]
    records = {}
    for batch in scorer.score(examples):
        for example, scores, extra in batch:
            records[example.id] = {
                "id": example.id,
                "prompt": example.prompt,
                "responses": example.responses,
                **spec.fields(scores, extra),
            }
    return spec, [records[r["id"]] for r in rows]


# Responses chosen so that reply_for gives ties at the top and the bottom, and unreadable replies.
RESPONSES = [f"answer {i}" for i in range(40)]


def tie_rows():
    scores = {r: reply_for(r) for r in RESPONSES}
    rows = []
    for k in range(8):
        responses = RESPONSES[5 * k : 5 * k + 5]
        rows.append({"id": f"q{k}", "prompt": f"Question {k}: say something.", "responses": responses})
    assert any(UNREADABLE == scores[r] for r in RESPONSES) and len(set(scores.values())) == 4
    return rows


def test_upstream_pairs_reproduce_upstreams_sort(tiny_model, scripted_judge):
    scripted_judge()
    spec, records = judge_records(tiny_model, "upstream", tie_rows())
    assert (spec.tie_break, spec.judge_text_field) == ("judge_text", "upstream_sort_text")
    pairs, dropped = build_pairs(
        records, spec.score_field, spec.tie_break, drop_degenerate=False, seed=0, judge_text_field=spec.judge_text_field
    )
    assert len(pairs) == len(records) and not dropped  # upstream keeps every pair; an unreadable reply is a 0
    decided_by_text = 0
    for record, pair in zip(records, pairs):
        assert record["score"] == [
            parse_score_upstream(render_upstream(record["prompt"], r) + reply_for(r)) for r in record["responses"]
        ]
        assert record["parse_failed"] == [reply_for(r) == UNREADABLE for r in record["responses"]]
        expected = upstream_choice(record["prompt"], record["responses"], record["score"], record["judge_text"])
        assert (pair["chosen_index"], pair["rejected_index"]) == expected
        generation_order = (
            record["score"].index(max(record["score"])),
            len(record["score"]) - 1 - record["score"][::-1].index(min(record["score"])),
        )
        decided_by_text += expected != generation_order
    assert decided_by_text  # the fixture has ties that the judge text, not the sample order, decides


def test_chat_pairs_skip_unreadable_scores_and_draw_ties_with_the_seed(tiny_model, scripted_judge):
    scripted_judge()
    spec, records = judge_records(tiny_model, "chat", tie_rows())
    assert spec.tie_break == "random" and "upstream_sort_text" not in records[0]
    unreadable = sum(s is None for r in records for s in r["score"])
    assert unreadable == sum(reply_for(r) == UNREADABLE for r in RESPONSES)
    pairs, dropped = build_pairs(records, "score", "random", drop_degenerate=True, seed=3)
    assert len(pairs) + sum(dropped.values()) == len(records)
    for pair in pairs:
        scores = [s for s in pair["scores"] if s is not None]
        assert pair["score_chosen"] == max(scores) > pair["score_rejected"] == min(scores)
    assert (pairs, dropped) == build_pairs(records, "score", "random", drop_degenerate=True, seed=3)

    # Over seeds, every tied best response is drawn as chosen (no positional preference).
    def tied_best(record):
        readable = [s for s in record["score"] if s is not None]
        return len(set(readable)) > 1 and readable.count(max(readable)) > 1

    record = next(r for r in records if tied_best(r))
    best = max(s for s in record["score"] if s is not None)
    drawn = {build_pairs([record], "score", "random", True, seed)[0][0]["chosen_index"] for seed in range(60)}
    assert drawn == {i for i, s in enumerate(record["score"]) if s == best}


def test_a_prompt_needs_two_readable_scores():
    records = [
        {"id": "a", "prompt": "p", "responses": ["w", "x", "y", "z"], "score": [None, 4, None, 2]},
        {"id": "b", "prompt": "p", "responses": ["w", "x", "y", "z"], "score": [None, 4, None, None]},
        {"id": "c", "prompt": "p", "responses": ["w", "x", "y", "z"], "score": [None, None, None, None]},
    ]
    pairs, dropped = build_pairs(records, "score", "random", drop_degenerate=True, seed=0)
    assert [(p["id"], p["chosen"], p["rejected"]) for p in pairs] == [("a", "x", "z")]
    assert dropped == Counter({"too_few_scored": 2})


def test_upstream_sampler_cuts_responses_at_a_literal_eot_marker(tiny_model, tmp_path):
    """Upstream's self_reward.py sampler cut each response at '<|eot_id|>' (which a model trained on upstream's
    records learns to write as text); ours.py's did not."""
    from ipo.runs import RecordLog
    from ipo.selfimprove.prompts_pool import Prompt
    from ipo.selfimprove.sampling import Sample, sample_into_log

    class FixedSampler:
        def sample(self, encoded):
            yield [
                Sample(pid, ["Paris. <|eot_id|> Extra text", "  Lyon  ", "<|eot_id|>"], [5, 2, 1], [True] * 3)
                for pid, _ in encoded
            ]

    _, tokenizer = tiny_model
    prompts = [Prompt("a", "Name a French city.", "")]
    for cut_at, expected in [
        ("<|eot_id|>", ["Paris.", "  Lyon  ", ""]),
        (None, ["Paris. <|eot_id|> Extra text", "  Lyon  ", "<|eot_id|>"]),
    ]:
        log = RecordLog(tmp_path / f"{cut_at is None}.jsonl")
        sample_into_log(FixedSampler(), tokenizer, prompts, log, "upstream", cut_at=cut_at)
        assert [r["responses"] for r in log.ordered(["a"])] == [expected]


# ---------------------------------------------------------------------------------------------------
# The script
# ---------------------------------------------------------------------------------------------------
def test_defaults_follow_upstreams_self_reward_script():
    args = load_script(SELF_REWARD).parse_args([])
    assert args.model_name == "mistralai/Mistral-7B-Instruct-v0.2"
    assert (args.per_device_train_batch_size, args.per_device_eval_batch_size, args.eval_steps) == (8, 4, 700)
    assert (args.judge_max_length, args.max_new_tokens_judge, args.learning_rate, args.beta) == (2048, 128, 5e-5, 0.1)
    ours = load_script("DPO/ours.py").parse_args([])
    assert ours.model_name == "mistralai/Mistral-7B-Instruct-v0.1"
    assert (ours.per_device_train_batch_size, ours.per_device_eval_batch_size, ours.eval_steps) == (6, 3, 300)
    assert ours.max_batch_tokens is None  # the Yes/No judge's own per-device budget


def test_ours_judge_uses_the_judges_default_token_budget(tiny_model):
    from ipo.judges.batching import default_max_batch_tokens
    from ipo.selfimprove.judging import yes_no_judge_spec

    model, tokenizer = tiny_model
    scorer = yes_no_judge_spec("chat", scoring="chat").build(model, tokenizer)
    assert scorer.judge.max_batch_tokens == default_max_batch_tokens(model.device) == 2048
    scorer = yes_no_judge_spec("chat", scoring="chat", max_batch_tokens=512).build(model, tokenizer)
    assert scorer.judge.max_batch_tokens == 512


def test_upstream_mode_end_to_end_with_the_tiny_models_own_judgements(tiny_model_dir, prompts_file, tmp_path):
    """The real chain: sample -> the model's own 5-point judgements -> pairs -> DPO -> merge."""
    argv = [
        "--model_id",
        str(tiny_model_dir),
        "--dataset_name",
        str(prompts_file),
        "--output_dir",
        str(tmp_path),
        "--run_name",
        "real",
        "--merge_adapters",
        "--test_fraction",
        "0.2",
        *JUDGE_SMOKE,
        *SMOKE,
    ]
    assert run_script(SELF_REWARD, argv) == 0
    run, round_dir = tmp_path / "real", tmp_path / "real" / "round_1"
    assert (round_dir / "adapter" / "adapter_config.json").is_file() and (
        round_dir / "merged" / "config.json"
    ).is_file()
    scored = by_id(round_dir / "scored.jsonl")
    for record in scored.values():
        # upstream read the score from the decoded prompt + generation, 0 when nothing matched
        assert record["score"] == [
            parse_score_upstream(render_upstream(record["prompt"], r) + t)
            for r, t in zip(record["responses"], record["judge_text"])
        ]
    pairs = read_jsonl(round_dir / "pairs.jsonl")
    assert len(pairs) == 10  # upstream mode keeps every pair, ties included
    metrics = json.loads((run / "metrics.json").read_text())["rounds"][0]
    failures = sum(sum(r["parse_failed"]) for r in scored.values())
    assert metrics["judge"]["all"]["n_parse_failures"] == failures and metrics["pairs"]["n_unscored_responses"] == 0
    assert metrics["judge_settings"]["name"] == "self_reward_5_point" and metrics["training"]["n_train"] == 8
    config = json.loads((run / "config.json").read_text())
    assert config["resolved"]["judge"]["regex_set"] == "rewardbench" and config["resolved"]["tie_break"] == "judge_text"
    assert "parse failures" in (run / "results.md").read_text()


def test_chat_mode_counts_parse_failures_and_resumes_a_killed_judge(
    tiny_model_dir, prompts_file, tmp_path, scripted_judge, monkeypatch
):
    judged = scripted_judge()
    argv = [
        "--model_id",
        str(tiny_model_dir),
        "--dataset_name",
        str(prompts_file),
        "--output_dir",
        str(tmp_path),
        "--prompt_format",
        "chat",
        "--test_fraction",
        "0.2",
        *JUDGE_SMOKE,
        *EXACT,
        *SMOKE,
    ]
    assert run_script(SELF_REWARD, [*argv, "--run_name", "whole"]) == 0
    whole = tmp_path / "whole" / "round_1"
    scored = by_id(whole / "scored.jsonl")
    assert len(judged) == 40
    n_unreadable = sum(reply_for(r) == UNREADABLE for s in scored.values() for r in s["responses"])
    assert n_unreadable and all(
        s["score"] == [None if reply_for(r) == UNREADABLE else int(reply_for(r)[-1]) for r in s["responses"]]
        for s in scored.values()
    )
    metrics = json.loads((whole / "metrics.json").read_text())
    assert metrics["pairs"]["n_unscored_responses"] == metrics["judge"]["all"]["n_parse_failures"] == n_unreadable
    assert metrics["judge"]["all"]["n_unscored"] == n_unreadable
    pairs = read_jsonl(whole / "pairs.jsonl")
    assert metrics["pairs"]["n_pairs"] == len(pairs) and len(pairs) + sum(metrics["pairs"]["dropped"].values()) == 10
    for pair in pairs:
        readable = [s for s in scored[pair["id"]]["score"] if s is not None]
        assert pair["score_chosen"] == max(readable) > pair["score_rejected"] == min(readable)
    assert metrics["training"]["n_train"] == sum(p["split"] == "train" for p in pairs)

    # Kill the judge after 3 of 10 prompts, then re-run: only the 7 missing prompts are judged, and the run
    # ends where the uninterrupted one did.
    class Killed(Exception):
        pass

    calls = {"n": 0}
    real_generate = SelfRewardScorer.generate

    def dies_after_three(self, prompts):
        calls["n"] += 1
        if calls["n"] > 3:
            raise Killed
        return real_generate(self, prompts)

    monkeypatch.setattr(SelfRewardScorer, "generate", dies_after_three)
    with pytest.raises(Killed):
        load_script(SELF_REWARD).main([*argv, "--run_name", "killed"])
    monkeypatch.setattr(SelfRewardScorer, "generate", real_generate)
    killed = tmp_path / "killed" / "round_1"
    assert len(read_jsonl(killed / "scored.jsonl")) == 3 and not (killed / "pairs.jsonl").exists()
    del judged[:]
    assert run_script(SELF_REWARD, [*argv, "--run_name", "killed"]) == 0
    assert len(judged) == 7 * 4
    assert by_id(killed / "scored.jsonl") == scored
    assert (killed / "pairs.jsonl").read_bytes() == (whole / "pairs.jsonl").read_bytes()


def test_no_readable_score_stops_with_one_line_and_keeps_the_judgements(
    tiny_model_dir, prompts_file, tmp_path, scripted_judge, capsys
):
    scripted_judge(lambda response: UNREADABLE)
    argv = [
        "--model_id",
        str(tiny_model_dir),
        "--dataset_name",
        str(prompts_file),
        "--output_dir",
        str(tmp_path),
        *JUDGE_SMOKE,
        *SMOKE,
    ]
    assert run_script(SELF_REWARD, [*argv, "--run_name", "mute", "--prompt_format", "chat"]) == 1
    line = last_error_line(capsys)
    assert line.startswith("error: no training pairs in round 1: 10 prompts, 0 pairs")
    assert "10 too few scored" in line and "40 responses had no readable score" in line
    round_dir = tmp_path / "mute" / "round_1"
    scored = read_jsonl(round_dir / "scored.jsonl")
    assert len(scored) == 10 and all(r["parse_failed"] == [True] * 4 for r in scored)
    assert all(r["judge_text"] == [UNREADABLE] * 4 for r in scored)
    assert not (round_dir / "pairs.jsonl").exists() and not (round_dir / "adapter").exists()
    # Upstream mode reads the same replies as 0s and trains on the (all tied) pairs, as upstream did.
    # (a 0 unless the sampled response itself holds something like "score 3", which upstream's regex reads)
    assert run_script(SELF_REWARD, [*argv, "--run_name", "mute-upstream", "--prompt_format", "upstream"]) == 0
    round_dir = tmp_path / "mute-upstream" / "round_1"
    scored = read_jsonl(round_dir / "scored.jsonl")
    assert all(
        r["score"] == [parse_score_upstream(render_upstream(r["prompt"], x) + UNREADABLE) for x in r["responses"]]
        for r in scored
    )
    metrics = json.loads((round_dir / "metrics.json").read_text())
    assert metrics["pairs"]["n_pairs"] == 10 and metrics["pairs"]["dropped"] == {}
    assert metrics["judge"]["all"]["n_parse_failures"] == sum(s == 0 for r in scored for s in r["score"])
    assert (round_dir / "adapter" / "adapter_config.json").is_file()
