"""The Yes/No judge: the score formula, token ids per mode, batching invariance, truncation."""

import math

import pytest
import torch

from ipo import IpoError
from ipo.data import Example
from ipo.judges.batching import (
    common_prefix_length,
    left_pad,
    levels_cache_positions,
    levels_cost,
    plan_batches,
    prefix_levels,
)
from ipo.judges.yes_no import YesNoJudge, YesNoScorer, p_yes_from_logits, resolve_yes_no_tokens, yes_no_mass
from ipo.modeling import load_model, load_tokenizer
from ipo.prompts import REWARDBENCH_LAYOUT, RMBENCH_LAYOUT, render_upstream


def naive_upstream_p_yes(model, tokenizer, text, max_length=1024):
    """Upstream's generate_yes_no_probability (upstream Preference_Comparison/Reward_Bench/ours.py), one
    sequence at a time, in float32."""
    input_ids = tokenizer.encode(text, return_tensors="pt", max_length=max_length, truncation=True)
    with torch.no_grad():
        logits = model(input_ids).logits[:, -1, :]
    probs = torch.softmax(logits.float(), dim=-1)[0]
    yes = sum(probs[t].item() for t in tokenizer.encode(" Yes", add_special_tokens=False))
    no = sum(probs[t].item() for t in tokenizer.encode(" No", add_special_tokens=False))
    return yes / (yes + no)


# ---------------------------------------------------------------------------------------------------
# The formula
# ---------------------------------------------------------------------------------------------------
def test_p_yes_on_hand_set_logits():
    logits = torch.tensor([[0.0, math.log(3.0), 0.0, 5.0], [1.0, 1.0, 1.0, -2.0]])
    p = p_yes_from_logits(logits, torch.tensor([1]), torch.tensor([2]))
    assert p.dtype == torch.float32
    assert p.tolist() == pytest.approx([0.75, 0.5], abs=1e-7)


def test_p_yes_sums_variants_and_counts_shared_ids_twice_like_upstream():
    logits = torch.tensor([[0.3, -1.2, 2.0, 0.7, 4.0]], dtype=torch.float64)
    probs = torch.softmax(logits, -1)[0]
    yes_ids, no_ids = [0, 1], [0, 2]  # id 0 plays the lone '▁' piece shared by both encodings
    expected = (probs[0] + probs[1]) / (probs[0] + probs[1] + probs[0] + probs[2])
    assert p_yes_from_logits(logits, torch.tensor(yes_ids), torch.tensor(no_ids)).item() == pytest.approx(
        expected.item(), abs=1e-6
    )
    mass = yes_no_mass(logits, torch.tensor(yes_ids), torch.tensor(no_ids)).item()
    assert mass == pytest.approx((2 * probs[0] + probs[1] + probs[2]).item(), abs=1e-6)


def test_p_yes_is_monotone_in_the_yes_logit_and_stable_in_half_precision():
    base = torch.zeros(1, 6, dtype=torch.float16)
    scores = []
    for value in (-30.0, 0.0, 30.0):
        logits = base.clone()
        logits[0, 1] = value
        scores.append(p_yes_from_logits(logits, torch.tensor([1]), torch.tensor([2])).item())
    assert scores[0] < scores[1] < scores[2] and 0.0 < scores[0] and scores[2] <= 1.0


# ---------------------------------------------------------------------------------------------------
# Token ids
# ---------------------------------------------------------------------------------------------------
def test_upstream_ids_are_encode_of_space_yes(tiny_model):
    _, tokenizer = tiny_model
    tokens = resolve_yes_no_tokens(tokenizer, "upstream")
    assert list(tokens.yes_ids) == tokenizer.encode(" Yes", add_special_tokens=False)
    assert list(tokens.no_ids) == tokenizer.encode(" No", add_special_tokens=False)
    assert tokens.yes_strings == (" Yes",) and tokens.no_strings == (" No",)


def test_chat_ids_are_single_token_variants_deduplicated(tiny_model):
    _, tokenizer = tiny_model
    tokens = resolve_yes_no_tokens(tokenizer, "chat")
    assert len(set(tokens.yes_ids)) == len(tokens.yes_ids) >= 2
    for token_id, text in zip(tokens.yes_ids, tokens.yes_strings):
        assert tokenizer.encode(text, add_special_tokens=False) == [token_id]
        assert text.strip().lower() == "yes"
    assert "Yes" in tokens.yes_strings and " No" in tokens.no_strings


def test_split_yes_tokenizer(tiny_model_split_yes_dir):
    tokenizer = load_tokenizer(str(tiny_model_split_yes_dir))
    upstream = resolve_yes_no_tokens(tokenizer, "upstream")
    assert len(upstream.yes_ids) > 1  # several pieces, all summed as upstream did
    with pytest.raises(IpoError, match="single tokens"):
        resolve_yes_no_tokens(tokenizer, "chat")


def test_chat_mode_needs_a_chat_template(tiny_model_no_template_dir):
    model, _, _ = load_model(str(tiny_model_no_template_dir), dtype="float32", device="cpu")
    tokenizer = load_tokenizer(str(tiny_model_no_template_dir))
    with pytest.raises(IpoError, match="no chat template"):
        YesNoJudge(model, tokenizer, scoring="chat")
    YesNoJudge(model, tokenizer, scoring="upstream")  # fine without a template


# ---------------------------------------------------------------------------------------------------
# Batching helpers
# ---------------------------------------------------------------------------------------------------
def test_plan_batches_longest_first_and_never_splits_a_group():
    assert plan_batches([[5, 5], [10, 10], [3]], batch_size=4, max_batch_tokens=1000) == [[1, 0], [2]]
    # token budget: two rows of 10 = 20 fit, a third row would make 30 > 25
    assert plan_batches([[10], [10], [10]], batch_size=8, max_batch_tokens=25) == [[0, 1], [2]]
    # a group bigger than the batch size still gets a batch of its own
    assert plan_batches([[4] * 6, [2]], batch_size=4, max_batch_tokens=1000) == [[0], [1]]


def test_common_prefix_and_left_pad():
    assert common_prefix_length([[1, 2, 3], [1, 2, 4, 5]]) == 2
    assert common_prefix_length([[1, 2], [1, 2]]) == 1  # every member keeps one token
    assert common_prefix_length([[7, 8, 9]]) == 2
    ids, mask = left_pad([[1, 2, 3], [4]], pad_id=0)
    assert ids.tolist() == [[1, 2, 3], [0, 0, 4]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_prefix_levels_split_a_batch_into_shared_and_own_tokens():
    # Whole batch shares [1, 2]; the first group also shares [3, 4]; a group of one runs all but its
    # last token at the group level.
    groups = [[[1, 2, 3, 4, 5], [1, 2, 3, 4, 6, 7]], [[1, 2, 8, 9]]]
    assert prefix_levels(groups) == [([[1, 2]], None), ([[3, 4], [8]], [0, 0]), ([[5], [6, 7], [9]], [0, 0, 1])]
    assert levels_cost(prefix_levels(groups)) == 2 + 2 * 2 + 3 * 2
    # Nothing shared by the whole batch: the group level comes first; a segment may be empty.
    assert prefix_levels([[[1, 2], [1, 3]], [[4, 5]]]) == [([[1], [4]], None), ([[2], [3], [5]], [0, 0, 1])]
    assert prefix_levels([[[1, 2, 3], [1, 2, 4]], [[1, 5], [1, 6]]]) == [
        ([[1]], None),
        ([[2], []], [0, 0]),
        ([[3], [4], [5], [6]], [0, 0, 1, 1]),
    ]
    # Groups sharing nothing beyond the batch prefix: no group level, the owners skip it.
    assert prefix_levels([[[1, 2, 3]], [[1, 2, 4]]]) == [([[1, 2]], None), ([[3], [4]], [0, 0])]
    # A lone sequence is one plain level.
    assert prefix_levels([[[5, 6, 7]]]) == [([[5, 6, 7]], None)]


def misaligned_groups():
    """Two prompts of 4 responses: A shares 60 tokens and differs in 2, B shares 2 and differs in 30. Their
    tree pads the group level to 60 and the last level to 30, so every row caches 90 positions; a plain
    pass runs 8 rows x 62."""
    a = [[100] + [2] * 59 + [10 + i, 20 + i] for i in range(4)]
    b = [[200, 3] + [30 + i] * 30 for i in range(4)]
    return [a, b]


def test_prefix_cache_positions_arithmetic():
    # rows of the last level x the sum of the levels' padded widths
    groups = [[[1, 2, 3, 4, 5], [1, 2, 3, 4, 6, 7]], [[1, 2, 8, 9]]]
    assert levels_cache_positions(prefix_levels(groups)) == 3 * (2 + 2 + 2)
    levels = prefix_levels(misaligned_groups())
    assert [(len(s), max(map(len, s))) for s, _ in levels] == [(2, 60), (8, 30)]
    assert levels_cost(levels) == 2 * 60 + 8 * 30 == 360  # the tokens the passes run: a saving over 8 x 62 = 496
    assert levels_cache_positions(levels) == 8 * 90 == 720  # but the cache it holds is over a 512 budget
    assert levels_cache_positions([([[1, 2, 3], [4]], None)]) == 2 * 3  # a plain pass: rows x longest
    for group in misaligned_groups():  # each prompt alone: tree caches <= its plain rows x longest
        alone = prefix_levels([group])
        assert levels_cache_positions(alone) == 4 * max(map(len, group))


def test_planner_keeps_the_prefix_cache_within_the_token_budget(tiny_model):
    """The judge's token budget counts the prefix key/value cache: a tree that would hold 720 positions under
    a 512 budget is split per prompt (A's tree: 248 positions; B alone saves under 5%, so it runs plain);
    scores are unchanged."""
    model, tokenizer = tiny_model
    groups = misaligned_groups()
    judge = YesNoJudge(model, tokenizer, "upstream", batch_size=8, max_batch_tokens=512)
    passes = judge._plan_passes(groups, [0, 1])
    planned = [(batch, len(levels), levels_cache_positions(levels), cost) for batch, levels, cost in passes]
    assert planned == [([0], 2, 248, 68), ([1], 1, 128, 128)]
    roomy = YesNoJudge(model, tokenizer, "upstream", batch_size=8, max_batch_tokens=1024)
    assert [(batch, cost) for batch, _, cost in roomy._plan_passes(groups, [0, 1])] == [([0, 1], 360)]
    # One prompt over the budget on its own runs over it whatever the plan: its tree holds no more than plain.
    tiny_budget = YesNoJudge(model, tokenizer, "upstream", batch_size=8, max_batch_tokens=100)
    assert [(len(levels), cost) for _, levels, cost in tiny_budget._plan_passes(groups, [0])] == [(2, 68)]
    scored = {g: s for window, batch in judge.score_groups(groups) for g, s in zip(window, batch)}
    assert 0 < judge.stats["peak_cache_positions"] <= 512
    single = YesNoJudge(model, tokenizer, "upstream", batch_size=1, prefix_sharing=False)
    for g, group in enumerate(groups):
        windows = single.score_groups([[seq] for seq in group])
        alone = {i: s for window, batch in windows for i, (s,) in zip(window, batch)}
        assert scored[g] == pytest.approx([alone[i] for i in range(len(group))], abs=1e-4)


# ---------------------------------------------------------------------------------------------------
# Batched == one at a time
# ---------------------------------------------------------------------------------------------------
def make_examples(n=10):
    examples = []
    for i in range(n):
        prompt = f"What is {i} plus {i}?" + " Explain." * (i % 4)
        responses = [f"It is {2 * i}." + " Yes indeed" * (i % 5), f"It is {i}." + " Hello there" * (i % 3)]
        examples.append(Example(id=i, prompt=prompt, responses=responses, subset="alpacaeval-easy"))
    return examples


def score_all(judge, examples, layout=REWARDBENCH_LAYOUT):
    scorer = YesNoScorer(judge, layout, lambda e: "Is the response correct? Answer Yes/No.")
    out = {}
    for batch in scorer.score(examples):
        for example, scores, _ in batch:
            out[example.id] = scores
    return out


@pytest.mark.parametrize("scoring", ["upstream", "chat"])
@pytest.mark.parametrize("layout", [REWARDBENCH_LAYOUT, RMBENCH_LAYOUT])
def test_batched_scores_equal_single_scores(tiny_model, scoring, layout):
    model, tokenizer = tiny_model
    examples = make_examples()
    single = score_all(YesNoJudge(model, tokenizer, scoring, batch_size=1, prefix_sharing=False), examples, layout)
    batched = YesNoJudge(model, tokenizer, scoring, batch_size=8, max_batch_tokens=4096, prefix_sharing=False)
    shared = YesNoJudge(model, tokenizer, scoring, batch_size=8, max_batch_tokens=4096, prefix_sharing=True)
    for judge in (batched, shared):
        scores = score_all(judge, examples, layout)
        for key in single:
            assert scores[key] == pytest.approx(single[key], abs=1e-4)
    assert shared.stats["shared_prefix_batches"] > 0  # the shared-prefix path really ran
    assert shared.stats["forward_tokens"] < batched.stats["forward_tokens"]


def test_three_level_prefix_tree_equals_single_scores(tiny_model):
    """Groups of 1, 2 and 3 responses and two judge questions: batch-wide, group and own levels all run."""
    model, tokenizer = tiny_model
    answers = ["It is {}.", "It is {} or so.", "Maybe {}."]
    examples = [
        Example(
            id=i,
            prompt=f"What is {i} plus {i}? Please explain the answer carefully.",
            responses=[a.format(2 * i) for a in answers[: 1 + i % 3]],
            subset="ab"[i % 2],
        )
        for i in range(9)
    ]
    questions = {"a": "Is the response correct? Answer Yes/No.", "b": "Answer Yes/No."}

    def run(judge):
        out = {}
        for batch in YesNoScorer(judge, REWARDBENCH_LAYOUT, lambda e: questions[e.subset]).score(examples):
            out.update({example.id: scores for example, scores, _ in batch})
        return out

    single = run(YesNoJudge(model, tokenizer, "upstream", batch_size=1, prefix_sharing=False))
    shared_judge = YesNoJudge(model, tokenizer, "upstream", batch_size=64)
    shared = run(shared_judge)
    assert shared_judge.stats["shared_prefix_batches"] == 2  # one batch per judge question, both shared
    for key in single:
        assert shared[key] == pytest.approx(single[key], abs=1e-4)
    # Raw ids where one group shares nothing: its group-level row is all padding.
    groups = [[[5, 6, 7, 8, 9, 10], [5, 6, 7, 8, 11]], [[12, 13, 14, 15], [16, 17, 18, 19, 20]]]
    assert prefix_levels(groups)[0] == ([[5, 6, 7, 8], []], None)
    batched = {g: scores for indices, batch in shared_judge.score_groups(groups) for g, scores in zip(indices, batch)}
    for g, group in enumerate(groups):
        for k, seq in enumerate(group):
            ((_, [[alone]]),) = shared_judge.score_groups([[seq]])
            assert math.isfinite(batched[g][k]) and batched[g][k] == pytest.approx(alone, abs=1e-4)


def test_upstream_mode_matches_upstreams_loop(tiny_model):
    model, tokenizer = tiny_model
    judge = YesNoJudge(model, tokenizer, "upstream", batch_size=8)
    examples = make_examples(6)
    scores = score_all(judge, examples)
    template = "Is the response correct? Answer Yes/No."
    for example in examples:
        for response, score in zip(example.responses, scores[example.id]):
            text = render_upstream(REWARDBENCH_LAYOUT, template, example.prompt, response)
            assert score == pytest.approx(naive_upstream_p_yes(model, tokenizer, text), abs=1e-5)


# ---------------------------------------------------------------------------------------------------
# Truncation
# ---------------------------------------------------------------------------------------------------
def test_upstream_truncation_cuts_the_end_at_max_length(tiny_model):
    model, tokenizer = tiny_model
    judge = YesNoJudge(model, tokenizer, "upstream", max_length=40)
    long_response = "The sky is blue and the answer is 42. " * 20
    encoded = judge.encode(REWARDBENCH_LAYOUT, "Answer Yes/No.", "What?", long_response)
    full = tokenizer(render_upstream(REWARDBENCH_LAYOUT, "Answer Yes/No.", "What?", long_response)).input_ids
    assert encoded.truncated and encoded.ids == full[:40]
    short = judge.encode(REWARDBENCH_LAYOUT, "Answer Yes/No.", "What?", "Fine.")
    assert (
        not short.truncated
        and short.ids == tokenizer(render_upstream(REWARDBENCH_LAYOUT, "Answer Yes/No.", "What?", "Fine.")).input_ids
    )


def test_chat_truncation_keeps_the_question_and_the_judge_instruction(tiny_model):
    model, tokenizer = tiny_model
    judge = YesNoJudge(model, tokenizer, "chat", max_length=80)
    template = "Answer with just Yes/No"
    encoded = judge.encode(REWARDBENCH_LAYOUT, template, "What is the capital of France?", "Paris is nice. " * 100)
    assert encoded.truncated and len(encoded.ids) <= 80
    text = tokenizer.decode(encoded.ids)
    assert text.startswith("<|im_start|>user\nAnswer with just Yes/No\n\nQuestion:\nWhat is the capital of France?")
    assert text.endswith("<|im_end|>\n<|im_start|>assistant\n")
    assert "Paris is nice." in text
    # A long question is cut from its start once the response is gone; the instruction stays.
    encoded = judge.encode(REWARDBENCH_LAYOUT, template, "Tell me more. " * 100 + "Final ask?", "Paris.")
    text = tokenizer.decode(encoded.ids)
    assert len(encoded.ids) <= 80 and "Answer with just Yes/No" in text and "Final ask?" in text


def test_chat_encoding_is_the_rendered_template(tiny_model):
    model, tokenizer = tiny_model
    judge = YesNoJudge(model, tokenizer, "chat")
    encoded = judge.encode(REWARDBENCH_LAYOUT, "T?", "Q", "R")
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": "T?\n\nQuestion:\nQ\n\nResponse:\nR"}], tokenize=False, add_generation_prompt=True
    )
    assert encoded.ids == tokenizer(rendered, add_special_tokens=False).input_ids and not encoded.truncated


# ---------------------------------------------------------------------------------------------------
# The real model
# ---------------------------------------------------------------------------------------------------
@pytest.mark.smollm2
def test_smollm2_batched_equals_upstream_loop(smollm2):
    model, tokenizer = smollm2
    tokens = resolve_yes_no_tokens(tokenizer, "upstream")
    assert tokens.yes_ids == (9230,) and tokens.no_ids == (2838,)  # ' Yes' / ' No' in SmolLM2's vocabulary
    examples = make_examples(4)
    scores = score_all(YesNoJudge(model, tokenizer, "upstream", batch_size=8), examples)
    for example in examples:
        for response, score in zip(example.responses, scores[example.id]):
            text = render_upstream(
                REWARDBENCH_LAYOUT, "Is the response correct? Answer Yes/No.", example.prompt, response
            )
            assert score == pytest.approx(naive_upstream_p_yes(model, tokenizer, text), abs=1e-4)
    chat = score_all(YesNoJudge(model, tokenizer, "chat", batch_size=8), examples)
    single = score_all(YesNoJudge(model, tokenizer, "chat", batch_size=1, prefix_sharing=False), examples)
    for key in chat:
        assert chat[key] == pytest.approx(single[key], abs=1e-4)


def test_responses_of_very_different_lengths_are_rebatched_by_length(tiny_model):
    """RM-Bench-like groups (short concise + long detailed responses): batching the window's sequences by
    length pads less than keeping each group in one pass; scores are unchanged."""
    model, tokenizer = tiny_model
    examples = []
    for i in range(8):
        short = [f"It is {i}.", f"No, {i}."]
        long = [f"It is {i} because " + "the sky is blue and " * (30 + 3 * i), "Hello there. " * (40 + 2 * i)]
        examples.append(Example(id=i, prompt=f"What is {i}?", responses=short + long, subset="s"))
    single = score_all(YesNoJudge(model, tokenizer, "upstream", batch_size=1, prefix_sharing=False), examples)
    judge = YesNoJudge(model, tokenizer, "upstream", batch_size=8, max_batch_tokens=1200)
    scores = score_all(judge, examples)
    for key in single:
        assert scores[key] == pytest.approx(single[key], abs=1e-4)
    assert judge.stats["regrouped_windows"] > 0
    lengths = [
        [
            len(judge.encode(REWARDBENCH_LAYOUT, "Is the response correct? Answer Yes/No.", e.prompt, r).ids)
            for r in e.responses
        ]
        for e in examples
    ]
    group_atomic = sum(
        sum(1 for g in b for _ in lengths[g]) * max(max(lengths[g]) for g in b) for b in plan_batches(lengths, 8, 1200)
    )
    assert judge.stats["forward_tokens"] < group_atomic
