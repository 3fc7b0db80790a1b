"""The paper's primitive: an LLM as a preference classifier through P(Yes) at its next token.

Garg et al. (arXiv 2502.16182, §3): the judge is asked a yes/no question about a (prompt, response)
pair and the preference score is the normalised next-token probability

    p'_yes = p_yes / (p_yes + p_no)

read at the last prompt position; no text is generated.

Two scoring modes (``--scoring``):
  upstream  the paper's raw-text wrappers (ipo.prompts.render_upstream), no chat template, BOS as the
            tokenizer adds it, right truncation at ``max_length`` tokens, and the Yes/No ids of
            ``encode(" Yes")`` / ``encode(" No")`` with all their probabilities summed (a multi-piece
            encoding sums every piece, exactly as upstream did).
  chat      the tokenizer's chat template with a generation prompt, every single-token variant of
            Yes/No (Yes, " Yes", yes, ...) de-duplicated, and truncation that cuts the response (then the
            question's start) but never the judge instruction.

Speed, without changing a score beyond float noise: examples are tokenised once, sorted by length and
left-padded into batches under a token budget; the model returns logits for the last position only
(``logits_to_keep=1``), and the normalisation uses only the Yes/No logits in float32. When the
responses of one prompt share a token prefix (the judge question and the user's prompt), the prefix is
run once and its key/value cache is reused for each response.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

from ipo import IpoError
from ipo.data import Example
from ipo.prompts import chat_user_content, render_upstream

logger = logging.getLogger("ipo")

SCORING_MODES = ("upstream", "chat")
YES_VARIANTS = ("Yes", " Yes", "yes", " yes", "YES", " YES")
NO_VARIANTS = ("No", " No", "no", " no", "NO", " NO")

# Run a batch through the shared-prefix path only when its padded token count drops by at least this
# fraction: the second forward pass and the cache copy cost something, so a small saving is a loss.
PREFIX_SHARING_MIN_SAVING = 0.2


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
    """Normalised P(Yes) from next-token logits (Garg et al., §3: p'_yes = p_yes / (p_yes + p_no)).

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


def left_pad(sequences: Sequence[Sequence[int]], pad_id: int):
    """(input_ids, attention_mask), both (B, L) long, with padding on the left."""
    import torch

    longest = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), longest), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), longest), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if seq:
            input_ids[row, longest - len(seq):] = torch.tensor(seq, dtype=torch.long)
            attention_mask[row, longest - len(seq):] = 1
    return input_ids, attention_mask


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
        batch_size: int = 8,
        max_batch_tokens: int = 8192,
        prefix_sharing: bool = True,
    ):
        import torch

        if scoring not in SCORING_MODES:
            raise IpoError(f"unknown scoring mode {scoring!r}; choose from {', '.join(SCORING_MODES)}")
        if scoring == "chat" and not getattr(tokenizer, "chat_template", None):
            raise IpoError("this tokenizer has no chat template, so --scoring chat cannot be used; "
                           "use --scoring upstream")  # fmt: skip
        if max_length < 8:
            raise IpoError(f"--max_length {max_length} is too small for a judge prompt")
        self.model = model
        self.tokenizer = tokenizer
        self.scoring = scoring
        self.max_length = max_length
        self.batch_size = batch_size
        self.max_batch_tokens = max_batch_tokens
        self.prefix_sharing = prefix_sharing
        self.tokens = resolve_yes_no_tokens(tokenizer, scoring)
        self.device = model.device
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self._yes = torch.tensor(self.tokens.yes_ids, dtype=torch.long, device=self.device)
        self._no = torch.tensor(self.tokens.no_ids, dtype=torch.long, device=self.device)
        self._keep_last_only = "logits_to_keep" in inspect.signature(model.forward).parameters
        self._chat_pieces: dict[str, tuple[str, str, str]] = {}
        self.stats = {"sequences": 0, "forward_tokens": 0, "shared_prefix_batches": 0}

    # ------------------------------------------------------------------ encoding
    def encode(self, layout: str, template: str, instruction: str, response: str) -> EncodedPrompt:
        """Token ids of one judge prompt (layout: ipo.prompts.REWARDBENCH_LAYOUT or RMBENCH_LAYOUT)."""
        if self.scoring == "upstream":
            return self._encode_upstream(layout, template, instruction, response)
        return self._encode_chat(template, instruction, response)

    def _encode_upstream(self, layout, template, instruction, response) -> EncodedPrompt:
        text = render_upstream(layout, template, instruction, response)
        ids = self.tokenizer(text).input_ids
        if len(ids) <= self.max_length:
            return EncodedPrompt(ids, False)
        # Upstream: tokenizer.encode(prompt, max_length=1024, truncation=True) with the default
        # right truncation, which cuts the end of the prompt (the response, or RM-Bench's question).
        with _truncation_side(self.tokenizer, "right"):
            ids = self.tokenizer(text, max_length=self.max_length, truncation=True).input_ids
        return EncodedPrompt(ids, True)

    def _chat_text(self, template: str, instruction: str, response: str) -> str:
        # The chat template is rendered once per judge question, with placeholders, and then filled
        # by plain string concatenation; this is identical to rendering each prompt.
        if template not in self._chat_pieces:
            q_mark, r_mark = "\x00QUESTION\x00", "\x00RESPONSE\x00"
            messages = [{"role": "user", "content": chat_user_content(template, q_mark, r_mark)}]
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            if text.count(q_mark) != 1 or text.count(r_mark) != 1:
                raise IpoError("the chat template does not copy the user message verbatim; use --scoring upstream")
            before, rest = text.split(q_mark)
            middle, after = rest.split(r_mark)
            self._chat_pieces[template] = (before, middle, after)
        before, middle, after = self._chat_pieces[template]
        return before + instruction + middle + response + after

    def _chat_ids(self, text: str) -> list[int]:
        # The rendered template already contains BOS (if the model uses one) as text.
        return self.tokenizer(text, add_special_tokens=False).input_ids

    def _cut(self, text: str, keep_tokens: int, keep: str) -> str:
        """The first (keep="start") or last (keep="end") ``keep_tokens`` tokens of ``text``, as text."""
        if keep_tokens <= 0:
            return ""
        encoding = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=self.tokenizer.is_fast)
        ids = encoding.input_ids
        if keep_tokens >= len(ids):
            return text
        if self.tokenizer.is_fast:
            offsets = encoding["offset_mapping"]
            if keep == "start":
                return text[: offsets[keep_tokens - 1][1]]
            return text[offsets[len(ids) - keep_tokens][0]:]
        kept = ids[:keep_tokens] if keep == "start" else ids[-keep_tokens:]
        return self.tokenizer.decode(kept)

    def _encode_chat(self, template, instruction, response) -> EncodedPrompt:
        ids = self._chat_ids(self._chat_text(template, instruction, response))
        if len(ids) <= self.max_length:
            return EncodedPrompt(ids, False)
        # Cut the response's tail first, then the question's start; the judge instruction and the
        # chat markup always stay. Boundaries can merge tokens, so re-check and shave until it fits.
        for _ in range(8):
            excess = len(ids) - self.max_length
            if excess <= 0:
                break
            response_tokens = len(self._chat_ids(response))
            if response_tokens > 0:
                response = self._cut(response, response_tokens - excess, keep="start")
            else:
                question_tokens = len(self._chat_ids(instruction))
                if question_tokens == 0:
                    break
                instruction = self._cut(instruction, question_tokens - excess, keep="end")
            ids = self._chat_ids(self._chat_text(template, instruction, response))
        if len(ids) > self.max_length:
            logger.warning("the judge instruction alone is %d tokens, over --max_length %d; kept whole",
                           len(ids), self.max_length)  # fmt: skip
        return EncodedPrompt(ids, True)

    # ------------------------------------------------------------------ scoring
    def score_groups(self, groups: Sequence[Sequence[Sequence[int]]]) -> Iterator[tuple[list[int], list[list[float]]]]:
        """Score token-id sequences, grouped by prompt; yields (group indices, p_yes per group) per batch.

        Groups are processed longest first; every yielded score equals what the group's sequences would
        get one at a time (within float32 noise).
        """
        lengths = [[len(seq) for seq in group] for group in groups]
        for batch in plan_batches(lengths, self.batch_size, self.max_batch_tokens):
            members = [groups[g] for g in batch]
            flat = [p for p in self._p_yes(members).tolist()]
            out, start = [], 0
            for group in members:
                out.append(flat[start:start + len(group)])
                start += len(group)
            yield batch, out

    def _p_yes(self, groups: Sequence[Sequence[Sequence[int]]]):
        """(sum of group sizes,) float32 tensor of p'_yes for a batch of groups."""
        logits = self._last_logits(groups)
        return p_yes_from_logits(logits, self._yes, self._no).cpu()

    def _last_logits(self, groups):
        import torch

        sequences = [list(seq) for group in groups for seq in group]
        if any(len(seq) == 0 for seq in sequences):
            raise IpoError("cannot score an empty prompt")
        self.stats["sequences"] += len(sequences)
        prefix_lengths = [common_prefix_length(group) if len(group) > 1 else 0 for group in groups]
        plain_cost = len(sequences) * max(len(s) for s in sequences)
        if self.prefix_sharing and min(prefix_lengths) > 0:
            suffix_longest = max(len(s) - p for group, p in zip(groups, prefix_lengths) for s in group)
            shared_cost = len(groups) * max(prefix_lengths) + len(sequences) * suffix_longest
            if shared_cost <= (1 - PREFIX_SHARING_MIN_SAVING) * plain_cost:
                self.stats["shared_prefix_batches"] += 1
                self.stats["forward_tokens"] += shared_cost
                with torch.inference_mode():
                    return self._forward_shared(groups, prefix_lengths)
        self.stats["forward_tokens"] += plain_cost
        with torch.inference_mode():
            return self._forward(sequences)

    def _model_logits(self, **inputs):
        if self._keep_last_only:
            inputs["logits_to_keep"] = 1
        return self.model(**inputs).logits[:, -1, :]

    def _forward(self, sequences):
        """Last-position logits (B, V) of left-padded sequences."""
        input_ids, attention_mask = left_pad(sequences, self.pad_id)
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        return self._model_logits(
            input_ids=input_ids.to(self.device),
            attention_mask=attention_mask.to(self.device),
            position_ids=position_ids.to(self.device),
            use_cache=False,
        )

    def _forward_shared(self, groups, prefix_lengths):
        """Last-position logits of every sequence, running each group's shared prefix once.

        Pass 1 runs the left-padded prefixes (one row per group) and keeps their key/value cache; the
        cache rows are then repeated for each member, and pass 2 runs the left-padded suffixes on top,
        with the padding between prefix and suffix masked out and positions continuing the prefix.
        """
        import torch

        prefixes = [list(group[0][:n]) for group, n in zip(groups, prefix_lengths)]
        suffixes = [list(seq[n:]) for group, n in zip(groups, prefix_lengths) for seq in group]
        owner = torch.tensor([g for g, group in enumerate(groups) for _ in group], dtype=torch.long)
        prefix_ids, prefix_mask = left_pad(prefixes, self.pad_id)
        prefix_positions = (prefix_mask.cumsum(-1) - 1).clamp(min=0)
        out = self.model(
            input_ids=prefix_ids.to(self.device),
            attention_mask=prefix_mask.to(self.device),
            position_ids=prefix_positions.to(self.device),
            use_cache=True,
            **({"logits_to_keep": 1} if self._keep_last_only else {}),
        )
        cache = out.past_key_values
        cache.reorder_cache(owner.to(self.device))
        suffix_ids, suffix_mask = left_pad(suffixes, self.pad_id)
        member_prefix_mask = prefix_mask[owner]
        attention_mask = torch.cat([member_prefix_mask, suffix_mask], dim=1)
        positions = member_prefix_mask.sum(-1, keepdim=True) + suffix_mask.cumsum(-1) - 1
        return self._model_logits(
            input_ids=suffix_ids.to(self.device),
            attention_mask=attention_mask.to(self.device),
            position_ids=positions.clamp(min=0).to(self.device),
            past_key_values=cache,
            use_cache=True,
        )


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
        for example in examples:
            template = self.template_for(example)
            prompts = [self.judge.encode(self.layout, template, example.prompt, r) for r in example.responses]
            encoded.append([p.ids for p in prompts])
            truncated.append(any(p.truncated for p in prompts))
        for indices, scores in self.judge.score_groups(encoded):
            yield [(examples[i], s, {"truncated": truncated[i]}) for i, s in zip(indices, scores)]


def load_judge(args) -> tuple[YesNoJudge, dict]:
    """The model and its YesNoJudge from the shared flags (cli.add_model_args / add_judge_args).

    Returns (judge, resolved settings for config.json: device, dtype, Yes/No token ids).
    """
    from ipo.modeling import load_model_and_tokenizer

    model, tokenizer, device, dtype = load_model_and_tokenizer(args)
    judge = YesNoJudge(model, tokenizer, scoring=args.scoring, max_length=args.max_length,
                       batch_size=args.batch_size, max_batch_tokens=args.max_batch_tokens,
                       prefix_sharing=args.prefix_sharing)  # fmt: skip
    tokens = judge.tokens
    logger.info("Yes ids %s %s, No ids %s %s", tokens.yes_ids, tokens.yes_tokens, tokens.no_ids, tokens.no_tokens)
    return judge, {"device": device, "dtype": str(dtype), "yes_no_tokens": tokens.as_dict()}
