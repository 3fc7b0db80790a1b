"""ipo.selfimprove (prompts_pool, pairs): categories, prompt loading, pair selection (ties, duplicates), held-out
split, records."""

import json
import random
from collections import Counter

import pytest
from helpers import write_jsonl

from ipo import IpoError
from ipo.prompts import CODE_PROMPT, DPO_CATEGORY_PROMPTS, DPO_CHAT_PROMPT, MATH_PROMPT, SAFE_RESPONSE_PROMPT
from ipo.selfimprove.pairs import (
    build_pairs,
    count_non_finite,
    export_pairs,
    held_out_ids,
    mapped_record,
    pair_stats,
    rank_responses,
)
from ipo.selfimprove.prompts_pool import judge_key, load_prompts
from ipo.training.run_pairs import pair_record


# ---------------------------------------------------------------------------------------------------
# Categories
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "category, key",
    [
        ("chat", "chat"),
        ("Safety", "Safety"),
        ("Math", "Math"),
        # upstream's keys are case-sensitive and everything else falls back to the coding prompt
        ("safety", "General"),
        ("math", "General"),
        ("Chat", "General"),
        ("code", "General"),
        ("poetry", "General"),
    ],
)
def test_upstream_category_keys(category, key):
    assert judge_key(category, "upstream") == key


@pytest.mark.parametrize(
    "category, prompt",
    [
        ("chat", DPO_CHAT_PROMPT),
        ("Chat", DPO_CHAT_PROMPT),
        (" SAFETY ", SAFE_RESPONSE_PROMPT),
        ("Math", MATH_PROMPT),
        ("code", CODE_PROMPT),
    ],
)
def test_chat_mode_normalises_categories(category, prompt):
    assert DPO_CATEGORY_PROMPTS[judge_key(category, "chat")] == prompt


def test_chat_mode_refuses_unknown_categories():
    with pytest.raises(IpoError, match="unknown category 'poetry'"):
        judge_key("poetry", "chat")


# ---------------------------------------------------------------------------------------------------
# Prompt loading
# ---------------------------------------------------------------------------------------------------
def test_load_prompts(tmp_path, caplog):
    rows = [{"instruction": f"q{i}", "category": c} for i, c in enumerate(["chat", "Math", "poetry", "code"])]
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    prompts = load_prompts(str(path), None, "upstream")
    assert [(p.id, p.instruction, p.category) for p in prompts] == [
        (i, f"q{i}", r["category"]) for i, r in enumerate(rows)
    ]
    assert "poetry" in caplog.text and "code" in caplog.text  # upstream mode warns about the fallback
    assert len(load_prompts(str(path), None, "upstream", max_prompts=2)) == 2
    with pytest.raises(IpoError, match=r"row id 2: unknown category 'poetry'"):
        load_prompts(str(path), None, "chat")


@pytest.mark.parametrize(
    "rows, message",
    [
        ([{"prompt": "q", "category": "chat"}], "has no column 'instruction'"),
        ([{"instruction": "q"}], "has no column 'category'"),
        ([{"instruction": "  ", "category": "chat"}], "empty instruction"),
        ([{"instruction": 3, "category": "chat"}], "must be text"),
        ([], "empty"),
    ],
)
def test_bad_prompt_files(tmp_path, rows, message):
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    with pytest.raises(IpoError, match=message):
        load_prompts(str(path), None, "chat")


def test_sampling_alone_needs_no_category(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"instruction": "q"}])
    assert load_prompts(str(path), None, "chat", require_category=False)[0].category == ""


# ---------------------------------------------------------------------------------------------------
# Pair selection
# ---------------------------------------------------------------------------------------------------
def test_generation_order_ties_as_upstream():
    scores = [0.5, 0.9, 0.9, 0.1, 0.1]
    order = rank_responses(scores, "generation_order")
    # upstream: sorted(..., key=score, reverse=True) keeps sample order among equal scores
    assert order == [1, 2, 0, 3, 4] and (order[0], order[-1]) == (1, 4)


def test_judge_text_ties_reproduce_upstreams_tuple_sort():
    responses = ["r0", "r1", "r2", "r3", "r4"]
    scores = [3, 3, 1, 1, 3]
    texts = ["Score: 3 b", "Score: 3 c", "Score: 1 a", "Score: 1 z", "Score: 3 c"]
    # upstream DPO/self_reward.py: scored_responses = [(response, (score, text))], sorted by the tuple, descending
    upstream = sorted(zip(responses, zip(scores, texts)), key=lambda item: item[1], reverse=True)
    order = rank_responses(scores, "judge_text", judge_texts=texts)
    assert [responses[i] for i in order] == [r for r, _ in upstream]
    assert (order[0], order[-1]) == (1, 2)


def test_random_ties_are_seeded_and_cover_every_tied_response():
    scores = [0.7, 0.7, 0.7, 0.2]
    first = rank_responses(scores, "random", rng=random.Random("s"))
    assert first == rank_responses(scores, "random", rng=random.Random("s"))
    chosen = Counter(rank_responses(scores, "random", rng=random.Random(i))[0] for i in range(300))
    assert set(chosen) == {0, 1, 2} and min(chosen.values()) > 60
    assert all(rank_responses(scores, "random", rng=random.Random(i))[-1] == 3 for i in range(20))


def scored_record(pid, responses, scores):
    return {"id": pid, "prompt": f"question {pid}", "category": "chat", "responses": responses, "p_yes": scores}


def test_pairs_drop_ties_and_duplicates_in_chat_mode_only():
    scored = [
        scored_record("a", ["good", "bad", "meh"], [0.9, 0.1, 0.5]),
        scored_record("b", ["best", "dup", "dup"], [0.9, 0.3, 0.2]),  # duplicates, but not chosen vs rejected
        scored_record("c", ["x", "y"], [0.5, 0.5]),  # tied scores
        scored_record("d", ["dup ", "dup", "z"], [0.8, 0.1, 0.4]),  # chosen and rejected texts equal after strip
    ]
    pairs, dropped = build_pairs(scored, "p_yes", "random", drop_degenerate=True, seed=0)
    assert [p["id"] for p in pairs] == ["a", "b"] and dropped == Counter({"score_tie": 1, "same_text": 1})
    a = pairs[0]
    assert (a["chosen"], a["rejected"], a["score_chosen"], a["score_rejected"]) == ("good", "bad", 0.9, 0.1)
    assert (a["chosen_index"], a["rejected_index"], a["scores"], a["split"]) == (0, 1, [0.9, 0.1, 0.5], "train")
    kept, none_dropped = build_pairs(scored, "p_yes", "generation_order", drop_degenerate=False, seed=0)
    assert len(kept) == 4 and not none_dropped
    assert [p["degenerate"] for p in kept] == [None, None, "score_tie", "same_text"]
    assert (kept[2]["chosen"], kept[2]["rejected"]) == ("x", "y")  # upstream: first max, last min


def test_non_finite_scores_never_rank(tmp_path):
    """A NaN compares as neither greater, smaller nor equal: sorting it placed responses arbitrarily (here the
    0.2 response was chosen over the 0.9 one). NaN and infinite scores now take no part, and are counted."""
    from ipo.selfimprove.judging import judge_summary, yes_no_judge_spec
    from ipo.selfimprove.loop import RoundDir, select_pairs

    nan, inf = float("nan"), float("inf")
    scored = [
        scored_record("a", ["r0", "r1", "r2", "r3"], [0.2, nan, 0.9, 0.1]),
        scored_record("b", ["x", "y", "z"], [nan, 0.5, inf]),  # one finite score left: no pair
        scored_record("c", ["u", "v"], [-inf, 0.4]),
    ]
    for tie_break in ("generation_order", "random"):
        pairs, dropped = build_pairs(scored, "p_yes", tie_break, drop_degenerate=False, seed=0)
        assert [(p["id"], p["chosen_index"], p["rejected_index"]) for p in pairs] == [("a", 2, 3)]
        assert dropped == Counter({"too_few_scored": 2})
    assert count_non_finite(scored, "p_yes") == 4
    with pytest.raises(ValueError, match="non-finite"):
        rank_responses([0.3, nan, 0.1])
    pairs, stats = select_pairs(
        RoundDir(tmp_path, 1), scored, yes_no_judge_spec("upstream", "upstream"), "upstream", 0, set()
    )
    assert stats["n_non_finite_scores"] == 4 and stats["dropped"] == {"too_few_scored": 2} and len(pairs) == 1
    assert "n_non_finite_scores" not in pair_stats(pairs, Counter(), 1)  # only where there are some
    summary = judge_summary(scored, "p_yes", set())["all"]
    assert summary["n_unscored"] == 4 and summary["mean"] == pytest.approx((0.2 + 0.9 + 0.1 + 0.5 + 0.4) / 5)


def test_held_out_split_is_seeded_and_never_everything():
    ids = [f"p{i}" for i in range(20)]
    test = held_out_ids(ids, 0.1, seed=42)
    assert len(test) == 2 and test == held_out_ids(ids, 0.1, seed=42) and test != held_out_ids(ids, 0.1, seed=7)
    assert held_out_ids(ids, 0.0, seed=42) == set()
    assert len(held_out_ids(["a", "b"], 0.9, seed=1)) == 1 and held_out_ids(["a"], 0.5, seed=1) == set()
    assert len(held_out_ids(ids[:3], 0.01, seed=1)) == 1  # at least one
    pairs, _ = build_pairs([scored_record(i, ["u", "v"], [0.9, 0.1]) for i in ids], "p_yes", "random", True, 0, test)
    assert {p["id"] for p in pairs if p["split"] == "test"} == test


# ---------------------------------------------------------------------------------------------------
# Records and exported files
# ---------------------------------------------------------------------------------------------------
PAIR = {
    "id": 1,
    "prompt": "  What is 2+2? ",
    "chosen": " It is 4.<|eot_id|>junk",
    "rejected": "Five.",
    "split": "train",
}


def test_upstream_pair_record():
    assert pair_record(PAIR, "upstream") == {
        "prompt": "[INST] What is 2+2? [/INST]",
        "chosen": "It is 4.<|eot_id|>",
        "rejected": "Five.<|eot_id|>",
    }


def test_chat_pair_record_is_conversational():
    record = pair_record(PAIR, "chat")
    assert record["prompt"] == [{"role": "user", "content": PAIR["prompt"]}]
    assert record["chosen"] == [{"role": "assistant", "content": PAIR["chosen"]}]
    assert record["rejected"] == [{"role": "assistant", "content": "Five."}]


def test_mapped_record_keeps_upstreams_spacing():
    assert mapped_record(PAIR) == {
        "chosen": f"Assistant: {PAIR['prompt']}\n Response:{PAIR['chosen']}",
        "rejected": f"Assistant:{PAIR['prompt']}\n Response:Five.",
    }


def test_export_pairs_keeps_test_apart(tmp_path):
    pairs = [{**PAIR, "id": i, "prompt": f"q{i}", "split": "test" if i == 2 else "train"} for i in range(4)]
    export_pairs(pairs, "upstream", str(tmp_path / "train.json"), str(tmp_path / "test.json"), str(tmp_path / "m.json"))
    train = json.loads((tmp_path / "train.json").read_text())
    test = json.loads((tmp_path / "test.json").read_text())
    assert [r["prompt"] for r in train] == ["[INST] q0 [/INST]", "[INST] q1 [/INST]", "[INST] q3 [/INST]"]
    assert [r["prompt"] for r in test] == ["[INST] q2 [/INST]"]
    assert len(json.loads((tmp_path / "m.json").read_text())) == 4


@pytest.mark.parametrize("prompt_format", ["upstream", "chat"])
def test_training_sees_the_prompt_the_sampler_used(tiny_model_dir, tmp_path, prompt_format):
    """chat: TRL renders the conversational record with the same chat template the sampler used."""
    from ipo.modeling import load_tokenizer
    from ipo.selfimprove.sampling import encode_prompt
    from ipo.training.dpo import build_trainer
    from ipo.training.options import TrainingOptions

    tokenizer = load_tokenizer(str(tiny_model_dir))
    pair = {"prompt": "What is 2 plus 2?", "chosen": "The answer is 4.", "rejected": "No"}
    trainer, _, _ = build_trainer(
        str(tiny_model_dir),
        [pair_record(pair, prompt_format)],
        TrainingOptions(lora_r=4, lora_alpha=8),
        tmp_path,
        device="cpu",
    )
    row = trainer.train_dataset[0]
    if prompt_format == "chat":
        assert row["prompt_ids"] == encode_prompt(tokenizer, pair["prompt"], "chat")
        assert tokenizer.decode(row["chosen_ids"]) == "The answer is 4.<|im_end|>\n"
    else:
        assert row["prompt_ids"] == tokenizer("[INST] What is 2 plus 2? [/INST]").input_ids
        assert tokenizer.decode(row["chosen_ids"]) == "The answer is 4.<|eot_id|><|im_end|>"


# ---------------------------------------------------------------------------------------------------
# Several processes (ipo/parallel.py; the two-process run is in test_dpo_scripts.py)
# ---------------------------------------------------------------------------------------------------
def test_each_process_loads_its_model_on_its_own_gpu(monkeypatch):
    import torch

    from ipo.parallel import Ranks

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    second = Ranks(index=1, count=2, local_index=1)
    assert second.device("auto") == second.device("cuda") == second.device("cuda:0") == "cuda:1"
    assert second.device("cpu") == "cpu" and Ranks().device("auto") == "auto"  # one process: as asked
    with pytest.raises(IpoError, match="run it as one process"):
        second.device("shard")
    assert Ranks(0, 3).shard(range(7)) == [0, 3, 6] and Ranks(2, 3).shard(range(7)) == [2, 5]


def test_a_killed_runs_part_files_are_merged_at_the_next_start(tmp_path):
    """A part file (another process's share) left by a killed run joins the log before the stage looks at what
    is missing, also when the run resumes as one process; no record is written twice."""
    from ipo.parallel import Ranks, part_path, run_sharded
    from ipo.runs import RecordLog

    log_path = tmp_path / "responses.jsonl"
    write_jsonl(log_path, [{"id": "a", "n": 1}])
    write_jsonl(part_path(log_path, 1), [{"id": "b", "n": 2}, {"id": "a", "n": 9}])
    assert part_path(log_path, 1).name == "responses.rank1.jsonl"
    seen = {}

    def work(items, log):
        seen["todo"] = [i for i in items if i["id"] not in log]
        log.append([{"id": i["id"], "n": 3} for i in seen["todo"]])

    run_sharded(Ranks(), log_path, [{"id": x} for x in "abc"], work, key=lambda i: i["id"])
    assert seen["todo"] == [{"id": "c"}] and not part_path(log_path, 1).exists()
    lines = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert lines == [{"id": "a", "n": 1}, {"id": "b", "n": 2}, {"id": "c", "n": 3}]
    assert len(RecordLog(log_path)) == 3
