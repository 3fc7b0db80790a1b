"""API judges: the paper's judges through any OpenAI-compatible chat-completions endpoint.

Upstream's ``*_gpt.py`` scripts (upstream Preference_Comparison/Reward_Bench/{ours,binary,self_reward}_gpt.py
and their RM_Bench counterparts) asked a hosted model through OpenRouter. Here the three judges build their
requests and read the answers; ipo.judges.api_client sends them (retries, cache, concurrency):

  Yes/No     P(Yes) from the first generated token's ``top_logprobs`` (ours_gpt.py)
  pairwise   "Better response: Response 1|2" from the generated text (binary_gpt.py)
  5-point    the Self-Rewarding judge's "Score: N" from the generated text (self_reward_gpt.py)

on RewardBench (Preference_Comparison/Reward_Bench/*_gpt.py) and RM-Bench (Preference_Comparison/RM_Bench/
*_gpt.py; six responses per prompt, or chosen/rejected style pairs for the pairwise judge).

Request building and parsing are pure functions of the prompt format (``scoring``: upstream or chat) and
the chat-completions JSON. ``ApiScorer`` drives them through an ApiClient with the interface of the local
scorers (ipo.judges.yes_no.YesNoScorer), so ipo.runs.score_into_log runs every judge the same way:
  * Before anything else, the first request not already cached is sent alone (``ApiScorer.probe``), so a
    wrong key, base URL or model id fails in seconds, and any failure of that first request is fatal (with
    nothing answered, the endpoint is wrong or down); so is an answer that cannot serve the judge at all
    (SYSTEMATIC_PARSE_FAILURES).
  * After that, a request that fails after all retries or is rejected is a *failure*: kept in the
    predictions with its kind, counted in metrics.json, never scored as a number, and tried again by the
    next run of the same command. So is an answer that could not be read (UNREADABLE): it is not cached,
    so the next run asks again instead of reading the same unreadable answer from the cache.
  * The scorer hands each example on as soon as all its requests are done.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from ipo import IpoError
from ipo.data import Example
from ipo.judges import self_reward
from ipo.judges.api_client import ApiClient, Result, first_choice
from ipo.prompts import REWARDBENCH_LAYOUT, RMBENCH_LAYOUT, chat_user_content, render_api_upstream, render_upstream
from ipo.report import markdown_table, pct

# Request parameters (the model is added by the client).
# upstream: Reward_Bench/ours_gpt.py and RM_Bench/ours_gpt.py. The temperature does not change the
# first token's log-probabilities; it is kept so the requests are upstream's, byte for byte.
# chat: only the first token is read, so one token is enough; 20 is the most top_logprobs OpenAI
# returns (more variants of Yes/No are seen); temperature 0 makes the one generated token reproducible.
YES_NO_REQUEST = {
    "upstream": {"max_tokens": 2, "logprobs": True, "top_logprobs": 10, "temperature": 0.7},
    "chat": {"max_tokens": 1, "logprobs": True, "top_logprobs": 20, "temperature": 0},
}
# upstream: Reward_Bench/binary_gpt.py and RM_Bench/binary_gpt.py; chat: the same, greedy.
PAIRWISE_REQUEST = {
    "upstream": {"max_tokens": 200, "temperature": 0.1},
    "chat": {"max_tokens": 200, "temperature": 0},
}
# upstream: the parameters of Reward_Bench/self_reward_gpt.py and RM_Bench/self_reward_gpt.py (the same in
# both); 200 tokens fit the ~100-word justification the prompt asks for. chat: the same, greedy.
SELF_REWARD_REQUEST = PAIRWISE_REQUEST
# Answers that say nothing about the question (no log-probabilities, no Yes/No among them, no text): not
# cached, so the next run asks again (ipo.judges.api_client keeps them for the record). An answer that was
# read but fits no verdict ("unparsed") is the judge's answer, and cached like any other.
UNREADABLE = frozenset({"no_logprobs", "no_yes_no", "no_text"})
# Answers that say the endpoint cannot serve this judge at all: fatal when the probe gets one.
SYSTEMATIC_PARSE_FAILURES = {
    "no_logprobs": "returned no log-probabilities; the Yes/No judge needs `logprobs` and `top_logprobs` "
    "(on OpenRouter pick a model whose providers support them; vLLM returns them)",
    "no_text": "returned no message text",
}


# ---------------------------------------------------------------------------------------------------
# Requests (pure)
# ---------------------------------------------------------------------------------------------------
def user_message(content: str) -> list[dict]:
    return [{"role": "user", "content": content}]


def yes_no_content(scoring: str, layout: str, template: str, instruction: str, response: str) -> str:
    """The user message of the Yes/No judge.

    upstream: RewardBench -> the wrapper of upstream's Reward_Bench/ours_gpt.py (``render_api_upstream``:
    no indents, ``User:``); RM-Bench -> the local RM-Bench wrapper, which RM_Bench/ours_gpt.py reused
    (``render_upstream``). chat: the project's chat-mode layout on both benchmarks (``chat_user_content``),
    the same text the local judge puts in its user turn.
    """
    if scoring == "chat":
        return chat_user_content(template, instruction, response)
    if scoring != "upstream":
        raise ValueError(f"unknown scoring mode {scoring!r}")
    if layout == REWARDBENCH_LAYOUT:
        return render_api_upstream(template, instruction, response)
    if layout == RMBENCH_LAYOUT:
        return render_upstream(RMBENCH_LAYOUT, template, instruction, response)
    raise ValueError(f"unknown layout {layout!r}")


def yes_no_request(scoring: str, content: str) -> dict:
    """Body of a Yes/No judge request (without the model): one user turn, YES_NO_REQUEST[scoring]."""
    return {"messages": user_message(content), **YES_NO_REQUEST[scoring]}


def generation_request(content: str, max_tokens: int, temperature: float) -> dict:
    """Body of a request whose generated text is parsed (pairwise and 5-point judges)."""
    return {"messages": user_message(content), "max_tokens": max_tokens, "temperature": temperature}


def pairwise_request(scoring: str, content: str) -> dict:
    return generation_request(content, **PAIRWISE_REQUEST[scoring])


# ---------------------------------------------------------------------------------------------------
# Answers (pure functions on the chat-completions JSON)
# ---------------------------------------------------------------------------------------------------
@dataclass
class Answer:
    """One request's parsed outcome: ``value`` (p_yes, a verdict, a score) or a ``failure`` kind."""

    value: Any
    failure: str | None = None
    info: dict = field(default_factory=dict)  # what the prediction record keeps (log-probs, judge text)


def first_token_top_logprobs(response: dict) -> list[dict] | None:
    """``choices[0].logprobs.content[0].top_logprobs``: the first generated token's alternatives, or None."""
    choice = first_choice(response)
    logprobs = (choice or {}).get("logprobs") or {}
    content = logprobs.get("content") if isinstance(logprobs, dict) else None
    if not content or not isinstance(content[0], dict):
        return None
    top = content[0].get("top_logprobs")
    return top if isinstance(top, list) else None


def response_text(response: dict) -> str | None:
    """``choices[0].message.content``, or None."""
    choice = first_choice(response)
    text = ((choice or {}).get("message") or {}).get("content")
    return text if isinstance(text, str) else None


def _logsumexp(values: Sequence[float]) -> float:
    top = max(values)
    if top == -math.inf:
        return top
    return top + math.log(sum(math.exp(v - top) for v in values))


def yes_no_logprobs(top_logprobs: Sequence[dict], scoring: str) -> tuple[float | None, float | None]:
    """(log p_yes, log p_no) from one token position's top log-probabilities; None for a side not listed.

    A token is a Yes (No) when ``token.strip().lower()`` is "yes" ("no"): "Yes", " yes", "YES" all are;
    "Yes." and "Yesterday" are not.
    upstream: the FIRST matching entry of each side, in the list's order, as upstream's ours_gpt.py took it.
    chat: log of the summed probability of every matching entry (logsumexp), like the local chat mode's
    sum over all single-token variants.
    """
    found: dict[str, list[float]] = {"yes": [], "no": []}
    for entry in top_logprobs:
        token, logprob = entry.get("token"), entry.get("logprob")
        if not isinstance(token, str) or not isinstance(logprob, (int, float)):
            continue
        side = token.strip().lower()
        if side in found:
            found[side].append(float(logprob))
    if scoring == "upstream":
        return tuple(v[0] if v else None for v in (found["yes"], found["no"]))  # type: ignore[return-value]
    if scoring == "chat":
        return tuple(_logsumexp(v) if v else None for v in (found["yes"], found["no"]))  # type: ignore[return-value]
    raise ValueError(f"unknown scoring mode {scoring!r}")


def p_yes_from_logprobs(logprob_yes: float | None, logprob_no: float | None) -> float | None:
    """p'_yes = p_yes / (p_yes + p_no) with p = exp(logprob) (Garg et al., section 3; upstream ours_gpt.py).

    Computed as sigmoid(lp_yes - lp_no), the same ratio without underflow. A side missing from the top
    log-probabilities has p = 0, as upstream's -inf gave: only Yes listed -> 1.0, only No -> 0.0 (its true
    probability is below the smallest listed one). Neither listed -> None: a failure, not a score
    (upstream returned 0.0, which then lost or tied the pair silently).
    """
    if logprob_yes is None and logprob_no is None:
        return None
    if logprob_no is None:
        return 1.0
    if logprob_yes is None:
        return 0.0
    diff = logprob_yes - logprob_no
    if diff >= 0:
        return 1.0 / (1.0 + math.exp(-diff))
    return math.exp(diff) / (1.0 + math.exp(diff))


def parse_yes_no(response: dict, scoring: str) -> Answer:
    """Answer(p_yes) of a Yes/No judge response; failure "no_logprobs" or "no_yes_no" when it has none."""
    top = first_token_top_logprobs(response)
    if top is None:
        return Answer(None, "no_logprobs", {"logprob_yes": None, "logprob_no": None})
    logprob_yes, logprob_no = yes_no_logprobs(top, scoring)
    p_yes = p_yes_from_logprobs(logprob_yes, logprob_no)
    return Answer(
        p_yes, None if p_yes is not None else "no_yes_no", {"logprob_yes": logprob_yes, "logprob_no": logprob_no}
    )


# upstream binary_gpt.py (both benchmarks), re.IGNORECASE, first match.
PAIRWISE_PATTERN = re.compile(r"Better response:\s*(Response\s*[12])", re.IGNORECASE)
# chat mode drops markdown emphasis and brackets first: models often answer "**Better response:**
# Response 2" or copy the format line's "[Response 1]", which upstream's regex misses.
MARKDOWN_NOISE = re.compile(r"[*_`#\[\]]")


def pairwise_verdict(text: str, scoring: str) -> int | None:
    """1 or 2 for "Better response: Response 1|2" in a pairwise judge's text, None without a match."""
    if scoring == "chat":
        text = MARKDOWN_NOISE.sub("", text)
    elif scoring != "upstream":
        raise ValueError(f"unknown scoring mode {scoring!r}")
    match = PAIRWISE_PATTERN.search(text)
    if match is None:
        return None
    return 1 if "1" in match.group(1) else 2


def parse_generated(response: dict, extract: Callable[[str], Any]) -> Answer:
    """Answer(extract(text)) of a text judge, info {"judge_text"}; failure "no_text" or "unparsed"
    (``extract`` returned None)."""
    text = response_text(response)
    if text is None:
        return Answer(None, "no_text", {"judge_text": None})
    value = extract(text)
    return Answer(value, None if value is not None else "unparsed", {"judge_text": text})


def parse_pairwise(response: dict, scoring: str) -> Answer:
    return parse_generated(response, lambda text: pairwise_verdict(text, scoring))


def self_reward_content(scoring: str, upstream_prompt: str, instruction: str, response: str) -> str:
    """The 5-point judge's user message: ``upstream_prompt`` in upstream mode (Reward_Bench/self_reward_gpt.py
    used the bullet variant SELF_REWARD_PROMPT_BULLET, RM_Bench/self_reward_gpt.py the plain one), the plain
    SELF_REWARD_PROMPT in chat mode."""
    if scoring == "chat":
        return self_reward.render_upstream(instruction, response)
    if scoring != "upstream":
        raise ValueError(f"unknown scoring mode {scoring!r}")
    return self_reward.render_upstream(instruction, response, upstream_prompt)


def self_reward_score(text: str, scoring: str, regex_set: str) -> int | None:
    """The 1..5 score in a 5-point judge's answer, None when it has none.

    upstream: the script's regex set (ipo.judges.self_reward.UPSTREAM_REGEX_SETS), first pattern that matches, the
    number clamped to 1..5, as upstream parsed the API's answer; upstream's 0 for no match is None here.
    chat: the last "Score: N" with N in 1..5 (ipo.judges.self_reward.parse_score).
    """
    if scoring == "chat":
        return self_reward.parse_score(text)
    if scoring != "upstream":
        raise ValueError(f"unknown scoring mode {scoring!r}")
    score = self_reward.parse_score_upstream(text, regex_set)
    return None if score == self_reward.UPSTREAM_NO_MATCH else score


def parse_self_reward(response: dict, scoring: str, regex_set: str) -> Answer:
    """Answer(score) of a 5-point judge response; failure "unparsed" (no score) or "no_text"."""
    return parse_generated(response, lambda text: self_reward_score(text, scoring, regex_set))


def self_reward_request(scoring: str, content: str) -> dict:
    return generation_request(content, **SELF_REWARD_REQUEST[scoring])


def answer_fields(extra: dict, names: Sequence[str], keys: Sequence[str]) -> dict:
    """The record fields of ApiScorer's ``extra`` for slots called ``names`` (e.g. chosen, rejected):
    failure (kind or None), failed (slot names) and ``<key>_<name>`` for each Answer.info key in ``keys``
    (None where a slot has none, e.g. a failed request), so every record has the same columns."""
    fields = {"failure": extra["failure"], "failed": [names[slot] for slot in extra["failed"]]}
    for key in keys:
        fields.update({f"{key}_{name}": info.get(key) for name, info in zip(names, extra["info"])})
    return fields


# The orders a pairwise judge is asked in: (name, the verdict that picks the chosen response).
# Upstream only ever asked chosen_first.
PAIRWISE_ORDERS = (("chosen_first", 1), ("chosen_second", 2))


def pairwise_requests(
    scoring: str, template: str, instruction: str, chosen: str, rejected: str, orders=PAIRWISE_ORDERS
) -> list[dict]:
    """One pairwise request per order; ``template``: ipo.prompts.COMPARE_PROMPT_REWARDBENCH / _RMBENCH."""
    shown = {"chosen_first": (chosen, rejected), "chosen_second": (rejected, chosen)}
    return [
        pairwise_request(
            scoring, template.format(instruction=instruction, response1=shown[name][0], response2=shown[name][1])
        )
        for name, _ in orders
    ]


def pairwise_fields(verdicts: Sequence[int | None], extra: dict, orders=PAIRWISE_ORDERS) -> dict:
    """Prediction fields of one pair judged in ``orders`` (ApiScorer's values and extra).

    correct: every order picks the chosen response; tie: the orders disagree (position bias), so with two
    orders accuracy_ties_half is the mean of the two orders' accuracies, RewardBench's generative-judge
    convention. A failed pair is neither. Plus verdict_<order> (1, 2 or None) and answer_fields
    (failure, failed, judge_text_<order>).
    """
    names = [name for name, _ in orders]
    picks_chosen = [verdict == right for verdict, (_, right) in zip(verdicts, orders)]
    return {
        "correct": not extra["failure"] and all(picks_chosen),
        "tie": not extra["failure"] and len(set(picks_chosen)) > 1,
        **{f"verdict_{name}": verdict for name, verdict in zip(names, verdicts)},
        **answer_fields(extra, names, keys=("judge_text",)),
    }


def order_metrics(records: Sequence[dict], orders=PAIRWISE_ORDERS) -> dict:
    """Per order: pairs answered, accuracy over them and over all pairs; with two orders, their agreement
    (among pairs answered in both, the fraction where both pick the same response)."""
    out = {}
    for name, right in orders:
        answered = [r[f"verdict_{name}"] for r in records if r[f"verdict_{name}"] is not None]
        correct = sum(verdict == right for verdict in answered)
        out[name] = {
            "n_answered": len(answered),
            "accuracy": correct / len(answered) if answered else None,
            "accuracy_all_pairs": correct / len(records) if records else None,
        }
    metrics: dict[str, Any] = {"orders": out}
    if len(orders) == 2:
        (first, right_first), (second, right_second) = orders
        both = [r for r in records if r[f"verdict_{first}"] is not None and r[f"verdict_{second}"] is not None]
        same = sum((r[f"verdict_{first}"] == right_first) == (r[f"verdict_{second}"] == right_second) for r in both)
        metrics["agreement"] = same / len(both) if both else None
        metrics["n_answered_both_orders"] = len(both)
    return metrics


def orders_markdown(metrics: dict) -> str:
    """results.md section of order_metrics."""
    rows = [
        [name, o["n_answered"], pct(o["accuracy"]), pct(o["accuracy_all_pairs"])]
        for name, o in metrics["orders"].items()
    ]
    text = "## Orders\n\n" + markdown_table(["order", "answered", "accuracy % (answered)", "accuracy % (all)"], rows)
    if "agreement" in metrics:
        text += (
            f"\nThe two orders pick the same response in {pct(metrics['agreement'])}% of the "
            f"{metrics['n_answered_both_orders']} pairs answered in both "
            "(position bias lowers it).\n"
        )
    return text


# ---------------------------------------------------------------------------------------------------
# Scorer (the interface of ipo.judges.yes_no.YesNoScorer, so ipo.runs.score_into_log drives it)
# ---------------------------------------------------------------------------------------------------
class ApiScorer:
    """Judges examples through an ApiClient; ``.score(examples)`` yields lists of (example, values, extra).

    ``requests_for(example)`` gives the request bodies (without the model) of one example: one per judged
    slot (a response, or one order of a pair). ``parse(response)`` gives an Answer. ``values[i]`` is slot
    i's parsed value, None when it failed; ``extra`` = {"failure": the kind of the first failed slot or None,
    "failed": [failed slot indices], "kinds": [each slot's failure kind or None], "info": [Answer.info of
    each slot]}.
    """

    def __init__(
        self, client: ApiClient, requests_for: Callable[[Example], list[dict]], parse: Callable[[dict], Answer]
    ):
        self.client = client
        self.requests_for = requests_for
        self.parse = parse

    def probe(self, examples: Iterable[Example]) -> None:
        """Send the first request not already cached on its own, before the progress bar; any failure is
        fatal (one line). Checks key, base URL, model and that the answers can serve this judge at once,
        and spends nothing extra: the answer is cached and reused. Does nothing when all is cached."""
        for example in examples:
            for body in self.requests_for(example):
                if self.client.cached(body, self.readable) is None:
                    result = self.client.fetch(body, strict=True, accept=self.readable)
                    answer = self.parse(result.response)
                    if answer.failure in SYSTEMATIC_PARSE_FAILURES:
                        raise IpoError(
                            f"{self.client.base_url} (model {self.client.model!r}) "
                            f"{SYSTEMATIC_PARSE_FAILURES[answer.failure]}"
                        )
                    return

    def readable(self, response: dict) -> bool:
        """Whether ``response`` says something about the question (not UNREADABLE): only those are cached."""
        return self.parse(response).failure not in UNREADABLE

    def _answer(self, result: Result) -> Answer:
        if result.response is None:
            return Answer(None, result.failure, {"error": result.message})
        return self.parse(result.response)

    def score(self, examples: Sequence[Example]) -> Iterator[list[tuple[Example, list, dict]]]:
        bodies, owners = [], []
        answers: list[list[Answer | None]] = []
        for e_index, example in enumerate(examples):
            requests = self.requests_for(example)
            answers.append([None] * len(requests))
            for slot, body in enumerate(requests):
                bodies.append(body)
                owners.append((e_index, slot))
        remaining = [len(a) for a in answers]
        for batch in self.client.fetch_many(bodies, accept=self.readable):
            finished = []
            for index, result in batch:
                e_index, slot = owners[index]
                answers[e_index][slot] = self._answer(result)
                remaining[e_index] -= 1
                if remaining[e_index] == 0:
                    finished.append(e_index)
            if finished:
                yield [self._item(examples[e], answers[e]) for e in finished]

    @staticmethod
    def _item(example: Example, answers: list[Answer]) -> tuple[Example, list, dict]:
        failed = [slot for slot, a in enumerate(answers) if a.failure]
        extra = {
            "failure": answers[failed[0]].failure if failed else None,
            "failed": failed,
            "kinds": [a.failure for a in answers],
            "info": [a.info for a in answers],
        }
        return example, [a.value for a in answers], extra
