"""Sampling N responses per prompt: batched across prompts, reproducible per prompt, cut by token ids.

Upstream (DPO/ours.py, DPO/sample_responses.py) called ``generate`` four times per instruction with batch
size 1, seeded once globally, and cut each response off the decoded text by the prompt's character
length. Here:

* one ``generate`` call covers many prompts (left-padded) with ``num_return_sequences=N``;
* each response is cut from the generated **token ids** at the first stop token, then decoded;
* every (prompt, sample) row draws its randomness from its own generator, seeded from (seed, salt,
  prompt id, sample index), so a prompt's samples do not depend on which prompts share its batch, on the
  batch size, or on resuming: sampling is Gumbel-max (argmax of the warped logits plus Gumbel noise), an
  exact draw from the same softmax(logits / T) with top-k / top-p filtering that ``do_sample=True``
  would use. The model's other generation settings (repetition penalty, ...) still apply.

Two prompt formats (``--prompt_format``):
  upstream  the raw instruction, tokenised with the tokenizer's special tokens (BOS for Llama/Mistral)
  chat      the tokenizer's chat template, one user turn plus the generation prompt
"""

from __future__ import annotations

import copy
import hashlib
import logging
from dataclasses import dataclass
from typing import Iterator, Sequence

from ipo import IpoError

logger = logging.getLogger("ipo")

PROMPT_FORMATS = ("upstream", "chat")
DEFAULT_TOP_K = 50  # transformers' default when neither the model nor the user sets one (upstream ran with it)


@dataclass(frozen=True)
class SamplingSettings:
    """The paper's sampling: 4 responses per instruction, temperature 0.7, 256 new tokens."""

    num_return_sequences: int = 4
    temperature: float = 0.7  # 0 = greedy
    max_new_tokens: int = 256
    top_k: int | None = None  # None: the model's generation_config, else transformers' default (50)
    top_p: float | None = None  # None: the model's generation_config, else 1.0
    seed: int = 42


@dataclass
class Sample:
    """The responses of one prompt."""

    prompt_id: str | int
    responses: list[str]
    n_tokens: list[int]  # response tokens before the stop token
    finished: list[bool]  # True if the response ended with a stop token (not cut at max_new_tokens)


def add_sampling_args(parser, defaults: dict | None = None) -> None:
    """Sampling flags shared by DPO/ours.py, DPO/sample_responses.py and DPO/Evals/sample_mmlu.py."""
    d = {**vars(SamplingSettings()), **(defaults or {})}
    group = parser.add_argument_group("sampling")
    group.add_argument("--prompt_format", default=d.get("prompt_format", "upstream"), choices=list(PROMPT_FORMATS),
                       help="upstream: the raw instruction, as the paper sampled (and [INST] DPO records); "
                            "chat: the tokenizer's chat template for sampling and training")  # fmt: skip
    group.add_argument("--num_return_sequences", "--num_responses", dest="num_return_sequences", type=int,
                       default=d["num_return_sequences"], help="responses sampled per prompt (paper: 4)")  # fmt: skip
    group.add_argument("--temperature", type=float, default=d["temperature"],
                       help="sampling temperature (paper: 0.7); 0 = greedy")  # fmt: skip
    group.add_argument("--max_new_tokens", type=int, default=d["max_new_tokens"],
                       help="max tokens per response (paper: 256)")  # fmt: skip
    group.add_argument("--top_k", type=int, default=d["top_k"],
                       help="top-k filter; default: the model's generation config, else 50 (what upstream ran with)")
    group.add_argument("--top_p", type=float, default=d["top_p"],
                       help="nucleus filter; default: the model's generation config, else 1.0")
    group.add_argument("--sample_batch_size", type=int, default=d.get("sample_batch_size", 16),
                       help="prompts per generate call (x num_return_sequences rows); samples do not depend on it")


def sampling_settings_from_args(args) -> SamplingSettings:
    return SamplingSettings(num_return_sequences=args.num_return_sequences, temperature=args.temperature,
                            max_new_tokens=args.max_new_tokens, top_k=args.top_k, top_p=args.top_p,
                            seed=args.seed)  # fmt: skip


# ---------------------------------------------------------------------------------------------------
# Pure helpers
# ---------------------------------------------------------------------------------------------------
def stop_token_ids(tokenizer, generation_config=None) -> list[int]:
    """The ids that end a response: the tokenizer's EOS plus the generation config's eos_token_id(s)."""
    ids: list[int] = []
    sources = [tokenizer.eos_token_id, getattr(generation_config, "eos_token_id", None)]
    for source in sources:
        for token_id in source if isinstance(source, (list, tuple)) else [source]:
            if token_id is not None and int(token_id) not in ids:
                ids.append(int(token_id))
    if not ids:
        raise IpoError(
            "the model has no end-of-sequence token (neither its tokenizer nor its generation config names "
            "one), so it cannot end a response; set eos_token in its tokenizer"
        )
    return ids


def check_can_generate(model_name_or_path: str, trust_remote_code: bool = False) -> list[int]:
    """Stop-token ids of a model, read from its tokenizer and configs without loading the weights.

    Fails with one line before any work starts if the model has no end-of-sequence token.
    """
    from transformers import AutoConfig, GenerationConfig

    from ipo.modeling import load_tokenizer, split_gguf

    tokenizer = load_tokenizer(model_name_or_path, trust_remote_code=trust_remote_code)
    folder, gguf_file = split_gguf(model_name_or_path)
    try:
        generation_config = GenerationConfig.from_pretrained(folder)
    except Exception:  # no generation_config.json: transformers derives one from the model config
        try:
            generation_config = GenerationConfig.from_model_config(
                AutoConfig.from_pretrained(folder, gguf_file=gguf_file, trust_remote_code=trust_remote_code))
        except Exception:
            generation_config = None
    return stop_token_ids(tokenizer, generation_config)


def row_seed(seed: int, salt: str, prompt_id, sample_index: int) -> int:
    """A 63-bit seed for one (prompt, sample) row; stable across processes, machines and batchings."""
    digest = hashlib.sha256(f"{seed}/{salt}/{prompt_id}/{sample_index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def cut_at_stop(token_ids: Sequence[int], stop_ids: Sequence[int]) -> tuple[list[int], bool]:
    """(ids before the first stop token, whether a stop token was found)."""
    stops = set(stop_ids)
    for position, token_id in enumerate(token_ids):
        if token_id in stops:
            return list(token_ids[:position]), True
    return list(token_ids), False


def encode_prompt(tokenizer, instruction: str, prompt_format: str) -> list[int]:
    """Token ids the model continues: the raw instruction (upstream) or a chat-templated user turn."""
    if prompt_format == "upstream":
        return tokenizer(instruction).input_ids
    if prompt_format == "chat":
        if not getattr(tokenizer, "chat_template", None):
            raise IpoError("this tokenizer has no chat template, so --prompt_format chat cannot be used; "
                           "use --prompt_format upstream")  # fmt: skip
        text = tokenizer.apply_chat_template([{"role": "user", "content": instruction}], tokenize=False,
                                             add_generation_prompt=True)  # fmt: skip
        return tokenizer(text, add_special_tokens=False).input_ids  # the template already holds BOS if any
    raise ValueError(f"unknown prompt format {prompt_format!r}")


def gumbel_noise(generators, vocab_size: int, device):
    """(R, V) float32 standard Gumbel noise, row r drawn from ``generators[r]``."""
    import torch

    uniform = torch.stack([torch.rand(vocab_size, generator=g, device=device) for g in generators])
    return -torch.log(-torch.log(uniform.clamp_(min=torch.finfo(torch.float32).tiny)))


class GumbelMaxSampling:
    """A logits processor that turns greedy decoding into sampling with per-row random streams.

    argmax(z + G), G ~ Gumbel(0, 1) i.i.d., is distributed as softmax(z) (the Gumbel-max trick). It runs
    after the temperature / top-k / top-p warpers, so filtered tokens (-inf) stay impossible.
    """

    def __init__(self, seeds: Sequence[int], device):
        import torch

        self.generators = [torch.Generator(device=device).manual_seed(s) for s in seeds]

    def __call__(self, input_ids, scores):
        if scores.shape[0] != len(self.generators):
            raise RuntimeError(f"{scores.shape[0]} rows but {len(self.generators)} random streams")
        return scores + gumbel_noise(self.generators, scores.shape[-1], scores.device).to(scores.dtype)


# ---------------------------------------------------------------------------------------------------
# The sampler
# ---------------------------------------------------------------------------------------------------
class Sampler:
    """Batched, seeded sampling of ``settings.num_return_sequences`` responses per prompt."""

    def __init__(self, model, tokenizer, settings: SamplingSettings, batch_size: int = 16,
                 max_batch_tokens: int = 65536, salt: str = ""):  # fmt: skip
        if settings.num_return_sequences < 1 or settings.max_new_tokens < 1:
            raise IpoError("need at least one response of at least one token per prompt")
        if settings.temperature < 0:
            raise IpoError(f"--temperature must be >= 0, got {settings.temperature}")
        self.model = model
        self.tokenizer = tokenizer
        self.settings = settings
        self.batch_size = batch_size  # prompts per generate call
        self.max_batch_tokens = max_batch_tokens  # rows x (prompt + new tokens) per call
        self.salt = salt
        model_config = getattr(model, "generation_config", None)
        self.stop_ids = stop_token_ids(tokenizer, model_config)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.stop_ids[0]
        self.top_k = settings.top_k if settings.top_k is not None else (getattr(model_config, "top_k", None) or DEFAULT_TOP_K)
        self.top_p = settings.top_p if settings.top_p is not None else (getattr(model_config, "top_p", None) or 1.0)
        self.generation_config = self._generation_config(model_config)
        self.stats = {"prompts": 0, "rows": 0, "new_tokens": 0, "generate_calls": 0}

    def resolved(self) -> dict:
        """What sampling actually used, for config.json."""
        s = self.settings
        return {
            "num_return_sequences": s.num_return_sequences, "temperature": s.temperature,
            "greedy": s.temperature == 0, "max_new_tokens": s.max_new_tokens, "top_k": self.top_k,
            "top_p": self.top_p, "seed": s.seed, "salt": self.salt, "stop_token_ids": self.stop_ids,
            "stop_tokens": self.tokenizer.convert_ids_to_tokens(self.stop_ids), "pad_token_id": self.pad_id,
            "method": "greedy" if s.temperature == 0 else "gumbel-max, one random stream per (prompt, sample)",
        }  # fmt: skip

    def _generation_config(self, model_config):
        from transformers import GenerationConfig

        config = copy.deepcopy(model_config) if model_config is not None else GenerationConfig()
        # Sampling happens in our logits processor; the built-in sampler and warpers are switched off, and
        # the N copies of each prompt are made before generate (greedy generate refuses num_return_sequences).
        config.update(do_sample=False, temperature=None, top_k=None, top_p=None, min_p=None, typical_p=None,
                      num_beams=1, num_return_sequences=1,
                      max_new_tokens=self.settings.max_new_tokens, max_length=None,
                      eos_token_id=self.stop_ids, pad_token_id=self.pad_id)  # fmt: skip
        return config

    def _logits_processors(self, seeds):
        from transformers import LogitsProcessorList
        from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

        if self.settings.temperature == 0:
            return LogitsProcessorList()
        processors = [TemperatureLogitsWarper(self.settings.temperature)]
        if self.top_k and self.top_k > 0:
            processors.append(TopKLogitsWarper(self.top_k))
        if self.top_p < 1.0:
            processors.append(TopPLogitsWarper(self.top_p))
        processors.append(GumbelMaxSampling(seeds, self.model.device))
        return LogitsProcessorList(processors)

    def sample(self, prompts: Sequence[tuple]) -> Iterator[list[Sample]]:
        """``prompts`` = [(prompt_id, token_ids)]; yields the finished Samples of each generate call.

        Prompts are sorted by length (less padding); the order of the yielded samples follows that.
        """
        from ipo.judge import plan_batches

        n = self.settings.num_return_sequences
        lengths = [[len(ids) + self.settings.max_new_tokens] * n for _, ids in prompts]
        for batch in plan_batches(lengths, self.batch_size * n, self.max_batch_tokens):
            yield self._generate([prompts[i] for i in batch])

    def _generate(self, prompts) -> list[Sample]:
        import torch

        from ipo.judge import left_pad

        n = self.settings.num_return_sequences
        if any(len(ids) == 0 for _, ids in prompts):
            raise IpoError("cannot sample from an empty prompt")
        input_ids, attention_mask = left_pad([ids for _, ids in prompts], self.pad_id)
        # Each prompt is repeated n times in a row: row r is prompt r // n, sample r % n.
        input_ids, attention_mask = input_ids.repeat_interleave(n, dim=0), attention_mask.repeat_interleave(n, dim=0)
        seeds = [row_seed(self.settings.seed, self.salt, pid, j) for pid, _ in prompts for j in range(n)]
        with torch.inference_mode():
            output = self.model.generate(
                input_ids=input_ids.to(self.model.device),
                attention_mask=attention_mask.to(self.model.device),
                generation_config=self.generation_config,
                logits_processor=self._logits_processors(seeds),
            )
        new_tokens = output[:, input_ids.shape[1]:].tolist()
        samples = []
        for p, (prompt_id, _) in enumerate(prompts):
            texts, counts, finished = [], [], []
            for row in new_tokens[p * n:(p + 1) * n]:
                ids, stopped = cut_at_stop(row, self.stop_ids)
                texts.append(self.tokenizer.decode(ids, skip_special_tokens=True).strip())
                counts.append(len(ids))
                finished.append(stopped)
            samples.append(Sample(prompt_id, texts, counts, finished))
        self.stats["prompts"] += len(prompts)
        self.stats["rows"] += len(prompts) * n
        self.stats["new_tokens"] += sum(sum(s.n_tokens) for s in samples)
        self.stats["generate_calls"] += 1
        return samples
