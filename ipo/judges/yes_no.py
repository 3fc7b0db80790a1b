"""The paper's primitive: an LLM as a preference classifier through P(Yes) at its next token.

Garg et al. (arXiv 2502.16182, section 3): the judge is asked a yes/no question about a (prompt, response)
pair and the preference score is the normalised next-token probability

    p'_yes = p_yes / (p_yes + p_no)

read at the last prompt position; no text is generated.

Two scoring modes (``--prompt_format``, stored as ``scoring``):
  upstream  the paper's raw-text wrappers (ipo.prompts.render_upstream), no chat template, BOS as the
            tokenizer adds it, right truncation at ``max_length`` tokens, and the Yes/No ids of
            ``encode(" Yes")`` / ``encode(" No")`` with all their probabilities summed (a multi-piece
            encoding sums every piece, exactly as upstream did).
  chat      the tokenizer's chat template with a generation prompt, every single-token variant of
            Yes/No (Yes, " Yes", yes, ...) de-duplicated, and truncation that cuts the response (then the
            question's start) but never the judge instruction.

Speed, without changing a score beyond float noise: examples are tokenised once, sorted by length and
left-padded into batches under a token budget (ipo.judges.batching); the model returns logits for the last position only
(``logits_to_keep=1``), and the normalisation uses only the Yes/No logits in float32. When the
responses of one prompt share a token prefix (the judge question and the user's prompt), the prefix is
run once and its key/value cache is reused for each response; likewise the judge question, which every
prompt of a batch shares (batches are formed per question).
"""

from __future__ import annotations

import functools
import inspect
import logging
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

from ipo import IpoError
from ipo.data import Example
from ipo.judges.batching import (
    DEFAULT_BATCH_SIZE,
    QUESTION_MARK,
    RESPONSE_MARK,
    EncodedPrompt,
    check_prompt_format,
    default_max_batch_tokens,
    encode_right_truncated,
    fit_chat_prompt,
    left_pad,
    levels_cost,
    plan_batches,
    prefix_levels,
    require_chat_template,
    split_chat_template,
)
from ipo.modeling import ModelSpec, load_model_and_tokenizer
from ipo.prompts import chat_user_content, render_upstream

logger = logging.getLogger("ipo")

YES_VARIANTS = ("Yes", " Yes", "yes", " yes", "YES", " YES")
NO_VARIANTS = ("No", " No", "no", " no", "NO", " NO")

# Run a batch through the shared-prefix path only when its padded token count drops by at least this
# fraction: each extra forward pass re-reads the weights and the cache rows are copied, which costs
# about as much as a few dozen tokens (measured on CPU with SmolLM2-135M: 38 ms per pass against
# 2 ms per token), so only a saving below a few percent of a batch is a loss.
PREFIX_SHARING_MIN_SAVING = 0.05

# Groups are scored a window of about this many forward passes at a time: inside a window sequences may
# be re-batched by length across prompts (see YesNoJudge._p_yes_window), and each finished window is
# one resume checkpoint (predictions are appended per window).
WINDOW_PASSES = 4


# ---------------------------------------------------------------------------------------------------
# Token ids and the score itself
# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class YesNoTokens:
    yes_ids: tuple[int, ...]
    no_ids: tuple[int, ...]
    yes_tokens: tuple[str, ...]  # vocabulary entries, e.g. 'ĠYes'
    no_tokens: tuple[str, ...]
    yes_strings: tuple[str, ...]  # decoded text, e.g. ' Yes'
    no_strings: tuple[str, ...]

    def as_dict(self) -> dict:
        return {key: list(value) for key, value in vars(self).items()}


def resolve_yes_no_tokens(tokenizer, scoring: str) -> YesNoTokens:
    """The token ids whose probabilities make up p_yes and p_no.

    upstream: ``encode(" Yes", add_special_tokens=False)`` as is. On legacy SentencePiece tokenizers this
    is ['▁', '▁Yes'], and the lone '▁' then counts towards both p_yes and p_no, as it did upstream.
    chat: every variant in YES_VARIANTS / NO_VARIANTS that is a single token, de-duplicated.
    """
    if scoring == "upstream":
        yes_ids = tuple(tokenizer.encode(" Yes", add_special_tokens=False))
        no_ids = tuple(tokenizer.encode(" No", add_special_tokens=False))
        if not yes_ids or not no_ids:
            raise IpoError("the tokenizer encodes ' Yes' or ' No' to nothing")
        if len(yes_ids) > 1 or len(no_ids) > 1:
            logger.warning("' Yes' -> %s and ' No' -> %s: several pieces, all summed as upstream did",
                           list(yes_ids), list(no_ids))  # fmt: skip
    elif scoring == "chat":
        def single_ids(variants):
            ids = []
            for variant in variants:
                encoded = tokenizer.encode(variant, add_special_tokens=False)
                if len(encoded) == 1 and encoded[0] not in ids:
                    ids.append(encoded[0])
            return tuple(ids)

        yes_ids, no_ids = single_ids(YES_VARIANTS), single_ids(NO_VARIANTS)
        if not yes_ids or not no_ids:
            raise IpoError(
                "chat scoring needs Yes and No to be single tokens, but this tokenizer splits every "
                "variant; use --scoring upstream"
            )
        if set(yes_ids) & set(no_ids):
            raise IpoError(f"Yes ids {yes_ids} and No ids {no_ids} overlap; cannot score in chat mode")
    else:
        raise ValueError(f"unknown scoring mode {scoring!r}")
    return YesNoTokens(
        yes_ids=yes_ids,
        no_ids=no_ids,
        yes_tokens=tuple(tokenizer.convert_ids_to_tokens(list(yes_ids))),
        no_tokens=tuple(tokenizer.convert_ids_to_tokens(list(no_ids))),
        yes_strings=tuple(tokenizer.decode([i]) for i in yes_ids),
        no_strings=tuple(tokenizer.decode([i]) for i in no_ids),
    )


def p_yes_from_logits(logits, yes_ids, no_ids):
    """Normalised P(Yes) from next-token logits (Garg et al., section 3: p'_yes = p_yes / (p_yes + p_no)).

    Args:
        logits: (B, V) next-token logits, any float dtype.
        yes_ids, no_ids: (K,) / (M,) long tensors of token ids; repeated ids count repeatedly, as
            upstream's Python sum over its id lists did.
    Returns:
        (B,) float32. With p_t = softmax(z)_t the full-vocabulary normaliser cancels, so
        p'_yes = exp(LSE(z_yes)) / (exp(LSE(z_yes)) + exp(LSE(z_no))) = sigmoid(LSE(z_yes) - LSE(z_no)),
        computed in float32 from the Yes/No logits alone: no underflow, no full softmax.
    """
    import torch

    logits = logits.float()
    lse_yes = torch.logsumexp(logits.index_select(-1, yes_ids), dim=-1)
    lse_no = torch.logsumexp(logits.index_select(-1, no_ids), dim=-1)
    return torch.sigmoid(lse_yes - lse_no)


def yes_no_mass(logits, yes_ids, no_ids):
    """Unnormalised p_yes + p_no, shape (B,) float32: how much of the next-token mass is an answer at all.

    A small mass means the prompt does not make the model answer Yes/No (wrong template, truncation).
    """
    import torch

    log_probs = torch.log_softmax(logits.float(), dim=-1)
    both = torch.cat([log_probs.index_select(-1, yes_ids), log_probs.index_select(-1, no_ids)], dim=-1)
    return torch.logsumexp(both, dim=-1).exp()


# ---------------------------------------------------------------------------------------------------
# The judge
# ---------------------------------------------------------------------------------------------------
class YesNoJudge:
    """Batched P(Yes) scoring with one model; see the module docstring for the two modes."""

    def __init__(
        self,
        model,
        tokenizer,
        scoring: str = "upstream",
        max_length: int = 1024,
        batch_size: int = DEFAULT_BATCH_SIZE,
        max_batch_tokens: int | None = None,
        prefix_sharing: bool = True,
    ):
        import torch

        check_prompt_format(scoring)
        if scoring == "chat":
            require_chat_template(tokenizer)
        if max_length < 8:
            raise IpoError(f"--max_length {max_length} is too small for a judge prompt")
        self.model = model
        self.tokenizer = tokenizer
        self.scoring = scoring
        self.max_length = max_length
        self.batch_size = batch_size
        self.max_batch_tokens = max_batch_tokens or default_max_batch_tokens(model.device)
        self.prefix_sharing = prefix_sharing
        self.tokens = resolve_yes_no_tokens(tokenizer, scoring)
        self.device = model.device
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self._yes = torch.tensor(self.tokens.yes_ids, dtype=torch.long, device=self.device)
        self._no = torch.tensor(self.tokens.no_ids, dtype=torch.long, device=self.device)
        self._keep_last_only = "logits_to_keep" in inspect.signature(model.forward).parameters
        self._chat_pieces: dict[str, tuple[str, str, str]] = {}
        self.stats = {"sequences": 0, "forward_tokens": 0, "shared_prefix_batches": 0, "regrouped_windows": 0}

    # ------------------------------------------------------------------ encoding
    def encode(self, layout: str, template: str, instruction: str, response: str) -> EncodedPrompt:
        """Token ids of one judge prompt (layout: ipo.prompts.REWARDBENCH_LAYOUT or RMBENCH_LAYOUT)."""
        if self.scoring == "upstream":
            return self._encode_upstream(layout, template, instruction, response)
        return self._encode_chat(template, instruction, response)

    def _encode_upstream(self, layout, template, instruction, response) -> EncodedPrompt:
        # Upstream: tokenizer.encode(prompt, max_length=1024, truncation=True) with the default
        # right truncation, which cuts the end of the prompt (the response, or RM-Bench's question).
        return encode_right_truncated(self.tokenizer, render_upstream(layout, template, instruction, response),
                                      self.max_length)  # fmt: skip

    def _chat_text(self, template: str, instruction: str, response: str) -> str:
        # The chat template is rendered once per judge question, with placeholders, and then filled
        # by plain string concatenation; this is identical to rendering each prompt.
        if template not in self._chat_pieces:
            content = chat_user_content(template, QUESTION_MARK, RESPONSE_MARK)
            self._chat_pieces[template] = split_chat_template(self.tokenizer, content)
        before, middle, after = self._chat_pieces[template]
        return before + instruction + middle + response + after

    def _encode_chat(self, template, instruction, response) -> EncodedPrompt:
        # Cut the response's tail first, then the question's start; the judge instruction and the
        # chat markup always stay.
        render = functools.partial(self._chat_text, template)
        return fit_chat_prompt(self.tokenizer, render, instruction, response, self.max_length)

    # ------------------------------------------------------------------ scoring
    def score_groups(self, groups: Sequence[Sequence[Sequence[int]]]) -> Iterator[tuple[list[int], list[list[float]]]]:
        """Score token-id sequences, grouped by prompt; yields (group indices, p_yes per group) per window.

        Groups are taken longest first, a window of about WINDOW_PASSES forward passes at a time; every
        yielded score equals what the group's sequences would get one at a time (within float32 noise).
        """
        lengths = [[len(seq) for seq in group] for group in groups]
        windows = plan_batches(lengths, self.batch_size * WINDOW_PASSES, self.max_batch_tokens * WINDOW_PASSES)
        for window in windows:
            members = [groups[g] for g in window]
            flat = self._p_yes_window(members)
            out, start = [], 0
            for group in members:
                out.append(flat[start:start + len(group)])
                start += len(group)
            yield window, out

    def _p_yes_window(self, groups: Sequence[Sequence[Sequence[int]]]) -> list[float]:
        """p'_yes of every sequence of a window of groups (flattened in group order), by the cheaper plan.

        Plan A keeps each group in one pass and runs shared prefixes once (prefix_levels); plan B forgets
        the groups and batches the window's sequences by length, which wins when a prompt's responses
        differ a lot in length (RM-Bench: concise vs detailed) and the shared prefix is short. The cost
        of a plan is the padded tokens its passes run.
        """
        import torch

        sequences = [list(seq) for group in groups for seq in group]
        if any(len(seq) == 0 for seq in sequences):
            raise IpoError("cannot score an empty prompt")
        self.stats["sequences"] += len(sequences)
        group_batches = plan_batches([[len(s) for s in g] for g in groups], self.batch_size, self.max_batch_tokens)
        starts = [0]
        for group in groups:
            starts.append(starts[-1] + len(group))
        tree_plans = [self._plan_levels([groups[g] for g in batch]) for batch in group_batches]
        tree_cost = sum(cost for _, cost in tree_plans)
        sequence_batches = plan_batches([[len(s)] for s in sequences], self.batch_size, self.max_batch_tokens)
        regrouped_cost = sum(len(b) * max(len(sequences[i]) for i in b) for b in sequence_batches)
        scores: list[float] = [0.0] * len(sequences)
        with torch.inference_mode():
            if regrouped_cost < tree_cost:
                self.stats["regrouped_windows"] += 1
                self.stats["forward_tokens"] += regrouped_cost
                for batch in sequence_batches:
                    logits = self._forward_levels([([sequences[i] for i in batch], None)])
                    for i, p in zip(batch, p_yes_from_logits(logits, self._yes, self._no).tolist()):
                        scores[i] = p
            else:
                self.stats["forward_tokens"] += tree_cost
                self.stats["shared_prefix_batches"] += sum(len(levels) > 1 for levels, _ in tree_plans)
                for batch, (levels, _) in zip(group_batches, tree_plans):
                    rows = [i for g in batch for i in range(starts[g], starts[g + 1])]
                    logits = self._forward_levels(levels)
                    for i, p in zip(rows, p_yes_from_logits(logits, self._yes, self._no).tolist()):
                        scores[i] = p
        return scores

    def _plan_levels(self, groups) -> tuple[list, int]:
        """(prefix tree or a single plain level, its padded-token cost) for one pass's groups."""
        sequences = [list(seq) for group in groups for seq in group]
        plain = [(sequences, None)]
        plain_cost = levels_cost(plain)
        if self.prefix_sharing:
            levels = prefix_levels(groups)
            cost = levels_cost(levels)
            if len(levels) > 1 and cost <= (1 - PREFIX_SHARING_MIN_SAVING) * plain_cost:
                return levels, cost
        return plain, plain_cost

    def _forward_levels(self, levels):
        """Last-position logits (B, V) of the sequences spelled out by a prefix tree (see prefix_levels).

        Each level is one forward pass over its left-padded segments, on top of the key/value cache of
        the level above, whose rows are first repeated for their children (``owner``). The attention
        mask is the concatenation of every level's mask, so the padding between segments is masked out,
        and positions count only real tokens, so each row sees exactly its own sequence.
        """
        import torch

        cache = mask_above = None
        for segments, owner in levels:
            input_ids, segment_mask = left_pad(segments, self.pad_id)
            if owner is None:
                attention_mask = segment_mask
            else:
                owner = torch.tensor(owner, dtype=torch.long)
                cache.reorder_cache(owner.to(self.device))
                attention_mask = torch.cat([mask_above[owner], segment_mask], dim=1)
            positions = (attention_mask.cumsum(-1) - 1)[:, -input_ids.shape[1]:].clamp(min=0)
            inputs = {"input_ids": input_ids.to(self.device), "attention_mask": attention_mask.to(self.device),
                      "position_ids": positions.to(self.device)}  # fmt: skip
            if self._keep_last_only:
                inputs["logits_to_keep"] = 1
            if len(levels) == 1:
                out = self.model(**inputs, use_cache=False)
            else:
                out = self.model(**inputs, past_key_values=cache, use_cache=True)
            cache, mask_above = out.past_key_values, attention_mask
        return out.logits[:, -1, :]


# ---------------------------------------------------------------------------------------------------
# Scoring examples (what the benchmark and self-improvement scripts call)
# ---------------------------------------------------------------------------------------------------
class YesNoScorer:
    """Scores every response of each Example with the judge; yields finished examples batch by batch.

    ``template_for(example)`` picks the judge question (per RewardBench subset, RM-Bench domain or
    prompt category); ``layout`` picks the upstream wrapper. Each yielded item is
    ``(example, p_yes per response, extra)`` where extra = {"truncated": any prompt cut to max_length}.
    """

    def __init__(self, judge: YesNoJudge, layout: str, template_for: Callable[[Example], str]):
        self.judge = judge
        self.layout = layout
        self.template_for = template_for

    def score(self, examples: Sequence[Example]) -> Iterator[list[tuple[Example, list[float], dict]]]:
        encoded, truncated = [], []
        by_template: dict[str, list[int]] = {}
        for index, example in enumerate(examples):
            template = self.template_for(example)
            prompts = [self.judge.encode(self.layout, template, example.prompt, r) for r in example.responses]
            encoded.append([p.ids for p in prompts])
            truncated.append(any(p.truncated for p in prompts))
            by_template.setdefault(template, []).append(index)
        # Batches never mix judge questions, so the question's tokens are a prefix the whole batch
        # shares and the judge runs them once per batch.
        for members in by_template.values():
            for indices, scores in self.judge.score_groups([encoded[i] for i in members]):
                yield [(examples[members[i]], s, {"truncated": truncated[members[i]]}) for i, s in zip(indices, scores)]


def load_judge(model_spec: ModelSpec, scoring: str, max_length: int, batch_size: int = DEFAULT_BATCH_SIZE,
               max_batch_tokens: int | None = None, prefix_sharing: bool = True) -> tuple[YesNoJudge, dict]:  # fmt: skip
    """Load the model of ``model_spec`` and wrap it in a YesNoJudge.

    Returns (judge, resolved settings for config.json: device, dtype, Yes/No token ids).
    """
    model, tokenizer, device, dtype = load_model_and_tokenizer(model_spec)
    judge = YesNoJudge(model, tokenizer, scoring=scoring, max_length=max_length, batch_size=batch_size,
                       max_batch_tokens=max_batch_tokens, prefix_sharing=prefix_sharing)  # fmt: skip
    tokens = judge.tokens
    logger.info("Yes ids %s %s, No ids %s %s", tokens.yes_ids, tokens.yes_tokens, tokens.no_ids, tokens.no_tokens)
    return judge, {"device": device, "dtype": str(dtype), "yes_no_tokens": tokens.as_dict()}