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
pipeline's "top label score" then mixes labels), so it is refused.

Batches are sorted by length and padded on the right; the model pools its own last non-padding
position (transformers' rule, as in the pipeline), so batched rewards equal one-at-a-time rewards.
"""

from __future__ import annotations

import logging
from typing import Iterator, Sequence

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
from ipo.prompts import render_reward_model_upstream

logger = logging.getLogger("ipo")


def rewards_from_logits(logits):
    """The reward of each row: the raw logit of a one-label head, (B, 1) any float dtype -> (B,) float32."""
    return logits[:, 0].float()


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
        check_prompt_format(input_format, "input format")
        architectures = getattr(model.config, "architectures", None) or []
        if architectures and not any(a.endswith("ForSequenceClassification") for a in architectures):
            raise IpoError(
                f"the checkpoint is a {architectures[0]}, not a sequence-classification reward model "
                "(its reward head would be freshly initialised, i.e. random)"
            )
        num_labels = getattr(model.config, "num_labels", None)
        if num_labels != 1:
            raise IpoError(
                f"the reward model has a {num_labels}-label head; a reward model needs exactly one label "
                "(one scalar reward per response)"
            )
        if input_format == "chat":
            require_chat_template(tokenizer, "--input_format", whose="the reward model's tokenizer")
        if max_length < 8:
            raise IpoError(f"--max_length {max_length} is too small")
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

    def encode(self, prompt: str, response: str) -> EncodedPrompt:
        if self.input_format == "upstream":
            return encode_right_truncated(self.tokenizer, render_reward_model_upstream(prompt, response), self.max_length)
        return fit_chat_prompt(self.tokenizer, self._chat_text, prompt, response, self.max_length)

    def _chat_text(self, prompt: str, response: str) -> str:
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
        return self.tokenizer.apply_chat_template(messages, tokenize=False)

    def rewards(self, sequences: Sequence[Sequence[int]]) -> list[float]:
        """Rewards of right-padded token sequences, in their order."""
        import torch

        input_ids, attention_mask = pad_sequences(sequences, self.pad_id, side="right")
        with torch.inference_mode():
            logits = self.model(input_ids=input_ids.to(self.model.device),
                                attention_mask=attention_mask.to(self.model.device)).logits  # fmt: skip
        return rewards_from_logits(logits).cpu().tolist()

    def score(self, examples: Sequence[Example]) -> Iterator[list[tuple[Example, list[float], dict]]]:
        encoded = [[self.encode(example.prompt, r) for r in example.responses] for example in examples]
        lengths = [[len(p.ids) for p in prompts] for prompts in encoded]
        for batch in plan_batches(lengths, self.batch_size, self.max_batch_tokens):
            flat = iter(self.rewards([p.ids for g in batch for p in encoded[g]]))
            yield [
                (examples[g], [next(flat) for _ in encoded[g]], {"truncated": any(p.truncated for p in encoded[g])})
                for g in batch
            ]
