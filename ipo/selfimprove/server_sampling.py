"""Sampling on a serving engine (``--backend server``): N responses per prompt from an OpenAI-compatible
completions endpoint (vLLM, SGLang, llama.cpp's server), into the same records as the local sampler.

Each (prompt, sample) is its own request, with the prompt as token ids (``encode_prompt``: the local
tokenizer, the same ids the local sampler would continue) and its own seed,
``row_seed(seed, salt, prompt id, sample index)``, the local sampler's seed of that row. A sample is then a
function of its prompt and seed alone: it does not depend on which requests the engine batches together,
on the order they arrive in, or on resuming (vLLM seeds a per-request generator; batch-invariant in exact
arithmetic, and in practice up to its kernels' float noise). The numbers differ from the local sampler's
(another random generator), the distribution does not: temperature, top-k and top-p as resolved locally
(the flags, else the model's generation config, else top-k 50 as transformers' default) are sent with every
request, with the stop tokens (the tokenizer's EOS and the generation config's).

The response's token ids (vLLM's ``return_token_ids``) are cut at the first stop token and decoded
locally, as the local sampler does; a server without that extension gives text, which is then re-tokenised
to count tokens (counted in ``stats["token_ids_from_text"]``). ``finished`` is finish_reason "stop" (a stop
token) against "length" (cut at ``max_new_tokens``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence

from ipo import IpoError
from ipo.judges.api_client import first_choice
from ipo.judges.server import WINDOW_REQUESTS_PER_WORKER, ServedModel, read_generation_config, request_failed
from ipo.selfimprove.sampling import (
    Sample,
    Sampler,
    SamplingSettings,
    check_sampling_settings,
    cut_at_stop,
    filter_settings,
    needs_generate,
    row_seed,
    stop_token_ids,
)

logger = logging.getLogger("ipo")


class ServerSampler:
    """Sampler's interface (``sample``, ``resolved``, ``stats``) over a served model."""

    def __init__(
        self, served: ServedModel, tokenizer, settings: SamplingSettings, batch_size: int = 16, salt: str = ""
    ):
        check_sampling_settings(settings)
        self.served, self.client, self.tokenizer, self.settings = served, served.client, tokenizer, settings
        self.batch_size, self.salt = batch_size, salt
        config = read_generation_config(served.path, served.trust_remote_code)
        self.stop_ids = stop_token_ids(tokenizer, config)
        self.top_k, self.top_p, self.repetition_penalty = filter_settings(settings, config)
        unsent = needs_generate(config)
        if unsent:
            logger.warning(
                "the model's generation config sets %s, which the local sampler applies and a server may not",
                ", ".join(unsent),
            )
        self.stats = {"prompts": 0, "rows": 0, "new_tokens": 0, "requests": 0, "token_ids_from_text": 0}

    def resolved(self) -> dict:
        """What sampling actually used, for config.json / metrics.json."""
        s = self.settings
        return {
            "num_return_sequences": s.num_return_sequences,
            "temperature": s.temperature,
            "greedy": s.temperature == 0,
            "max_new_tokens": s.max_new_tokens,
            "top_k": self.top_k,
            "top_p": self.top_p,
            "seed": s.seed,
            "salt": self.salt,
            "stop_token_ids": self.stop_ids,
            "stop_tokens": self.tokenizer.convert_ids_to_tokens(self.stop_ids),
            "repetition_penalty": self.repetition_penalty,
            "method": "server: one completions request per (prompt, sample), seed row_seed(seed, salt, prompt id, "
            "sample index)",
            **self.served.describe(),
        }

    def request(self, prompt_id, ids: Sequence[int], sample_index: int) -> dict:
        """The completions request body of one (prompt, sample) row."""
        s = self.settings
        extra = {
            "top_k": self.top_k if self.top_k and self.top_k > 0 else -1,  # vLLM: -1 switches top-k off
            "stop_token_ids": self.stop_ids,
            "return_token_ids": True,
            "skip_special_tokens": True,
        }
        if self.repetition_penalty:
            extra["repetition_penalty"] = self.repetition_penalty
        return {
            "prompt": self.served.prompt(self.tokenizer, ids),
            "max_tokens": s.max_new_tokens,
            "temperature": s.temperature,
            "top_p": self.top_p,
            "seed": row_seed(s.seed, self.salt, prompt_id, sample_index),
            "n": 1,
            "extra_body": extra,
        }

    def response(self, answer: dict) -> tuple[str, int, bool]:
        """(text, new tokens before the stop token, ended with a stop token) of one answered request."""
        choice = first_choice(answer) or {}
        token_ids = choice.get("token_ids")
        if isinstance(token_ids, list) and all(isinstance(t, int) for t in token_ids):
            ids, stopped = cut_at_stop(token_ids, self.stop_ids)
            text = self.tokenizer.decode(ids, skip_special_tokens=True).strip()
            return text, len(ids), stopped or choice.get("finish_reason") == "stop"
        text = str(choice.get("text") or "")
        self.stats["token_ids_from_text"] += 1
        count = len(self.tokenizer(text, add_special_tokens=False).input_ids)
        return text.strip(), count, choice.get("finish_reason") == "stop"

    def sample(self, prompts: Sequence[tuple]) -> Iterator[list[Sample]]:
        """``prompts`` = [(prompt_id, token_ids)]; yields the Samples of each window of prompts (in order),
        every window's requests in flight together (one resume checkpoint each)."""
        n = self.settings.num_return_sequences
        per_window = max(self.batch_size, math.ceil(WINDOW_REQUESTS_PER_WORKER * self.client.max_concurrency / n))
        for start in range(0, len(prompts), per_window):
            yield self._window(prompts[start : start + per_window])

    def _window(self, prompts) -> list[Sample]:
        n = self.settings.num_return_sequences
        if any(len(ids) == 0 for _, ids in prompts):
            raise IpoError("cannot sample from an empty prompt")
        bodies = [self.request(pid, ids, j) for pid, ids in prompts for j in range(n)]
        rows: list[tuple[str, int, bool] | None] = [None] * len(bodies)
        for batch in self.client.fetch_many(bodies):
            for index, result in batch:
                if result.response is None:
                    raise request_failed(result, "sampling", self.served.settings.max_retries, "the finished prompts")
                rows[index] = self.response(result.response)
        samples = []
        for p, (prompt_id, _) in enumerate(prompts):
            mine = rows[p * n : (p + 1) * n]
            samples.append(Sample(prompt_id, [r[0] for r in mine], [r[1] for r in mine], [r[2] for r in mine]))
        self.stats["prompts"] += len(prompts)
        self.stats["rows"] += len(bodies)
        self.stats["requests"] += len(bodies)
        self.stats["new_tokens"] += sum(r[1] for r in rows)
        return samples


def make_sampler(model, tokenizer, settings: SamplingSettings, batch_size: int = 16, salt: str = ""):
    """The local Sampler for a loaded model, ServerSampler for a ServedModel (ipo.judges.server)."""
    if isinstance(model, ServedModel):
        return ServerSampler(model, tokenizer, settings, batch_size=batch_size, salt=salt)
    return Sampler(model, tokenizer, settings, batch_size=batch_size, salt=salt)
