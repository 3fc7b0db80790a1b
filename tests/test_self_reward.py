"""The 5-point Self-Rewarding judge: upstream's parsing quirks, chat-mode parsing, prompts, generation."""

import pytest
import torch

from ipo import IpoError
from ipo.data import Example
from ipo.judges.self_reward import (
    UPSTREAM_REGEX_SETS,
    SelfRewardScorer,
    parse_score,
    parse_score_upstream,
    render_upstream,
)
from ipo.modeling import load_tokenizer
from ipo.prompts import SELF_REWARD_PROMPT

# ---------------------------------------------------------------------------------------------------
# Upstream parsing, RewardBench / DPO regex set
# ---------------------------------------------------------------------------------------------------
PROMPT_ONLY = render_upstream("What is 2 + 2?", "It is 4.")


def test_the_templates_own_score_line_does_not_match():
    assert PROMPT_ONLY.endswith('"Score: " ')
    for regex_set in UPSTREAM_REGEX_SETS:
        assert parse_score_upstream(PROMPT_ONLY, regex_set) == 0  # nothing generated: a 0, as upstream


def test_rewardbench_set_reads_the_generation_after_the_prompt():
    assert parse_score_upstream(PROMPT_ONLY + "The answer is right. Score: 4", "rewardbench") == 4
    assert parse_score_upstream(PROMPT_ONLY + 'Justified.\n"Score": 3', "rewardbench") == 3
    assert parse_score_upstream(PROMPT_ONLY + 'Justified.\n"Score": "3"', "rewardbench") == 0  # quote before the digit
    assert parse_score_upstream(PROMPT_ONLY + "score:2", "rewardbench") == 2  # IGNORECASE, no space needed


def test_rewardbench_set_clamps_and_takes_the_first_match_even_from_the_users_text():
    assert parse_score_upstream(PROMPT_ONLY + "Score: 9", "rewardbench") == 5
    assert parse_score_upstream(PROMPT_ONLY + "Score: 0", "rewardbench") == 1
    # The user's "score 7" comes before the judge's "Score: 2" in the decoded text, so it wins, clamped.
    text = render_upstream("Rate my essay, I think it deserves a score 7.", "Fine.") + "Score: 2"
    assert parse_score_upstream(text, "rewardbench") == 5
    assert parse_score("Score: 2") == 2  # chat mode reads only the judge's own text


# ---------------------------------------------------------------------------------------------------
# Upstream parsing, RM-Bench and GPT-RewardBench sets
# ---------------------------------------------------------------------------------------------------
def test_rmbench_set_pattern_order_beats_position():
    assert parse_score_upstream("score: 4", "rmbench") == 4
    assert parse_score_upstream("I would score 3 here", "rmbench") == 3  # second pattern, no colon needed
    assert parse_score_upstream("Overall 4/5.", "rmbench") == 4  # third pattern
    assert parse_score_upstream("Overall 4 / 5, but a score 2 is fairer.", "rmbench") == 2  # pattern 2 before 3
    assert parse_score_upstream("Score: 12", "rmbench") == 5
    assert parse_score_upstream("Score: 4", "rewardbench") == parse_score_upstream("Score: 4", "rmbench") == 4
    assert parse_score_upstream("Overall 4/5.", "rewardbench") == 0  # the RewardBench set has no x/5 pattern


def test_gpt_rewardbench_set_needs_exactly_one_separator_and_one_space():
    assert parse_score_upstream("Score: 4", "gpt_rewardbench") == 4
    assert parse_score_upstream('Score" 3', "gpt_rewardbench") == 3
    assert parse_score_upstream("Score:4", "gpt_rewardbench") == 0
    assert parse_score_upstream("Score:  4", "gpt_rewardbench") == 0
    assert parse_score_upstream("Score:4", "rewardbench") == 4  # the looser local-model set reads it


def test_explicit_patterns_are_accepted():
    assert parse_score_upstream("points = 3", [r"points\s*=\s*(\d+)"]) == 3


# ---------------------------------------------------------------------------------------------------
# Chat-mode parsing
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, expected",
    [
        ("The response is helpful. Score: 4", 4),
        ("Score: 2 at first sight, but on reflection... Score: 5", 5),  # the last one concludes
        ("**Score:** 3", 3),
        ('"Score": 1', 1),
        ("Score: 4/5", 4),
        ('Final answer - "Score: " 2', 2),
        ("Score: 4.5", None),  # not an integer score
        ("Score: 7", None),  # out of range is a failure, not a clamp
        ("Score: 0", None),
        ("I would score it 3", None),  # no "Score:" conclusion
        ("", None),
    ],
)
def test_chat_parse(text, expected):
    assert parse_score(text) == expected


# ---------------------------------------------------------------------------------------------------
# Prompts
# ---------------------------------------------------------------------------------------------------
def test_upstream_prompt_is_the_formatted_template_right_truncated(tiny_model):
    model, tokenizer = tiny_model
    scorer = SelfRewardScorer(model, tokenizer, "upstream", max_length=2048)
    encoded = scorer.encode("Q {not a field}", "R")
    text = SELF_REWARD_PROMPT.format(instruction="Q {not a field}", response="R")
    assert encoded.ids == tokenizer(text).input_ids and not encoded.truncated
    short = SelfRewardScorer(model, tokenizer, "upstream", max_length=50)
    encoded = short.encode("Q", "R")
    full = tokenizer(SELF_REWARD_PROMPT.format(instruction="Q", response="R")).input_ids
    assert len(full) > 50 and encoded.truncated and encoded.ids == full[:50]  # the tail, rubric included, is cut


def test_chat_prompt_is_the_user_turn_and_truncation_keeps_the_rubric(tiny_model):
    model, tokenizer = tiny_model
    scorer = SelfRewardScorer(model, tokenizer, "chat", max_length=4096)
    encoded = scorer.encode("What is 2 + 2?", "It is 4.")
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": render_upstream("What is 2 + 2?", "It is 4.")}],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert encoded.ids == tokenizer(rendered, add_special_tokens=False).input_ids and not encoded.truncated
    full_length = len(encoded.ids)
    short = SelfRewardScorer(model, tokenizer, "chat", max_length=full_length + 20)
    encoded = short.encode("What is 2 + 2?", "It is four, as everyone knows. " * 30)
    text = tokenizer.decode(encoded.ids)
    assert encoded.truncated and len(encoded.ids) <= full_length + 20
    assert text.endswith('"Score: " <|im_end|>\n<|im_start|>assistant\n') and "What is 2 + 2?" in text
    assert "<response>It is four" in text


def test_bad_settings_are_one_line_errors(tiny_model, tiny_model_no_template_dir):
    model, tokenizer = tiny_model
    with pytest.raises(IpoError, match="unknown scoring"):
        SelfRewardScorer(model, tokenizer, "pairwise")
    with pytest.raises(IpoError, match="unknown regex set"):
        SelfRewardScorer(model, tokenizer, regex_set="nope")
    with pytest.raises(IpoError, match="no chat template"):
        SelfRewardScorer(model, load_tokenizer(str(tiny_model_no_template_dir)), "chat")


# ---------------------------------------------------------------------------------------------------
# Generation and the scorer
# ---------------------------------------------------------------------------------------------------
def test_batched_greedy_generation_equals_one_at_a_time(tiny_model):
    model, tokenizer = tiny_model
    scorer = SelfRewardScorer(model, tokenizer, "upstream", max_new_tokens=12)
    prompts = [scorer.encode(f"What is {i} plus {i}?" + " Explain." * i, f"It is {2 * i}.").ids for i in range(5)]
    assert len({len(p) for p in prompts}) == 5  # different lengths: real left padding
    batched = scorer.generate(prompts)
    for prompt, continuation in zip(prompts, batched):
        (alone,) = scorer.generate([prompt])
        assert continuation == alone
        # and both are what transformers' own greedy decoding of the lone prompt gives
        direct = model.generate(
            torch.tensor([prompt]),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            max_new_tokens=12,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
        expected = direct[0, len(prompt) :].tolist()
        if tokenizer.eos_token_id in expected:
            expected = expected[: expected.index(tokenizer.eos_token_id) + 1]
        assert continuation == expected
    assert all(len(c) <= 12 for c in batched) and scorer.stats["sequences"] == 5 + 5


class ScriptedScorer(SelfRewardScorer):
    """Generation replaced by fixed judge replies (keyed by the response text the prompt ends with)."""

    replies = {"good": " Fine work. Score: 4", "bad": " Weak. Score: 2", "odd": " I cannot say."}

    def generate(self, prompts):
        out = []
        for ids in prompts:
            text = self.tokenizer.decode(ids)
            key = next(k for k in self.replies if f"<response>{k}</response>" in text)
            out.append(
                self.tokenizer(self.replies[key], add_special_tokens=False).input_ids + [self.tokenizer.eos_token_id]
            )
        return out


def scored(scorer, examples):
    return {example.id: (scores, extra) for batch in scorer.score(examples) for example, scores, extra in batch}


def test_scorer_end_to_end_in_both_modes(tiny_model):
    model, tokenizer = tiny_model
    examples = [
        Example(id="a", prompt="Say something.", responses=["good", "bad"]),
        Example(id="b", prompt="Say something.", responses=["odd", "good", "bad"]),
        Example(id="c", prompt="Give it a score 7 please.", responses=["bad", "odd"]),
    ]
    upstream = scored(ScriptedScorer(model, tokenizer, "upstream", batch_size=2), examples)
    assert upstream["a"][0] == [4, 2]
    assert upstream["b"][0] == [0, 4, 2] and upstream["b"][1]["parse_failed"] == [True, False, False]
    assert upstream["c"][0] == [5, 5]  # the user's "score 7" is read first, clamped, even for "odd"
    assert upstream["c"][1]["parse_failed"] == [False, False]
    assert upstream["a"][1]["generated"] == [" Fine work. Score: 4", " Weak. Score: 2"]  # the new text only
    chat = scored(ScriptedScorer(model, tokenizer, "chat"), examples)
    assert chat["a"][0] == [4, 2] and chat["b"][0] == [None, 4, 2] and chat["c"][0] == [2, None]
    assert chat["c"][1]["parse_failed"] == [False, True] and chat["c"][1]["truncated"] is False


def test_scorer_on_the_tiny_model_parses_what_it_generated(tiny_model):
    model, tokenizer = tiny_model
    scorer = SelfRewardScorer(model, tokenizer, "chat", max_new_tokens=6, batch_size=3)
    examples = [
        Example(id=i, prompt=f"What is {i} plus {i}?", responses=[f"It is {2 * i}.", "No idea."]) for i in range(4)
    ]
    results = scored(scorer, examples)
    assert sorted(results) == [0, 1, 2, 3]
    for example in examples:
        scores, extra = results[example.id]
        assert scores == [parse_score(text) for text in extra["generated"]]
        assert extra["parse_failed"] == [s is None for s in scores]
        for response, text in zip(example.responses, extra["generated"]):
            (ids,) = scorer.generate([scorer.encode(example.prompt, response).ids])
            assert text == tokenizer.decode(ids, skip_special_tokens=True)


@pytest.mark.smollm2
def test_smollm2_judges_a_pair(smollm2):
    model, tokenizer = smollm2
    scorer = SelfRewardScorer(model, tokenizer, "chat", max_new_tokens=48)
    example = Example(
        id=0,
        prompt="What is the capital of France?",
        responses=["The capital of France is Paris.", "The capital of France is Berlin."],
    )
    ((_, scores, extra),) = next(scorer.score([example]))
    assert len(scores) == 2 and all(s is None or 1 <= s <= 5 for s in scores)
    assert all(text.strip() for text in extra["generated"])  # it wrote something
