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
left-padded into batches under a token budget (ipo.judges.batching); only the last position's hidden
state goes through the output layer, and only through its Yes/No rows. When the responses of one prompt
share a token prefix (the judge question and the user's prompt), the prefix is run once and its key/value
cache is reused for each response; likewise the judge question, which every prompt of a batch shares
(batches are formed per question). The token budget counts that cache: a prefix tree whose cache would
hold more positions than the budget is split, or run without sharing.

Precision (docs/precision.md): the Yes/No rows of the output layer are applied in float32 to the last
hidden state whatever the model's dtype (YesNoHead), so bf16 logits are never rounded before the score;
a NaN or infinite hidden state or logit (a float16 overflow) raises an IpoError instead of scoring. The
rows are read where the output layer lives and moved to the hidden state's device, so a judge spread over
several GPUs (``--device shard``) scores the same way.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

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
    levels_cache_positions,
    levels_cost,
    plan_batches,
    prefix_levels,
    require_chat_template,
    split_chat_template,
)
from ipo.modeling import (
    ModelSpec,
    apply_rows,
    check_finite,
    close_in_dtype,
    decoder_of,
    linear_rows,
    load_model_and_tokenizer,
)
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
            logger.warning(
                "' Yes' -> %s and ' No' -> %s: several pieces, all summed as upstream did", list(yes_ids), list(no_ids)
            )
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
# The Yes/No rows of the output layer, in float32
# ---------------------------------------------------------------------------------------------------
class YesNoHead:
    """The model's output layer cut to the Yes/No rows and applied in float32 to the last hidden state.

    The full layer gives (B, V) logits in the model's dtype: in bf16 a logit of 8-32 is rounded to a step of
    0.06-0.125 before any float32 arithmetic, which ties scores that differ and makes a score depend on the
    batch. Here z = post(h W_rows^T + b_rows) in float32 from the same bf16 hidden state h, where post is the
    architecture's final logit transform read from its config: a scale (Cohere's ``logit_scale``; Granite's
    and MiniCPM3's ``logits_scaling`` divide) and Gemma-2-style ``final_logit_softcapping``
    (cap * tanh(z / cap)). ``yes_no_head`` checks the result against the model's own forward once.
    """

    def __init__(self, rows, scale: float = 1.0, softcap: float | None = None):
        self.rows, self.scale, self.softcap = rows, scale, softcap

    def logits(self, hidden):
        """(B, H) last hidden states, any dtype and device -> (B, K + M) float32 Yes-then-No logits there."""
        import torch

        z = apply_rows(hidden, self.rows) * self.scale
        return z if self.softcap is None else torch.tanh(z / self.softcap) * self.softcap


def yes_no_head(model, tokens: YesNoTokens) -> tuple[YesNoHead | None, str]:
    """(the float32 Yes/No head of ``model``, "") or (None, why it cannot be used: the judge then reads the
    full logits in the model's dtype, as before).

    The head is checked once on a short probe against the model's own forward (same values up to the model
    dtype's rounding), so that a transform this code does not know (a remote-code model, an adapter on the
    output layer) falls back instead of scoring wrongly.
    """
    import torch

    layer = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    rows = linear_rows(layer, tokens.yes_ids + tokens.no_ids) if layer is not None else None
    if rows is None:
        return None, "the output layer is not a plain floating-point linear layer"
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    scale = float(getattr(config, "logit_scale", None) or 1.0) / float(getattr(config, "logits_scaling", None) or 1.0)
    head = YesNoHead(rows, scale, getattr(config, "final_logit_softcapping", None))
    probe = torch.tensor([[tokens.yes_ids[0], tokens.no_ids[0]] * 2], dtype=torch.long, device=model.device)
    ids = list(tokens.yes_ids + tokens.no_ids)
    with torch.inference_mode():
        full = model(input_ids=probe, use_cache=False).logits[:, -1]
        hidden = decoder_of(model)(input_ids=probe, use_cache=False).last_hidden_state[:, -1]
        check_finite(hidden, model.dtype, "the judge's hidden state on a 4-token probe")
        ours = head.logits(hidden)
    if not close_in_dtype(ours, full.index_select(-1, torch.tensor(ids, device=full.device)), model.dtype):
        return None, "its output differs from the model's own logits (an unknown logit transform)"
    return head, ""


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
        # The Yes/No ids as one row selection; the score's columns within it (repeated ids kept, as upstream).
        n_yes, n_all = len(self.tokens.yes_ids), len(self.tokens.yes_ids) + len(self.tokens.no_ids)
        self._ids = torch.tensor(self.tokens.yes_ids + self.tokens.no_ids, dtype=torch.long)
        self._yes_columns, self._no_columns = torch.arange(n_yes), torch.arange(n_yes, n_all)
        self._keep_last_only = "logits_to_keep" in inspect.signature(model.forward).parameters
        self._decoder = decoder_of(model)
        self.head, why = yes_no_head(model, self.tokens)
        if self.head is None:
            log = logger.info if model.dtype == torch.float32 else logger.warning
            log("P(Yes) from the full logits in %s: %s", str(model.dtype).replace("torch.", ""), why)
        self._chat_pieces: dict[str, tuple[str, str, str]] = {}
        self.stats = {
            "sequences": 0,
            "forward_tokens": 0,
            "shared_prefix_batches": 0,
            "regrouped_windows": 0,
            "peak_cache_positions": 0,  # the most key/value-cache positions a prefix tree held (<= the budget)
        }

    # ------------------------------------------------------------------ encoding
    def encode(self, layout: str, template: str, instruction: str, response: str) -> EncodedPrompt:
        """Token ids of one judge prompt (layout: ipo.prompts.REWARDBENCH_LAYOUT or RMBENCH_LAYOUT)."""
        if self.scoring == "upstream":
            return self._encode_upstream(layout, template, instruction, response)
        return self._encode_chat(template, instruction, response)

    def _encode_upstream(self, layout, template, instruction, response) -> EncodedPrompt:
        # Upstream: tokenizer.encode(prompt, max_length=1024, truncation=True) with the default
        # right truncation, which cuts the end of the prompt (the response, or RM-Bench's question).
        return encode_right_truncated(
            self.tokenizer, render_upstream(layout, template, instruction, response), self.max_length
        )

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
                out.append(flat[start : start + len(group)])
                start += len(group)
            yield window, out

    def _p_yes_window(self, groups: Sequence[Sequence[Sequence[int]]]) -> list[float]:
        """p'_yes of every sequence of a window of groups (flattened in group order), by the cheaper plan.

        Plan A keeps each group in one pass and runs shared prefixes once (``_plan_passes``); plan B forgets
        the groups and batches the window's sequences by length, which wins when a prompt's responses
        differ a lot in length (RM-Bench: concise vs detailed) and the shared prefix is short. The cost
        of a plan is the padded tokens its passes run.
        """
        import torch

        sequences = [list(seq) for group in groups for seq in group]
        if any(len(seq) == 0 for seq in sequences):
            raise IpoError("cannot score an empty prompt")
        self.stats["sequences"] += len(sequences)
        starts = [0]
        for group in groups:
            starts.append(starts[-1] + len(group))
        group_batches = plan_batches([[len(s) for s in g] for g in groups], self.batch_size, self.max_batch_tokens)
        tree_passes = [one for batch in group_batches for one in self._plan_passes(groups, batch)]
        tree_cost = sum(cost for _, _, cost in tree_passes)
        sequence_batches = plan_batches([[len(s)] for s in sequences], self.batch_size, self.max_batch_tokens)
        regrouped_cost = sum(len(b) * max(len(sequences[i]) for i in b) for b in sequence_batches)
        scores: list[float] = [0.0] * len(sequences)
        with torch.inference_mode():
            if regrouped_cost < tree_cost:
                self.stats["regrouped_windows"] += 1
                self.stats["forward_tokens"] += regrouped_cost
                for batch in sequence_batches:
                    for i, p in zip(batch, self._p_yes(self._forward_levels([([sequences[i] for i in batch], None)]))):
                        scores[i] = p
            else:
                self.stats["forward_tokens"] += tree_cost
                self.stats["shared_prefix_batches"] += sum(len(levels) > 1 for _, levels, _ in tree_passes)
                for batch, levels, _ in tree_passes:
                    if len(levels) > 1:
                        peak = max(self.stats["peak_cache_positions"], levels_cache_positions(levels))
                        self.stats["peak_cache_positions"] = peak
                    rows = [i for g in batch for i in range(starts[g], starts[g + 1])]
                    for i, p in zip(rows, self._p_yes(self._forward_levels(levels))):
                        scores[i] = p
        return scores

    def _plan_passes(self, groups, batch: list[int]) -> list[tuple[list[int], list, int]]:
        """(group indices, prefix tree or one plain level, padded-token cost) of the passes that score ``batch``.

        A prefix tree is used when it saves at least PREFIX_SHARING_MIN_SAVING of the padded tokens and its
        key/value cache fits the token budget: the cache holds every row's prefix positions while the last
        level runs (``levels_cache_positions``), which can exceed the plain pass's rows x longest when
        the levels' paddings do not line up. A tree over the budget is split into two halves of the batch
        (each planned the same way) if that still saves, else the batch runs as one plain pass (no cache).
        """
        members = [groups[g] for g in batch]
        sequences = [list(seq) for group in members for seq in group]
        plain_cost = len(sequences) * max(len(seq) for seq in sequences)
        plain = [(batch, [(sequences, None)], plain_cost)]
        if not self.prefix_sharing or len(sequences) == 1:
            return plain
        levels = prefix_levels(members)
        if len(levels) == 1 or levels_cost(levels) > (1 - PREFIX_SHARING_MIN_SAVING) * plain_cost:
            return plain
        # A lone group over the budget runs over it whatever the plan; its tree may hold what its plain pass runs.
        if levels_cache_positions(levels) <= max(self.max_batch_tokens, plain_cost if len(batch) == 1 else 0):
            return [(batch, levels, levels_cost(levels))]
        if len(batch) > 1:
            middle = len(batch) // 2
            halves = self._plan_passes(groups, batch[:middle]) + self._plan_passes(groups, batch[middle:])
            if sum(cost for _, _, cost in halves) <= (1 - PREFIX_SHARING_MIN_SAVING) * plain_cost:
                return halves
        return plain

    def _forward_levels(self, levels):
        """Last-position hidden states (B, H) of the sequences spelled out by a prefix tree (see prefix_levels);
        without a float32 head (``yes_no_head``), the model's last-position logits (B, V) instead.

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
            positions = (attention_mask.cumsum(-1) - 1)[:, -input_ids.shape[1] :].clamp(min=0)
            inputs = {
                "input_ids": input_ids.to(self.device),
                "attention_mask": attention_mask.to(self.device),
                "position_ids": positions.to(self.device),
            }
            if self.head is None and self._keep_last_only:
                inputs["logits_to_keep"] = 1
            run = self.model if self.head is None else self._decoder
            if len(levels) == 1:
                out = run(**inputs, use_cache=False)
            else:
                out = run(**inputs, past_key_values=cache, use_cache=True)
            cache, mask_above = out.past_key_values, attention_mask
        return out.logits[:, -1, :] if self.head is None else out.last_hidden_state[:, -1, :]

    def _p_yes(self, last) -> list[float]:
        """p'_yes per row of ``_forward_levels``' output; an IpoError rather than a NaN or infinite score."""
        if self.head is None:
            z = last.index_select(-1, self._ids.to(last.device)).float()
        else:
            check_finite(last, self.model.dtype, "the judge's last hidden state")
            z = self.head.logits(last)
        check_finite(z, self.model.dtype, "the judge's Yes/No logits")
        return p_yes_from_logits(z, self._yes_columns.to(z.device), self._no_columns.to(z.device)).tolist()


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


def load_judge(
    model_spec: ModelSpec,
    scoring: str,
    max_length: int,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_batch_tokens: int | None = None,
    prefix_sharing: bool = True,
) -> tuple[YesNoJudge, dict]:
    """Load the model of ``model_spec`` and wrap it in a YesNoJudge.

    Returns (judge, resolved settings for config.json: device, dtype, Yes/No token ids).
    """
    model, tokenizer, device, dtype = load_model_and_tokenizer(model_spec)
    judge = YesNoJudge(
        model,
        tokenizer,
        scoring=scoring,
        max_length=max_length,
        batch_size=batch_size,
        max_batch_tokens=max_batch_tokens,
        prefix_sharing=prefix_sharing,
    )
    tokens = judge.tokens
    logger.info("Yes ids %s %s, No ids %s %s", tokens.yes_ids, tokens.yes_tokens, tokens.no_ids, tokens.no_tokens)
    return judge, {"device": device, "dtype": str(dtype), "yes_no_tokens": tokens.as_dict()}
