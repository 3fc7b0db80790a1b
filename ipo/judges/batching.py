"""Tokenise, truncate, pad and batch: the helpers every local judge shares (and the sampler borrows).

The Yes/No judge (ipo.judges.yes_no), the 5-point judge (ipo.judges.self_reward) and the reward-model
scorer (ipo.judges.reward_model) all read a (prompt, response) pair through a wrapper, cut it to a token
budget and run it in length-sorted, padded batches; none of that depends on what the judge computes, so
it lives here once. Pure functions and small dataclasses; torch is imported only where tensors are built.

Encoding follows two rules, one per prompt format:
  upstream  ``encode_right_truncated``: the tokenizer's own special tokens and right truncation, exactly
            upstream's ``tokenizer.encode(text, max_length=N, truncation=True)``.
  chat      ``fit_chat_prompt``: the rendered chat prompt, cut in the user's text only (the response's
            tail first, then the question's start), never in the judge instruction or the chat markup.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ipo import IpoError
from ipo.prompts import PROMPT_FORMATS

logger = logging.getLogger("ipo")

# Batching defaults (also the CLI's): many short sequences per pass amortise the per-pass weight read
# and the judge question; the token budget, not the row count, bounds long inputs and memory. On a CPU
# small budgets win (less padding, cheaper masked attention; measured with benchmarks/bench_scoring.py:
# long inputs 1.27x the upstream loop at 2048 tokens, 1.20x at 8192); a GPU wants large passes to keep
# its matmuls busy (tens of thousands of tokens per pass; not measured here).
DEFAULT_BATCH_SIZE = 64
DEFAULT_MAX_BATCH_TOKENS = {"cpu": 2048, "accelerator": 16384}


def default_max_batch_tokens(device) -> int:
    """The token budget per forward pass for ``device`` (a torch.device or its name)."""
    return DEFAULT_MAX_BATCH_TOKENS["cpu" if str(device).startswith("cpu") else "accelerator"]


# ---------------------------------------------------------------------------------------------------
# Batching helpers (pure)
# ---------------------------------------------------------------------------------------------------
def plan_batches(group_lengths: Sequence[Sequence[int]], batch_size: int, max_batch_tokens: int) -> list[list[int]]:
    """Group indices into batches, longest first, so that padding is small and memory flat.

    A group (the responses of one prompt) is never split. A batch closes before it would hold more than
    ``batch_size`` sequences or ``max_batch_tokens`` padded tokens; a single group larger than either
    limit still forms its own batch.
    """
    order = sorted(range(len(group_lengths)), key=lambda g: (-max(group_lengths[g], default=0), g))
    batches: list[list[int]] = []
    current: list[int] = []
    rows = longest = 0
    for g in order:
        g_rows, g_longest = len(group_lengths[g]), max(group_lengths[g], default=0)
        new_rows, new_longest = rows + g_rows, max(longest, g_longest)
        if current and (new_rows > batch_size or new_rows * new_longest > max_batch_tokens):
            batches.append(current)
            current, new_rows, new_longest = [], g_rows, g_longest
        current.append(g)
        rows, longest = new_rows, new_longest
    if current:
        batches.append(current)
    return batches


def common_prefix_length(sequences: Sequence[Sequence[int]]) -> int:
    """Length of the longest shared token prefix, capped so every sequence keeps at least one token."""
    if not sequences:
        return 0
    limit = min(len(s) for s in sequences) - 1
    n = 0
    first = sequences[0]
    while n < limit and all(s[n] == first[n] for s in sequences[1:]):
        n += 1
    return n


def pad_sequences(sequences: Sequence[Sequence[int]], pad_id: int, side: str = "left"):
    """(input_ids, attention_mask), both (B, L) long, padded on ``side`` ("left" or "right")."""
    import torch

    longest = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), longest), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), longest), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if seq:
            columns = slice(longest - len(seq), longest) if side == "left" else slice(0, len(seq))
            input_ids[row, columns] = torch.tensor(seq, dtype=torch.long)
            attention_mask[row, columns] = 1
    return input_ids, attention_mask


def left_pad(sequences: Sequence[Sequence[int]], pad_id: int):
    """(input_ids, attention_mask), both (B, L) long, with padding on the left."""
    return pad_sequences(sequences, pad_id, "left")


@contextlib.contextmanager
def _truncation_side(tokenizer, side: str):
    old = tokenizer.truncation_side
    tokenizer.truncation_side = side
    try:
        yield
    finally:
        tokenizer.truncation_side = old


@dataclass
class EncodedPrompt:
    ids: list[int]
    truncated: bool


# ---------------------------------------------------------------------------------------------------
# Encoding and truncation (shared by every judge that reads a prompt: Yes/No, self-reward, reward model)
# ---------------------------------------------------------------------------------------------------
def check_prompt_format(value: str, what: str = "scoring mode") -> None:
    """One IpoError for a prompt format outside ipo.prompts.PROMPT_FORMATS; ``what`` names it in the message."""
    if value not in PROMPT_FORMATS:
        raise IpoError(f"unknown {what} {value!r}; choose from {', '.join(PROMPT_FORMATS)}")


def require_chat_template(tokenizer, flag: str = "--scoring", whose: str = "this tokenizer") -> None:
    """One IpoError when the chat prompt format is asked of a tokenizer without a chat template."""
    if not getattr(tokenizer, "chat_template", None):
        raise IpoError(f"{whose} has no chat template, so {flag} chat cannot be used; use {flag} upstream")


def encode_right_truncated(tokenizer, text: str, max_length: int) -> EncodedPrompt:
    """Upstream's ``tokenizer.encode(text, max_length=N, truncation=True)``: special tokens added as the
    tokenizer does, and right truncation, which cuts the end of the text (whatever comes last)."""
    ids = tokenizer(text).input_ids
    if len(ids) <= max_length:
        return EncodedPrompt(ids, False)
    with _truncation_side(tokenizer, "right"):
        ids = tokenizer(text, max_length=max_length, truncation=True).input_ids
    return EncodedPrompt(ids, True)


QUESTION_MARK, RESPONSE_MARK = "\x00QUESTION\x00", "\x00RESPONSE\x00"


def split_chat_template(tokenizer, user_content: str) -> tuple[str, str, str]:
    """The chat template rendered once around placeholders, so that prompts are filled by concatenation.

    ``user_content`` is one user turn holding QUESTION_MARK and then RESPONSE_MARK; it is rendered with
    the generation prompt. Returns (before, between, after) such that before + question + between +
    response + after is exactly the rendered prompt of that question and response.
    """
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": user_content}], tokenize=False, add_generation_prompt=True
    )
    if text.count(QUESTION_MARK) != 1 or text.count(RESPONSE_MARK) != 1:
        raise IpoError("the chat template does not copy the user message verbatim; use --scoring upstream")
    before, rest = text.split(QUESTION_MARK)
    between, after = rest.split(RESPONSE_MARK)
    return before, between, after


def chat_ids(tokenizer, text: str) -> list[int]:
    """Token ids of chat-rendered text; the template already wrote BOS (if the model uses one) as text."""
    return tokenizer(text, add_special_tokens=False).input_ids


def cut_text(tokenizer, text: str, keep_tokens: int, keep: str) -> str:
    """The first (keep="start") or last (keep="end") ``keep_tokens`` tokens of ``text``, as text."""
    if keep_tokens <= 0:
        return ""
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=tokenizer.is_fast)
    ids = encoding.input_ids
    if keep_tokens >= len(ids):
        return text
    if tokenizer.is_fast:
        offsets = encoding["offset_mapping"]
        if keep == "start":
            return text[: offsets[keep_tokens - 1][1]]
        return text[offsets[len(ids) - keep_tokens][0] :]
    kept = ids[:keep_tokens] if keep == "start" else ids[-keep_tokens:]
    return tokenizer.decode(kept)


def fit_chat_prompt(
    tokenizer, render: Callable[[str, str], str], instruction: str, response: str, max_length: int
) -> EncodedPrompt:
    """Token ids of ``render(instruction, response)`` within ``max_length``, cutting only the user's text.

    The response's tail goes first, then the instruction's start; everything ``render`` adds around them
    (a judge instruction, the chat markup, a generation prompt) always stays. Boundaries can merge
    tokens, so the cut is re-checked and shaved until it fits.
    """
    ids = chat_ids(tokenizer, render(instruction, response))
    if len(ids) <= max_length:
        return EncodedPrompt(ids, False)
    for _ in range(8):
        excess = len(ids) - max_length
        if excess <= 0:
            break
        response_tokens = len(chat_ids(tokenizer, response))
        if response_tokens > 0:
            response = cut_text(tokenizer, response, response_tokens - excess, keep="start")
        else:
            question_tokens = len(chat_ids(tokenizer, instruction))
            if question_tokens == 0:
                break
            instruction = cut_text(tokenizer, instruction, question_tokens - excess, keep="end")
        ids = chat_ids(tokenizer, render(instruction, response))
    if len(ids) > max_length:
        logger.warning(
            "the prompt without the user's text is %d tokens, over --max_length %d; kept whole", len(ids), max_length
        )
    return EncodedPrompt(ids, True)


# ---------------------------------------------------------------------------------------------------
# Shared prefixes (pure): the prefix tree the Yes/No judge runs once per batch
# ---------------------------------------------------------------------------------------------------
def prefix_levels(groups: Sequence[Sequence[Sequence[int]]]) -> list[tuple[list[list[int]], list[int] | None]]:
    """The sequences of a batch as a prefix tree of up to three levels, each a list of (segments, owner).

    Level 1 is the token prefix shared by the whole batch (one row: typically the judge question, when
    a batch holds one subset); level 2, what each group (one prompt's responses) shares beyond it
    (the user's prompt); level 3, each sequence's remaining tokens (the response and the closing
    wrapper). ``owner[i]`` is the row of the level above that row i continues; a level with nothing to
    run is left out, and the owners are composed across it. Every sequence keeps at least one token
    in the last level, where its logits are read. A segment may be empty (a fully padded row).
    """
    sequences = [list(seq) for group in groups for seq in group]
    if len(sequences) == 1:
        return [(sequences, None)]
    batch_prefix = common_prefix_length(sequences)
    # A group of one runs all but its last token in the group level, so it pads that level, not the last.
    group_prefix = [max(common_prefix_length(group), batch_prefix) for group in groups]
    group_of = [g for g, group in enumerate(groups) for _ in group]
    levels: list[tuple[list[list[int]], list[int] | None]] = []
    if batch_prefix > 0:
        levels.append(([sequences[0][:batch_prefix]], None))
    if any(n > batch_prefix for n in group_prefix):
        levels.append(
            (
                [list(group[0][batch_prefix:n]) for group, n in zip(groups, group_prefix)],
                [0] * len(groups) if levels else None,
            )
        )
        owner = group_of
    else:
        owner = [0] * len(sequences) if levels else None
    levels.append(([seq[group_prefix[g] :] for seq, g in zip(sequences, group_of)], owner))
    return levels


def levels_cost(levels) -> int:
    """Padded tokens the forward passes of a prefix tree run (rows x longest segment, summed over levels)."""
    return sum(len(segments) * max(len(s) for s in segments) for segments, _ in levels)


def levels_cache_positions(levels) -> int:
    """Key/value-cache positions a prefix tree holds at its peak: while the last level runs, each of its rows
    holds every level's padded width (the levels above repeated per row, and its own), so rows x the sum of
    the widths. The cache only grows level by level (rows never shrink), so this is the maximum; a plain
    single level runs without a cache but holds its rows x longest tokens, which is the same formula.
    """
    return len(levels[-1][0]) * sum(max(len(s) for s in segments) for segments, _ in levels)
