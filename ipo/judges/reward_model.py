"""The external reward-model baseline: a sequence-classification model's reward for (prompt, response).

Upstream (Reward_Bench/reward_model.py and RM_Bench/reward_model.py) ran a transformers
``pipeline("text-classification")`` on ``f"Instruction: {prompt}\\nResponse: " + response``, truncated
on the right at 1024 tokens, and took ``pipe(text)[0]["score"]``: the top label's score after the
pipeline's activation (a sigmoid for a one-label head). Here (``--prompt_format``, stored as ``input_format``):

  input_format upstream  the same raw text and right truncation (ipo.prompts.render_reward_model_upstream);
  input_format chat      the reward model's own chat template with a user and an assistant turn (how
                         modern RMs such as Skywork's were trained), no generation prompt; truncation cuts
                         the response's tail, then the prompt's start, never the markup.

The reward is the raw logit of the one-label head, ``logits[:, 0]`` in float32. The sigmoid is monotone,
so pairwise accuracy is the same whenever the sigmoid does not saturate; in fp16 it rounds large logits to
1.0 and creates ties that the logit does not have. A head with several labels has no single reward (the
pipeline's "top label score" then mixes labels), so it is refused. The head itself is applied in float32 to
the pooled hidden state (``reward_head``), whatever the model's dtype: a bf16 reward of 4-8 would otherwise
be rounded to a step of 0.03 before it is compared, and two close responses would tie. A NaN or infinite
reward (a float16 overflow) raises an IpoError instead of being compared.

Batches are sorted by length and padded on the right; the model pools its own last non-padding
position (transformers' rule, as in the pipeline), so batched rewards equal one-at-a-time rewards.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

from ipo import IpoError
from ipo.data import Example
from ipo.judges.batching import (
    DEFAULT_BATCH_SIZE,
    EncodedPrompt,
    check_prompt_format,
    default_max_batch_tokens,
    encode_right_truncated,
    fit_chat_prompt,
    pad_sequences,
    plan_batches,
    require_chat_template,
)
from ipo.modeling import apply_rows, check_finite, close_in_dtype, decoder_of, linear_rows, load_tokenizer
from ipo.prompts import render_reward_model_upstream

logger = logging.getLogger("ipo")


def rewards_from_logits(logits):
    """The reward of each row: the raw logit of a one-label head, (B, 1) any float dtype -> (B,) float32."""
    return logits[:, 0].float()


def last_non_pad(input_ids, pad_id):
    """Each row's pooled position, transformers' rule for sequence classifiers: the rightmost token that is
    not ``pad_id`` (so with pad = EOS a trailing EOS is not pooled, exactly as the model's own forward)."""
    import torch

    columns = torch.arange(input_ids.shape[-1], device=input_ids.device)
    return (columns * (input_ids != pad_id)).argmax(-1)


def reward_head(model, pad_id: int):
    """(the one-label head's row in float32 for ``apply_rows``, "") or (None, why it cannot be used: the
    scorer then reads the model's own logits in its dtype, as before).

    The head is the ``score`` linear layer of transformers' sequence classifiers; it is checked once on a
    padded probe batch against the model's own forward (same rewards up to the model dtype's rounding), so
    that another pooling or head (remote code) falls back instead of scoring wrongly.
    """
    import torch

    rows = linear_rows(getattr(model, "score", None), [0])
    if rows is None:
        return None, "no plain floating-point `score` layer"
    tokens = [t for t in range(4) if t != pad_id][:3]
    probe = torch.tensor([tokens, tokens[:2] + [pad_id]], dtype=torch.long, device=model.device)
    mask = (torch.arange(3, device=model.device) < torch.tensor([[3], [2]], device=model.device)).long()
    with torch.inference_mode():
        theirs = rewards_from_logits(model(input_ids=probe, attention_mask=mask).logits)
        hidden = decoder_of(model)(input_ids=probe, attention_mask=mask, use_cache=False).last_hidden_state
        pooled = hidden[torch.arange(2, device=hidden.device), last_non_pad(probe, pad_id).to(hidden.device)]
        check_finite(pooled, model.dtype, "the reward model's hidden state on a 3-token probe")
        ours = apply_rows(pooled, rows)[:, 0]
    if not close_in_dtype(ours, theirs, model.dtype):
        return None, "its rewards differ from the model's own forward (another head or pooling)"
    return rows, ""


def check_reward_model_config(config, tokenizer, input_format: str, max_length: int, flag: str = "--max_length"):
    """One line (IpoError) unless ``config`` is a one-label sequence classifier that ``tokenizer`` can feed in
    ``input_format`` (chat: the tokenizer has a chat template); ``flag`` names max_length in the message."""
    check_prompt_format(input_format, "input format")
    architectures = getattr(config, "architectures", None) or []
    if architectures and not any(a.endswith("ForSequenceClassification") for a in architectures):
        raise IpoError(
            f"the checkpoint is a {architectures[0]}, not a sequence-classification reward model "
            "(its reward head would be freshly initialised, i.e. random)"
        )
    num_labels = getattr(config, "num_labels", None)
    if num_labels != 1:
        raise IpoError(
            f"the reward model has a {num_labels}-label head; a reward model needs exactly one label "
            "(one scalar reward per response)"
        )
    if input_format == "chat":
        require_chat_template(tokenizer, "--input_format", whose="the reward model's tokenizer")
    if max_length < 8:
        raise IpoError(f"{flag} {max_length} is too small")


def check_reward_model(
    name_or_path: str, input_format: str, max_length: int, trust_remote_code: bool = False, flag: str = "--max_length"
) -> None:
    """RewardModelScorer's checks on a reward model's config and tokenizer, without loading its weights: a run
    that loads the reward model only after hours of sampling (DPO/reward_model.py) fails in one line first."""
    from transformers import AutoConfig

    tokenizer = load_tokenizer(name_or_path, trust_remote_code=trust_remote_code)
    try:
        config = AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise IpoError(f"could not load the config of reward model {name_or_path!r}: {first}")
    check_reward_model_config(config, tokenizer, input_format, max_length, flag)


class RewardModelScorer:
    """Scores every response of each Example with a reward model; ``.score(examples)`` yields lists of
    ``(example, rewards, extra)`` per batch, like ipo.judges.yes_no.YesNoScorer; extra = {"truncated": ...}."""

    def __init__(
        self,
        model,
        tokenizer,
        input_format: str = "upstream",
        max_length: int = 1024,
        batch_size: int = DEFAULT_BATCH_SIZE,
        max_batch_tokens: int | None = None,
    ):
        import torch

        check_reward_model_config(model.config, tokenizer, input_format, max_length)
        self.model = model
        self.tokenizer = tokenizer
        self.input_format = input_format
        self.max_length = max_length
        self.batch_size = batch_size
        self.max_batch_tokens = max_batch_tokens or default_max_batch_tokens(model.device)
        config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        if config.pad_token_id is None:
            # The model finds each row's last real token by the pad id; without one it refuses batches.
            config.pad_token_id = tokenizer.pad_token_id
        self.pad_id = config.pad_token_id
        self._decoder = decoder_of(model)
        self.head, why = reward_head(model, self.pad_id)
        if self.head is None:
            log = logger.info if model.dtype == torch.float32 else logger.warning
            log("rewards from the model's own logits in %s: %s", str(model.dtype).replace("torch.", ""), why)

    def encode(self, prompt: str, response: str) -> EncodedPrompt:
        if self.input_format == "upstream":
            return encode_right_truncated(
                self.tokenizer, render_reward_model_upstream(prompt, response), self.max_length
            )
        return fit_chat_prompt(self.tokenizer, self._chat_text, prompt, response, self.max_length)

    def _chat_text(self, prompt: str, response: str) -> str:
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
        return self.tokenizer.apply_chat_template(messages, tokenize=False)

    def rewards(self, sequences: Sequence[Sequence[int]]) -> list[float]:
        """Rewards of right-padded token sequences, in their order."""
        import torch

        input_ids, attention_mask = pad_sequences(sequences, self.pad_id, side="right")
        inputs = {"input_ids": input_ids.to(self.model.device), "attention_mask": attention_mask.to(self.model.device)}
        with torch.inference_mode():
            if self.head is None:
                rewards = rewards_from_logits(self.model(**inputs).logits)
            else:
                hidden = self._decoder(**inputs, use_cache=False).last_hidden_state
                rows = torch.arange(hidden.shape[0], device=hidden.device)
                pooled = hidden[rows, last_non_pad(input_ids, self.pad_id).to(hidden.device)]
                check_finite(pooled, self.model.dtype, "the reward model's hidden state")
                rewards = apply_rows(pooled, self.head)[:, 0]
        check_finite(rewards, self.model.dtype, "the reward model's rewards")
        return rewards.cpu().tolist()

    def score(self, examples: Sequence[Example]) -> Iterator[list[tuple[Example, list[float], dict]]]:
        encoded = [[self.encode(example.prompt, r) for r in example.responses] for example in examples]
        lengths = [[len(p.ids) for p in prompts] for prompts in encoded]
        for batch in plan_batches(lengths, self.batch_size, self.max_batch_tokens):
            flat = iter(self.rewards([p.ids for g in batch for p in encoded[g]]))
            yield [
                (examples[g], [next(flat) for _ in encoded[g]], {"truncated": any(p.truncated for p in encoded[g])})
                for g in batch
            ]
