"""API judges: the paper's judges through any OpenAI-compatible chat-completions endpoint.

Upstream's ``*_gpt.py`` scripts (spec ipo_upstream.md §2 "GPT variant", §3.10-3.12, §3.14) asked a hosted
model through OpenRouter. Here one client serves every judge, on OpenAI (the default), OpenRouter, a
local vLLM server or any server that speaks ``POST /v1/chat/completions``:

  Yes/No     P(Yes) from the first generated token's ``top_logprobs`` (ours_gpt.py)
  pairwise   "Better response: Response 1|2" from the generated text (binary_gpt.py)
  5-point    the Self-Rewarding judge's "Score: N" from the generated text (self_reward_gpt.py)

on RewardBench (Preference_Comparison/Reward_Bench/*_gpt.py) and RM-Bench (Preference_Comparison/RM_Bench/
*_gpt.py; six responses per prompt, or chosen/rejected style pairs for the pairwise judge).

What the client guarantees (the fixes to upstream's bugs 1, 23, 24 in spec §6):
  * The key is read from an environment variable (OPENAI_API_KEY or ``--api_key_env NAME``), never from
    the command line or a saved file.
  * Our own retries, the only ones (the SDK's are off: ``max_retries=0``): exponential backoff with jitter,
    or the server's Retry-After, on 429, 408/409, 5xx, timeouts, dropped connections and non-JSON answers.
  * Errors that no retry can fix stop the run with one line: a refused key (401), a forbidden or unknown
    model (403/404), an exhausted quota. Before anything else, the first request not already cached is sent
    alone (``ApiScorer.probe``), so a wrong key, base URL or model id fails in seconds, and any failure of
    that first request is fatal too (with nothing answered, the endpoint is wrong or down).
  * After that, a request that still fails after all retries, or that the server rejects (400/413/422, e.g.
    a prompt over the model's context), is a *failure*: kept in the predictions with its kind, counted in
    metrics.json, never scored as a number, and tried again by the next run of the same command.
  * Every answered request is appended (and fsynced) to an on-disk cache, keyed by a hash of the base URL
    and the full request body (model, messages, parameters; never the key), so a re-run, a resume or an
    overlapping run never pays twice for the same request.
  * At most ``--max_concurrency`` requests are in flight; results come back in completion order and the
    scorer hands each example to the run's predictions as soon as all its requests are done.
"""

from __future__ import annotations

import argparse
import email.utils
import hashlib
import json
import logging
import math
import os
import random
import re
import threading
import time
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from ipo import IpoError
from ipo.data import Example
from ipo.prompts import REWARDBENCH_LAYOUT, RMBENCH_LAYOUT, chat_user_content, render_api_upstream, render_upstream
from ipo.runs import RecordLog, RunDir

logger = logging.getLogger("ipo")

SCORING_MODES = ("upstream", "chat")
DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_MODEL = "gpt-4o-mini"
DEFAULT_KEY_ENV = "OPENAI_API_KEY"
MAX_RETRY_DELAY = 60.0  # seconds; a longer Retry-After (e.g. a daily quota) falls back to our backoff

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
# upstream: Reward_Bench/self_reward_gpt.py's parameters (spec §3.12; the spec gives none for
# RM_Bench/self_reward_gpt.py, which is assumed to match); 200 tokens fit the ~100-word justification
# the prompt asks for. chat: the same, greedy.
SELF_REWARD_REQUEST = PAIRWISE_REQUEST

# Failure kinds of a request. Retried: the server or the network may do better next time.
RETRYABLE = frozenset({"rate_limited", "server_error", "timeout", "conflict", "connection", "bad_response"})
# Fatal at any point: no retry and no other request can succeed with this key, model and base URL.
FATAL = frozenset({"unauthorized", "forbidden", "not_found", "quota"})
# Answers that say the endpoint cannot serve this judge at all: fatal when the probe gets one.
SYSTEMATIC_PARSE_FAILURES = {
    "no_logprobs": "returned no log-probabilities; the Yes/No judge needs `logprobs` and `top_logprobs` "
                   "(on OpenRouter pick a model whose providers support them; vLLM returns them)",
    "no_text": "returned no message text",
}  # fmt: skip


# ---------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------
class _RejectKeyOnCommandLine(argparse.Action):
    """Upstream's --api_key / --openai_key: refused, because a key on the command line leaks."""

    def __call__(self, parser, namespace, values, option_string=None):
        parser.error(
            f"{option_string} is not accepted: a key on the command line leaks into shell history and `ps`. "
            f"Export it instead (export {DEFAULT_KEY_ENV}=...), or name the variable that holds it with "
            "--api_key_env"
        )


def add_api_args(parser: argparse.ArgumentParser, scoring_help: str, default_model: str = DEFAULT_MODEL) -> None:
    """The flags every API judge script shares: endpoint, key variable, robustness, cache, scoring, limit."""
    group = parser.add_argument_group("API endpoint (any OpenAI-compatible chat-completions server)")
    group.add_argument(
        "--model",
        default=default_model,
        help="model id as the server names it: gpt-4o-mini on OpenAI (cheap, returns log-probabilities); "
        "OpenRouter ids carry the vendor, e.g. openai/gpt-4o-mini or the paper's openai/chatgpt-4o-latest",
    )
    group.add_argument(
        "--base_url",
        default=DEFAULT_BASE_URL,
        help="the API's base URL: OpenAI by default; https://openrouter.ai/api/v1 for OpenRouter (the "
        "paper's); http://localhost:8000/v1 for a local vLLM server",
    )
    group.add_argument(
        "--api_key_env",
        default=DEFAULT_KEY_ENV,
        help="name of the environment variable holding the key (e.g. OPENROUTER_API_KEY); for a local "
        "server without authentication set it to any value, e.g. EMPTY",
    )
    for flag in ("--api_key", "--openai_key"):
        group.add_argument(
            flag, nargs="?", action=_RejectKeyOnCommandLine, default=None,
            help="upstream's key argument: NOT accepted (keys come from the environment, see --api_key_env)",
        )  # fmt: skip
    group.add_argument(
        "--max_concurrency",
        type=int,
        default=8,
        help="requests in flight at once; 8 keeps a tier-1 OpenAI account mostly under its rate limit "
        "(429s are retried anyway)",
    )
    group.add_argument(
        "--max_retries",
        type=int,
        default=5,
        help="retries per request after a 429, 5xx, timeout or dropped connection (backoff 1, 2, 4, 8, "
        "16 s covers a typical 30-second outage)",
    )
    group.add_argument(
        "--retry_base_delay",
        type=float,
        default=1.0,
        help="first backoff in seconds, doubled per retry up to 60 s, with jitter; a server's "
        "Retry-After takes precedence",
    )
    group.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        help="seconds per attempt before it counts as a timeout and is retried (a 200-token answer "
        "takes a few seconds; the SDK's default of 10 minutes would hide a stalled request)",
    )
    group.add_argument(
        "--cache_dir",
        default=None,
        help="folder of the response cache (one JSONL file per model); default <output_dir>/api_cache, "
        "shared by all runs there so that --overwrite, a new --run_name or a resume never pays twice",
    )
    group.add_argument(
        "--scoring", default="upstream", choices=list(SCORING_MODES), help=scoring_help,
    )  # fmt: skip
    group.add_argument(
        "--limit", type=int, default=None, help="judge at most N examples per subset (smoke runs; costs money)"
    )


def check_api_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Reject impossible values with argparse's one-line error (exit 2)."""
    for name in ("max_concurrency", "timeout", "limit"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            parser.error(f"--{name} must be positive, got {value}")
    for name in ("max_retries", "retry_base_delay"):
        if getattr(args, name) < 0:
            parser.error(f"--{name} must be >= 0, got {getattr(args, name)}")
    if not re.match(r"^https?://[^/\s]+", args.base_url):
        parser.error(f"--base_url must be an http(s) URL such as {DEFAULT_BASE_URL}, got {args.base_url!r}")
    if not args.api_key_env or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", args.api_key_env):
        parser.error(f"--api_key_env takes the NAME of an environment variable, got {args.api_key_env!r}")


def read_api_key(env_name: str = DEFAULT_KEY_ENV) -> str:
    """The key from the environment variable ``env_name``; one clear IpoError if it is unset or empty."""
    key = os.environ.get(env_name, "").strip()
    if not key:
        raise IpoError(
            f"no API key: the environment variable {env_name} is not set. Export it (export {env_name}=...; "
            "any value, e.g. EMPTY, for a local server without authentication) or name another variable "
            "with --api_key_env"
        )
    return key


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


def request_key(base_url: str, body: dict) -> str:
    """Cache key: sha256 of the base URL and the full request body (model included), canonical JSON.

    The base URL is part of it because the same model id on two servers (OpenAI and OpenRouter, or two
    local servers) may answer differently; the API key is not, since it does not change the answer.
    """
    canonical = json.dumps({"base_url": base_url.rstrip("/"), "request": body}, sort_keys=True,
                           ensure_ascii=False, separators=(",", ":"))  # fmt: skip
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


# ---------------------------------------------------------------------------------------------------
# Answers (pure functions on the chat-completions JSON)
# ---------------------------------------------------------------------------------------------------
@dataclass
class Answer:
    """One request's parsed outcome: ``value`` (p_yes, a verdict, a score) or a ``failure`` kind."""

    value: Any
    failure: str | None = None
    info: dict = field(default_factory=dict)  # what the prediction record keeps (log-probs, judge text)


def _first_choice(response: dict | None) -> dict | None:
    choices = response.get("choices") if isinstance(response, dict) else None
    return choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else None


def first_token_top_logprobs(response: dict) -> list[dict] | None:
    """``choices[0].logprobs.content[0].top_logprobs``: the first generated token's alternatives, or None."""
    choice = _first_choice(response)
    logprobs = (choice or {}).get("logprobs") or {}
    content = logprobs.get("content") if isinstance(logprobs, dict) else None
    if not content or not isinstance(content[0], dict):
        return None
    top = content[0].get("top_logprobs")
    return top if isinstance(top, list) else None


def response_text(response: dict) -> str | None:
    """``choices[0].message.content``, or None."""
    choice = _first_choice(response)
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
    """p'_yes = p_yes / (p_yes + p_no) with p = exp(logprob) (Garg et al. §3; upstream ours_gpt.py).

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
    return Answer(p_yes, None if p_yes is not None else "no_yes_no",
                  {"logprob_yes": logprob_yes, "logprob_no": logprob_no})  # fmt: skip


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
    from ipo.judges import self_reward

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
    from ipo.judges import self_reward

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


# The orders a pairwise judge is asked in: (name, the verdict that picks the chosen response).
# Upstream only ever asked chosen_first.
def answer_fields(extra: dict, names: Sequence[str], keys: Sequence[str]) -> dict:
    """The record fields of ApiScorer's ``extra`` for slots called ``names`` (e.g. chosen, rejected):
    failure (kind or None), failed (slot names) and ``<key>_<name>`` for each Answer.info key in ``keys``
    (None where a slot has none, e.g. a failed request), so every record has the same columns."""
    fields = {"failure": extra["failure"], "failed": [names[slot] for slot in extra["failed"]]}
    for key in keys:
        fields.update({f"{key}_{name}": info.get(key) for name, info in zip(names, extra["info"])})
    return fields


PAIRWISE_ORDERS = (("chosen_first", 1), ("chosen_second", 2))


def add_order_args(parser: argparse.ArgumentParser) -> None:
    """--both_orders / --no_both_orders of the pairwise judges (default: resolved by resolve_orders)."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--both_orders", action="store_true", default=None,
        help="ask each pair twice, chosen response first and second (twice the requests); default: off "
        "with --scoring upstream (upstream's chosen-first), on with --scoring chat",
    )  # fmt: skip
    group.add_argument("--no_both_orders", dest="both_orders", action="store_false", default=None,
                       help="ask chosen-first only, also with --scoring chat")  # fmt: skip


def resolve_orders(args: argparse.Namespace) -> tuple[tuple[str, int], ...]:
    """The orders to ask; sets ``args.both_orders`` when it was left to the mode (call it in parse_args,
    so that config.json and resume see the value used)."""
    if args.both_orders is None:
        args.both_orders = args.scoring == "chat"
    return PAIRWISE_ORDERS if args.both_orders else PAIRWISE_ORDERS[:1]


def pairwise_requests(scoring: str, template: str, instruction: str, chosen: str, rejected: str,
                      orders=PAIRWISE_ORDERS) -> list[dict]:  # fmt: skip
    """One pairwise request per order; ``template``: ipo.prompts.COMPARE_PROMPT_REWARDBENCH / _RMBENCH."""
    shown = {"chosen_first": (chosen, rejected), "chosen_second": (rejected, chosen)}
    return [pairwise_request(scoring, template.format(instruction=instruction, response1=shown[name][0],
                                                      response2=shown[name][1]))
            for name, _ in orders]  # fmt: skip


def pairwise_fields(verdicts: Sequence[int | None], extra: dict, orders=PAIRWISE_ORDERS) -> dict:
    """Prediction fields of one pair judged in ``orders`` (ApiScorer's values and extra).

    correct: every order picks the chosen response; tie: the orders disagree (position bias), so with two
    orders accuracy_ties_half is the mean of the two orders' accuracies, RewardBench's generative-judge
    convention. A failed pair is neither. Plus verdict_<order> (1, 2 or None) and answer_fields
    (failure, failed, judge_text_<order>).
    """
    names = [name for name, _ in orders]
    picks_chosen = [verdict == right for verdict, (_, right) in zip(verdicts, orders)]
    return {"correct": not extra["failure"] and all(picks_chosen),
            "tie": not extra["failure"] and len(set(picks_chosen)) > 1,
            **{f"verdict_{name}": verdict for name, verdict in zip(names, verdicts)},
            **answer_fields(extra, names, keys=("judge_text",))}  # fmt: skip


def order_metrics(records: Sequence[dict], orders=PAIRWISE_ORDERS) -> dict:
    """Per order: pairs answered, accuracy over them and over all pairs; with two orders, their agreement
    (among pairs answered in both, the fraction where both pick the same response)."""
    out = {}
    for name, right in orders:
        answered = [r[f"verdict_{name}"] for r in records if r[f"verdict_{name}"] is not None]
        correct = sum(verdict == right for verdict in answered)
        out[name] = {"n_answered": len(answered), "accuracy": correct / len(answered) if answered else None,
                     "accuracy_all_pairs": correct / len(records) if records else None}  # fmt: skip
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
    from ipo.report import markdown_table, pct

    rows = [[name, o["n_answered"], pct(o["accuracy"]), pct(o["accuracy_all_pairs"])]
            for name, o in metrics["orders"].items()]  # fmt: skip
    text = "## Orders\n\n" + markdown_table(["order", "answered", "accuracy % (answered)", "accuracy % (all)"], rows)
    if "agreement" in metrics:
        text += (f"\nThe two orders pick the same response in {pct(metrics['agreement'])}% of the "
                 f"{metrics['n_answered_both_orders']} pairs answered in both "
                 "(position bias lowers it).\n")  # fmt: skip
    return text


# ---------------------------------------------------------------------------------------------------
# Retries (pure)
# ---------------------------------------------------------------------------------------------------
def parse_retry_after(headers) -> float | None:
    """Seconds the server asks us to wait: ``retry-after-ms`` (OpenAI's), else ``retry-after`` (seconds or
    an HTTP date); None when absent or unreadable."""
    if headers is None:
        return None
    for name, divisor in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            return float(value) / divisor
        except ValueError:
            if name == "retry-after":
                parsed = email.utils.parsedate_tz(value)
                if parsed is not None:
                    return email.utils.mktime_tz(parsed) - time.time()
    return None


def retry_delay(attempt: int, base_delay: float, retry_after: float | None = None,
                rng: random.Random | None = None) -> float:  # fmt: skip
    """Seconds to wait before retry number ``attempt`` (1, 2, ...).

    The server's Retry-After when it gives one between 0 and MAX_RETRY_DELAY; otherwise exponential backoff
    ``base_delay * 2**(attempt-1)``, capped at MAX_RETRY_DELAY, with "equal jitter" (uniform in [d/2, d])
    so that concurrent workers that failed together do not retry in lock-step.
    """
    if retry_after is not None and 0 <= retry_after <= MAX_RETRY_DELAY:
        return retry_after
    delay = min(MAX_RETRY_DELAY, base_delay * 2 ** (attempt - 1))
    return delay * (0.5 + 0.5 * (rng or random).random())


def status_kind(status: int, code: str | None = None) -> str:
    """Failure kind of an HTTP error status (``code``: the error body's code, e.g. insufficient_quota)."""
    if status == 429:
        return "quota" if code == "insufficient_quota" else "rate_limited"
    return {401: "unauthorized", 403: "forbidden", 404: "not_found", 408: "timeout", 409: "conflict"}.get(
        status, "server_error" if status >= 500 else "rejected"
    )


# ---------------------------------------------------------------------------------------------------
# Cache
# ---------------------------------------------------------------------------------------------------
class ResponseCache:
    """Answered requests of one model, one JSON line each: {"key", "model", "response"}.

    ``<folder>/<model>.jsonl``, appended and fsynced per answer under a lock (workers share it); a line cut
    by a kill is dropped on load (ipo.runs.RecordLog). Created on the first answer, so a run that fails
    before any answer leaves nothing behind.
    """

    def __init__(self, folder: str | os.PathLike, model: str):
        self.path = Path(folder) / (re.sub(r"[^A-Za-z0-9._-]+", "_", model).strip("._") + ".jsonl")
        try:
            self._log = RecordLog(self.path, key="key")
        except IpoError as err:
            raise IpoError(f"the response cache is damaged ({err}); move {self.path} away to start a new one")
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._log)

    def get(self, key: str) -> dict | None:
        record = self._log.records.get(key)
        return record["response"] if record else None

    def put(self, key: str, model: str, response: dict) -> None:
        with self._lock:
            self._log.append([{"key": key, "model": model, "response": response}])


# ---------------------------------------------------------------------------------------------------
# Client
# ---------------------------------------------------------------------------------------------------
@dataclass
class Result:
    """The outcome of one request: the response JSON, or the failure kind after all retries."""

    response: dict | None
    failure: str | None = None
    message: str = ""
    cached: bool = False


class ApiClient:
    """Chat completions with our retries, a response cache, bounded concurrency and counters.

    ``stats``: requests_sent (HTTP attempts), answered, cache_hits, retries, errors_by_kind (attempts),
    gave_up_by_kind (requests that failed after all retries or were rejected), prompt_tokens,
    completion_tokens (as the server reported them for the requests sent now).
    """

    def __init__(self, *, base_url: str, model: str, api_key: str, timeout: float = 60.0, max_retries: int = 5,
                 max_concurrency: int = 8, retry_base_delay: float = 1.0, cache: ResponseCache | None = None,
                 key_env: str = DEFAULT_KEY_ENV):  # fmt: skip
        try:
            import openai
        except ImportError:
            raise IpoError("the API judges need the openai package: pip install 'openai>=3.54'")
        for name in ("openai", "httpx", "httpx2", "httpcore"):  # their per-request INFO lines flood the log
            logging.getLogger(name).setLevel(logging.WARNING)
        self._openai = openai
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.timeout = timeout
        self.max_retries = max_retries
        self.max_concurrency = max_concurrency
        self.retry_base_delay = retry_base_delay
        self.cache = cache
        self.key_env = key_env
        self._api_key = api_key
        self.client = openai.OpenAI(base_url=self.base_url, api_key=api_key, max_retries=0, timeout=timeout)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._rng = random.Random()
        self.stats: dict[str, Any] = {
            "requests_sent": 0, "answered": 0, "cache_hits": 0, "retries": 0,
            "errors_by_kind": Counter(), "gave_up_by_kind": Counter(), "prompt_tokens": 0, "completion_tokens": 0,
        }  # fmt: skip

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "ApiClient":
        """A client from add_api_args' flags; the key from the environment (one line if it is missing)."""
        cache_dir = args.cache_dir or os.path.join(args.output_dir, "api_cache")
        return cls(base_url=args.base_url, model=args.model, api_key=read_api_key(args.api_key_env),
                   timeout=args.timeout, max_retries=args.max_retries, max_concurrency=args.max_concurrency,
                   retry_base_delay=args.retry_base_delay, cache=ResponseCache(cache_dir, args.model),
                   key_env=args.api_key_env)  # fmt: skip

    def describe(self) -> dict:
        """Settings for config.json (never the key)."""
        return {"base_url": self.base_url, "model": self.model, "api_key_env": self.key_env,
                "cache": str(self.cache.path) if self.cache is not None else None}  # fmt: skip

    def usage(self) -> dict:
        """``stats`` as plain JSON."""
        with self._lock:
            return {k: dict(v) if isinstance(v, Counter) else v for k, v in self.stats.items()}

    # ------------------------------------------------------------------ one request
    def full_request(self, body: dict) -> tuple[str, dict]:
        full = {"model": self.model, **body}
        return request_key(self.base_url, full), full

    def cached(self, body: dict) -> dict | None:
        """The cached response of ``body``, without counting or sending anything."""
        return self.cache.get(self.full_request(body)[0]) if self.cache is not None else None

    def fetch(self, body: dict, strict: bool = False) -> Result:
        """One request: from the cache, or sent with retries. ``strict``: any failure raises IpoError."""
        key, full = self.full_request(body)
        response = self.cache.get(key) if self.cache is not None else None
        if response is not None:
            self._count("cache_hits")
            return Result(response, cached=True)
        return self._send(key, full, strict)

    def _count(self, name: str, kind: str | None = None, amount: int = 1) -> None:
        with self._lock:
            if kind is None:
                self.stats[name] += amount
            else:
                self.stats[name][kind] += amount

    def _clean(self, text: str) -> str:
        text = " ".join(str(text).split())
        if self._api_key and len(self._api_key) >= 4:
            text = text.replace(self._api_key, "***")
        return text[:300] + ("..." if len(text) > 300 else "")

    def _attempt(self, full: dict) -> tuple[dict | None, str | None, str, float | None]:
        """One HTTP attempt: (response JSON, failure kind, message, Retry-After seconds)."""
        openai = self._openai
        try:
            raw = self.client.chat.completions.with_raw_response.create(**full)
            response = raw.http_response.json()
        except openai.APIStatusError as err:
            body = err.body if isinstance(err.body, dict) else {}
            message = body.get("message") or err.message
            code = body.get("code")
            return None, status_kind(err.status_code, code if isinstance(code, str) else None), \
                f"{err.status_code}: {self._clean(message)}", parse_retry_after(err.response.headers)
        except openai.APITimeoutError:
            return None, "timeout", f"no answer within --timeout {self.timeout:g} s", None
        except openai.APIConnectionError as err:
            cause = err.__cause__ or err
            return None, "connection", self._clean(f"{type(cause).__name__}: {cause}"), None
        except openai.OpenAIError as err:  # anything else the SDK raises about an answer it cannot use
            return None, "bad_response", self._clean(f"{type(err).__name__}: {err}"), None
        except ValueError as err:  # a 200 whose body is not JSON (a web page at a wrong --base_url)
            return None, "bad_response", self._clean(f"the answer is not JSON ({err})"), None
        if not isinstance(response, dict) or _first_choice(response) is None:
            return None, "bad_response", self._clean(f"no `choices` in the answer: {str(response)[:200]}"), None
        return response, None, "", None

    def _send(self, key: str, full: dict, strict: bool) -> Result:
        attempt = 0
        while True:
            if self._stop.is_set():
                return Result(None, "cancelled", "stopped")
            self._count("requests_sent")
            response, kind, message, retry_after = self._attempt(full)
            if response is not None:
                if self.cache is not None:
                    self.cache.put(key, self.model, response)
                usage = response.get("usage") or {}
                with self._lock:
                    self.stats["answered"] += 1
                    for name in ("prompt_tokens", "completion_tokens"):
                        if isinstance(usage.get(name), int):
                            self.stats[name] += usage[name]
                return Result(response)
            self._count("errors_by_kind", kind)
            if kind in FATAL:
                raise IpoError(self._fatal_message(kind, message))
            if kind in RETRYABLE and attempt < self.max_retries:
                attempt += 1
                delay = retry_delay(attempt, self.retry_base_delay, retry_after, self._rng)
                logger.info("request failed (%s, %s); retry %d/%d in %.2g s", kind, message, attempt,
                            self.max_retries, delay)  # fmt: skip
                self._count("retries")
                if self._stop.wait(delay):
                    return Result(None, "cancelled", "stopped")
                continue
            if strict:
                raise IpoError(self._fatal_message(kind, message, attempts=attempt + 1))
            self._count("gave_up_by_kind", kind)
            logger.warning("request failed after %d attempt(s) (%s, %s); counted as a failure, the next run "
                           "of this command tries it again", attempt + 1, kind, message)  # fmt: skip
            return Result(None, kind, message)

    def _fatal_message(self, kind: str, message: str, attempts: int = 1) -> str:
        where = f"{self.base_url} (model {self.model!r})"
        return {
            "unauthorized": f"{where} refused the API key from ${self.key_env} ({message}); check the key, or "
                            "use --api_key_env to pick the variable that holds this provider's key",
            "forbidden": f"{where} denied access ({message}); the key may lack access to this model",
            "not_found": f"{where}: no such model or endpoint ({message}); check --model (OpenRouter ids look "
                         "like openai/gpt-4o-mini) and --base_url (it usually ends in /v1)",
            "quota": f"{where}: the account's quota is exhausted ({message}); check billing, then re-run",
            "connection": f"cannot reach {self.base_url} after {attempts} attempt(s) ({message}); check "
                          "--base_url and that the server is running",
            "timeout": f"{where} did not answer in {attempts} attempt(s) of --timeout {self.timeout:g} s",
            "rejected": f"{where} rejected the first request ({message}); check --model and that the model "
                        "accepts these parameters",
            "bad_response": f"{where} did not answer with chat-completions JSON in {attempts} attempt(s) "
                            f"({message}); check --base_url (it usually ends in /v1)",
        }.get(kind, f"{where} failed the first request in {attempts} attempt(s) ({kind}, {message}); "
                    "nothing was answered, try again later")  # fmt: skip

    # ------------------------------------------------------------------ many requests
    def fetch_many(self, bodies: Sequence[dict]) -> Iterator[list[tuple[int, Result]]]:
        """Every body, cached ones first (in one batch, nothing sent), then the rest at most
        ``max_concurrency`` at a time; yields lists of (index into ``bodies``, Result) as they complete.

        Identical bodies are sent once. A fatal error stops everything and propagates as IpoError; the
        answers that arrived before it are in the cache.
        """
        ready: list[tuple[int, Result]] = []
        waiting: dict[str, list[int]] = {}
        full_requests: dict[str, dict] = {}
        for index, body in enumerate(bodies):
            key, full = self.full_request(body)
            response = self.cache.get(key) if self.cache is not None else None
            if response is not None:
                self._count("cache_hits")
                ready.append((index, Result(response, cached=True)))
            else:
                waiting.setdefault(key, []).append(index)
                full_requests[key] = full
        if ready:
            yield ready
        if not waiting:
            return
        queue = iter(waiting.items())
        in_flight: dict = {}
        pool = ThreadPoolExecutor(max_workers=self.max_concurrency, thread_name_prefix="ipo-api")
        self._stop.clear()

        def top_up():  # keep the workers busy, with a little queued, but not the whole dataset submitted
            while len(in_flight) < 2 * self.max_concurrency:
                item = next(queue, None)
                if item is None:
                    return
                key, indices = item
                in_flight[pool.submit(self._send, key, full_requests[key], False)] = indices

        try:
            top_up()
            while in_flight:
                done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                batch = []
                for future in done:
                    indices = in_flight.pop(future)
                    result = future.result()  # re-raises a fatal IpoError from the worker
                    batch.extend((index, result) for index in indices)
                top_up()
                yield batch
        finally:
            self._stop.set()  # no new attempts or retries; requests already on the wire finish and are cached
            pool.shutdown(wait=True, cancel_futures=True)
            self._stop.clear()


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

    def __init__(self, client: ApiClient, requests_for: Callable[[Example], list[dict]],
                 parse: Callable[[dict], Answer]):  # fmt: skip
        self.client = client
        self.requests_for = requests_for
        self.parse = parse

    def probe(self, examples: Iterable[Example]) -> None:
        """Send the first request not already cached on its own, before the progress bar; any failure is
        fatal (one line). Checks key, base URL, model and that the answers can serve this judge at once,
        and spends nothing extra: the answer is cached and reused. Does nothing when all is cached."""
        for example in examples:
            for body in self.requests_for(example):
                if self.client.cached(body) is None:
                    result = self.client.fetch(body, strict=True)
                    answer = self.parse(result.response)
                    if answer.failure in SYSTEMATIC_PARSE_FAILURES:
                        raise IpoError(f"{self.client.base_url} (model {self.client.model!r}) "
                                       f"{SYSTEMATIC_PARSE_FAILURES[answer.failure]}")  # fmt: skip
                    return

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
        for batch in self.client.fetch_many(bodies):
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
        extra = {"failure": answers[failed[0]].failure if failed else None, "failed": failed,
                 "kinds": [a.failure for a in answers], "info": [a.info for a in answers]}  # fmt: skip
        return example, [a.value for a in answers], extra
