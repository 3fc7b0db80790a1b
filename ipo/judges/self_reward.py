"""The Self-Rewarding judge (Yuan et al. 2024, arXiv 2401.10020): the model writes a short justification
and a 1-5 score for a (question, response) pair under the additive 5-point prompt; the score is parsed
from the text. The IPO paper's baseline judge (Garg et al., arXiv 2502.16182, section 4).

This module is the one implementation of that judge for every script that uses it (RewardBench and
RM-Bench self_reward.py, DPO/self_reward.py, the API self_reward_gpt.py scripts). Parsing is pure and
separate from generation, so an API judge parses its replies with the same functions.

Two modes (``scoring``, the command line's ``--prompt_format``):
  upstream  as the authors' code: ``SELF_REWARD_PROMPT.format(...)`` as raw text (no chat template),
            right truncation at ``max_length`` (2048), greedy generation, and the score found by the
            script's regex set searched over ``decode(prompt + generation, skip_special_tokens=True)``:
            so the user's own "score 7" can be read as the score, and a failed parse is a 0 (which
            loses to any parsed score and ties with another failure).
  chat      the same prompt as the user turn of the model's chat template with a generation prompt;
            truncation cuts the response, never the rubric; the score is the last "Score: N" (N in
            1..5) of the generated tokens alone, and anything else is a parse failure (None), never a
            score.

Generation is batched: prompts are tokenised once, sorted by length and left-padded into batches under
a token budget that counts the new tokens, and decoded greedily (``do_sample=False`` explicitly; upstream
passed ``temperature=0.1`` without ``do_sample``, which is greedy with a warning).

Precision: the score is an integer read from generated text, so there is no score to round; the model's
dtype changes the greedy text itself (other hidden states, near-tied tokens), which no float32 head would
undo, so none is used. A NaN or +inf next-token logit (a float16 overflow) raises an IpoError at once
(``RaiseOnNonFinite``): greedy decoding would otherwise emit token 0 and the parse would score garbage.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Sequence

from ipo import IpoError
from ipo.data import Example
from ipo.judges.batching import (
    DEFAULT_BATCH_SIZE,
    QUESTION_MARK,
    RESPONSE_MARK,
    EncodedPrompt,
    check_prompt_format,
    encode_right_truncated,
    fit_chat_prompt,
    left_pad,
    plan_batches,
    require_chat_template,
    split_chat_template,
)
from ipo.modeling import non_finite_error
from ipo.prompts import SELF_REWARD_PROMPT
from ipo.report import pct

logger = logging.getLogger("ipo")

# Token budget per generation batch, new tokens included. A decoding step re-reads the weights whatever
# the number of rows, so rows are nearly free there and the budget is larger than the judge's.
DEFAULT_GENERATION_BATCH_TOKENS = 16384
SCORE_MIN, SCORE_MAX = 1, 5

# Upstream's score regexes, tried in order (the first pattern that matches anywhere wins), IGNORECASE,
# from the authors' code (https://github.com/shivank21/Implicit_Preference_Optimization at 4466286), per script:
UPSTREAM_REGEX_SETS: dict[str, tuple[str, ...]] = {
    # Reward_Bench/self_reward.py and DPO/self_reward.py (extract_score). The second pattern can only
    # match where the first already does; it is kept because upstream had it.
    "rewardbench": (r'Score\s*[:"]*\s*(\d+)', r'"\s*Score\s*[:"]*\s*(\d+)'),
    # RM_Bench/self_reward.py and RM_Bench/self_reward_gpt.py.
    "rmbench": (r"score\s*:\s*(\d+)", r"score\s*(\d+)", r"(\d+)\s*/\s*5"),
    # Reward_Bench/self_reward_gpt.py: exactly one [:"] and exactly one whitespace character.
    "gpt_rewardbench": (r'Score\s*[:"]\s(\d+)', r'"\s*Score\s*[:"]\s(\d+)'),
}
UPSTREAM_NO_MATCH = 0  # upstream's score when no pattern matched

# Chat mode: "score", optional markdown/quotes, a colon, optional markdown/quotes, an integer that is not
# the start of a decimal ("Score: 4", "**Score:** 4", '"Score": 4', "Score: 4/5"; not "Score: 4.5").
CHAT_SCORE_PATTERN = re.compile(r"""\bscore\b[\s*"']*:[\s*"']*(\d+)(?!\.?\d)""", re.IGNORECASE)


# ---------------------------------------------------------------------------------------------------
# Parsing (pure)
# ---------------------------------------------------------------------------------------------------
def parse_score_upstream(text: str, regex_set: str | Sequence[str] = "rewardbench") -> int:
    """Upstream's extract_score: the first pattern (in order) that matches anywhere in ``text`` gives the
    score, clamped to 1..5; 0 if none matches.

    Upstream searched the decoded prompt *and* generation, so the template's own closing '"Score: " '
    never matches (a quote follows the space), but a "score 7" in the user's question does, first.
    """
    patterns = UPSTREAM_REGEX_SETS[regex_set] if isinstance(regex_set, str) else regex_set
    for pattern in patterns:
        match = re.search(pattern, text, re.IGNORECASE)
        if match:
            return min(max(int(match.group(1)), SCORE_MIN), SCORE_MAX)
    return UPSTREAM_NO_MATCH


def parse_score(generated_text: str) -> int | None:
    """Chat mode: the last "Score: N" of the judge's own text, if N is in 1..5; otherwise None.

    Only the generated tokens are passed here, so nothing the user wrote can be read as a score; the
    last occurrence is the conclusion the prompt asks for. An out-of-range or missing score is a parse
    failure, not a clamped score.
    """
    matches = CHAT_SCORE_PATTERN.findall(generated_text)
    if not matches:
        return None
    score = int(matches[-1])
    return score if SCORE_MIN <= score <= SCORE_MAX else None


def render_upstream(instruction: str, response: str, prompt: str = SELF_REWARD_PROMPT) -> str:
    """The raw-text judge prompt, exactly as upstream built it (``SELF_REWARD_PROMPT.format(...)``)."""
    return prompt.format(instruction=instruction, response=response)


# ---------------------------------------------------------------------------------------------------
# The judge
# ---------------------------------------------------------------------------------------------------
class RaiseOnNonFinite:
    """A logits processor that raises ipo.modeling.non_finite_error when a next-token logit is NaN or +inf
    (-inf is a token another processor forbade, and stays allowed)."""

    def __init__(self, dtype):
        self.dtype = dtype

    def __call__(self, input_ids, scores):
        if bool((scores.isnan() | scores.isposinf()).any()):
            raise non_finite_error(self.dtype, "the 5-point judge's next-token logits")
        return scores


class SelfRewardScorer:
    """Batched greedy 5-point judging; ``.score(examples)`` yields lists of ``(example, scores, extra)``.

    scores: one int per response: upstream mode 0..5 (0 = no match), chat mode 1..5 or None (failure).
    extra: {"generated": the judge's new text per response, "parse_failed": per response,
            "truncated": any prompt cut to max_length}; upstream mode adds "decoded": per response, the
            decoded prompt + generation that upstream parsed (and that upstream's DPO/self_reward.py broke
            score ties by).
    """

    def __init__(
        self,
        model,
        tokenizer,
        scoring: str = "upstream",
        max_length: int = 2048,
        max_new_tokens: int = 200,
        batch_size: int = DEFAULT_BATCH_SIZE,
        max_batch_tokens: int | None = None,
        regex_set: str = "rewardbench",
        prompt: str = SELF_REWARD_PROMPT,
    ):
        check_prompt_format(scoring)
        if regex_set not in UPSTREAM_REGEX_SETS:
            raise IpoError(f"unknown regex set {regex_set!r}; choose from {', '.join(UPSTREAM_REGEX_SETS)}")
        if scoring == "chat":
            require_chat_template(tokenizer)
        if max_length < 8 or max_new_tokens < 1:
            raise IpoError(f"--max_length {max_length} / --max_new_tokens {max_new_tokens} are too small")
        self.model = model
        self.tokenizer = tokenizer
        self.scoring = scoring
        self.max_length = max_length
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.max_batch_tokens = max_batch_tokens or DEFAULT_GENERATION_BATCH_TOKENS
        self.regex_set = regex_set
        self.prompt = prompt
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        eos = model.generation_config.eos_token_id
        eos = tokenizer.eos_token_id if eos is None else eos
        self.eos_ids = set(eos if isinstance(eos, (list, tuple)) else [eos])
        self._chat_pieces = None
        self.stats = {"sequences": 0, "generated_tokens": 0}

    # ------------------------------------------------------------------ prompts
    def encode(self, instruction: str, response: str) -> EncodedPrompt:
        if self.scoring == "upstream":
            return encode_right_truncated(
                self.tokenizer, render_upstream(instruction, response, self.prompt), self.max_length
            )
        if self._chat_pieces is None:
            content = render_upstream(QUESTION_MARK, RESPONSE_MARK, self.prompt)
            self._chat_pieces = split_chat_template(self.tokenizer, content)
        return fit_chat_prompt(self.tokenizer, self._fill_chat, instruction, response, self.max_length)

    def _fill_chat(self, instruction: str, response: str) -> str:
        before, between, after = self._chat_pieces
        return before + instruction + between + response + after

    # ------------------------------------------------------------------ generation
    def generate(self, prompts: Sequence[Sequence[int]]) -> list[int]:
        """Greedy continuations (token ids, cut after the first end-of-sequence token) of left-padded prompts."""
        import torch
        from transformers import LogitsProcessorList

        input_ids, attention_mask = left_pad(prompts, self.pad_id)
        with torch.inference_mode():
            output = self.model.generate(
                input_ids=input_ids.to(self.model.device),
                attention_mask=attention_mask.to(self.model.device),
                max_new_tokens=self.max_new_tokens,
                do_sample=False,  # greedy, stated (upstream's temperature=0.1 without do_sample was greedy too)
                num_beams=1,
                pad_token_id=self.pad_id,
                logits_processor=LogitsProcessorList([RaiseOnNonFinite(self.model.dtype)]),
            )
        continuations = []
        for row in output[:, input_ids.shape[1] :].tolist():
            end = next((i + 1 for i, token in enumerate(row) if token in self.eos_ids), len(row))
            continuations.append(row[:end])
        self.stats["sequences"] += len(prompts)
        self.stats["generated_tokens"] += sum(len(c) for c in continuations)
        return continuations

    def judge(self, prompt_ids: Sequence[int], new_ids: Sequence[int]) -> tuple[int | None, str]:
        """(score, the judge's own text) of one generation, parsed as the mode prescribes."""
        score, generated, _ = self._judge(prompt_ids, new_ids)
        return score, generated

    def _judge(self, prompt_ids, new_ids) -> tuple[int | None, str, str | None]:
        """(score, the judge's own text, upstream mode: the decoded prompt + generation, else None)."""
        generated = self.tokenizer.decode(new_ids, skip_special_tokens=True)
        if self.scoring == "upstream":
            # Upstream decoded the whole output sequence: the prompt, then the generation.
            full_text = self.tokenizer.decode(list(prompt_ids) + list(new_ids), skip_special_tokens=True)
            return parse_score_upstream(full_text, self.regex_set), generated, full_text
        return parse_score(generated), generated, None

    def _failed(self, score) -> bool:
        return score is None or (self.scoring == "upstream" and score == UPSTREAM_NO_MATCH)

    # ------------------------------------------------------------------ examples
    def score(self, examples: Sequence[Example]) -> Iterator[list[tuple[Example, list, dict]]]:
        encoded = [[self.encode(example.prompt, r) for r in example.responses] for example in examples]
        # The token budget counts the new tokens too: they are what fills the key/value cache.
        lengths = [[len(p.ids) + self.max_new_tokens for p in prompts] for prompts in encoded]
        for batch in plan_batches(lengths, self.batch_size, self.max_batch_tokens):
            flat = [p.ids for g in batch for p in encoded[g]]
            continuations = iter(self.generate(flat))
            out = []
            for g in batch:
                judged = [self._judge(p.ids, next(continuations)) for p in encoded[g]]
                scores = [score for score, _, _ in judged]
                extra = {
                    "generated": [text for _, text, _ in judged],
                    "parse_failed": [self._failed(s) for s in scores],
                    "truncated": any(p.truncated for p in encoded[g]),
                }
                if self.scoring == "upstream":
                    extra["decoded"] = [full_text for _, _, full_text in judged]
                out.append((examples[g], scores, extra))
            yield out


# ---------------------------------------------------------------------------------------------------
# Pairs and metrics (pure)
# ---------------------------------------------------------------------------------------------------
def compare_scores(chosen: int | None, rejected: int | None) -> tuple[bool, bool]:
    """(correct, tie) of a pair: strict > as upstream, so a tie is wrong. A chat-mode parse failure
    (None) on either side makes the pair wrong and not a tie; upstream's 0 compares like any score."""
    if chosen is None or rejected is None:
        return False, False
    return chosen > rejected, chosen == rejected


def parse_failure_flags(record: dict) -> list[bool]:
    """The parse-failure flags of one prediction record: ``parse_failed_chosen`` then
    ``parse_failed_rejected``, each one flag (a RewardBench pair) or a list of flags (RM-Bench's 3 styles)."""
    flags: list[bool] = []
    for side in ("chosen", "rejected"):
        value = record[f"parse_failed_{side}"]
        flags += [bool(v) for v in value] if isinstance(value, (list, tuple)) else [bool(value)]
    return flags


def parse_failure_counts(records: Sequence[dict]) -> dict:
    """n_judgements, n_parse_failures, parse_failure_rate (per judgement; None without records) and
    records_with_parse_failure (records with a failure on either side) of prediction records."""
    flags = [parse_failure_flags(r) for r in records]
    n_judgements = sum(map(len, flags))
    n_failures = sum(map(sum, flags))
    return {
        "n_judgements": n_judgements,
        "n_parse_failures": n_failures,
        "parse_failure_rate": n_failures / n_judgements if n_judgements else None,
        "records_with_parse_failure": sum(any(f) for f in flags),
    }


def parse_failure_metrics(records: Sequence[dict]) -> dict:
    """Parse failures of pair records holding parse_failed_chosen / parse_failed_rejected and correct.

    n_parse_failures / parse_failure_rate count responses; pairs_with_parse_failure counts pairs with a
    failure on either side; accuracy_excluding_parse_failures is the accuracy over the other pairs
    (None if there are none).
    """
    counts = parse_failure_counts(records)
    clean = [r for r in records if not any(parse_failure_flags(r))]
    return {
        "n_parse_failures": counts["n_parse_failures"],
        "parse_failure_rate": counts["parse_failure_rate"],
        "pairs_with_parse_failure": counts["records_with_parse_failure"],
        "accuracy_excluding_parse_failures": sum(r["correct"] for r in clean) / len(clean) if clean else None,
    }


def parse_failure_note(counts: dict, unit: str, scoring: str) -> str:
    """The results.md sentence on parse failures, from ``parse_failure_counts`` (``unit``: "pairs",
    "prompts"). It says what a failure did to the comparisons in this ``scoring`` mode."""
    effect = (
        "each scored 0, below any parsed score, as upstream"
        if scoring == "upstream"
        else "every comparison with a failed judgement counts as wrong"
    )
    return (
        f"Parse failures: {counts['n_parse_failures']} of {counts['n_judgements']} judgements "
        f"({pct(counts['parse_failure_rate'])}%), in {counts['records_with_parse_failure']} {unit} ({effect})."
    )
