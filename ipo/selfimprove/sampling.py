"""Sampling N responses per prompt: batched across prompts, reproducible per prompt, cut by token ids.

Upstream (DPO/ours.py, DPO/sample_responses.py) called ``generate`` four times per instruction with batch
size 1, seeded once globally, and cut each response off the decoded text by the prompt's character
length. Here:

* one batch covers many prompts (left-padded), N rows each, and a row leaves the batch once it has
  ended (an own decode loop with a KV cache; ``model.generate`` when the model's generation config asks
  for logits processors that only it applies);
* each response is cut from the generated **token ids** at the first stop token, then decoded;
* every (prompt, sample) row draws its randomness from its own generator, seeded from (seed, salt,
  prompt id, sample index), so a prompt's samples do not depend on which prompts share its batch, on the
  batch size, or on resuming: sampling is Gumbel-max (argmax of the warped logits plus Gumbel noise), an
  exact draw from the same softmax(logits / T) with top-k / top-p filtering that ``do_sample=True``
  would use. The model's other generation settings (repetition penalty, ...) still apply. The streams
  are CPU generators on every device, so a row's noise is the same on a CPU and a GPU. The logits it is
  added to depend on the batch by float rounding: in float32 on the CPU by noise (< 1e-5) that flips a
  token only at a near-exact tie, so samples are batch- and resume-invariant in practice (the tests
  assert equality there); in bf16/fp16, or on another device, they are not;
* a batch holds at most ``max_batch_tokens`` padded positions, by default as many as a key/value cache of
  8 GiB holds (``kv_cache_bytes_per_token``: layers x key/value heads x head size x 2 x dtype bytes), and
  never more than 65,536.

Two prompt formats (``--prompt_format``):
  upstream  the raw instruction, tokenised with the tokenizer's special tokens (BOS for Llama/Mistral)
  chat      the tokenizer's chat template, one user turn plus the generation prompt

``sample_into_log`` is the loop's sampling stage (and DPO/sample_responses.py's whole job): it appends one
record per prompt to responses.jsonl as batches finish, and a re-run samples only the prompts it lacks.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import logging
import math
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from tqdm.auto import tqdm

from ipo import IpoError
from ipo.judges.batching import left_pad, plan_batches
from ipo.judges.server import read_generation_config
from ipo.modeling import load_tokenizer
from ipo.runs import RecordLog
from ipo.selfimprove.prompts_pool import Prompt

logger = logging.getLogger("ipo")

DEFAULT_TOP_K = 50  # transformers' default when neither the model nor the user sets one (upstream ran with it)
# The sampler's batches are bounded by the key/value cache they allocate: rows x padded (prompt + new tokens)
# positions, each costing kv_cache_bytes_per_token. The default cache budget is 8 GiB, and never more than
# 65,536 positions (the former fixed budget; small models stay there): a Llama-2-7B in bf16 (0.5 MiB per
# position) gets 16,384 positions, a Mistral-7B (8 key/value heads: 128 KiB) 65,536.
DEFAULT_KV_CACHE_BYTES = 8 * 2**30
MAX_SAMPLE_BATCH_TOKENS = 65536


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


# ---------------------------------------------------------------------------------------------------
# Pure helpers
# ---------------------------------------------------------------------------------------------------
def check_sampling_settings(settings: SamplingSettings) -> None:
    """One line (IpoError) for sampling settings that cannot work or would be silently clipped."""
    if settings.num_return_sequences < 1 or settings.max_new_tokens < 1:
        raise IpoError("need at least one response of at least one token per prompt")
    if not 0 <= settings.temperature < math.inf:
        raise IpoError(f"--temperature must be >= 0 (0: greedy), got {settings.temperature}")
    if settings.top_k is not None and settings.top_k < 0:
        raise IpoError(f"--top_k must be >= 0 (0: no top-k filter), got {settings.top_k}")
    if settings.top_p is not None and not 0 < settings.top_p <= 1:
        raise IpoError(f"--top_p must be in (0, 1], got {settings.top_p}")


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
    tokenizer = load_tokenizer(model_name_or_path, trust_remote_code=trust_remote_code)
    return stop_token_ids(tokenizer, read_generation_config(model_name_or_path, trust_remote_code))


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
            raise IpoError(
                "this tokenizer has no chat template, so --prompt_format chat cannot be used; "
                "use --prompt_format upstream"
            )
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": instruction}], tokenize=False, add_generation_prompt=True
        )
        return tokenizer(text, add_special_tokens=False).input_ids  # the template already holds BOS if any
    raise ValueError(f"unknown prompt format {prompt_format!r}")


def gumbel_perturb(scores, generators, dense: bool | None = None):
    """``scores`` (R, V) plus standard Gumbel noise on every finite entry; row r's noise comes from
    ``generators[r]`` (a CPU generator), one uniform per finite entry in token-id order.

    After top-k filtering only ~k entries per row are finite, so only those draw noise (a full-vocabulary
    draw per row and step would cost more than the model's decode step on a CPU). How many numbers a row
    draws depends only on its own logits, so its stream stays independent of the rest of the batch.

    The noise is drawn on the CPU whatever the scores' device, so a seed gives the same numbers on every
    device. On a GPU (``dense``, the default off the CPU) a step reads back only the rows' counts of finite
    entries (one sync) and copies all rows' noise in once, scattered by a mask: no random-number kernel per
    row and no second sync. On the CPU, where syncs cost nothing, the finite entries are indexed directly,
    which is cheaper there. Both place the same numbers.
    """
    import torch

    finite = scores > -torch.inf
    dense = scores.device.type != "cpu" if dense is None else dense
    if dense:
        counts = finite.sum(-1).tolist()  # the step's one read back from the device
    else:
        rows, cols = finite.nonzero(as_tuple=True)  # row-major: row 0's tokens first, by id
        counts = torch.bincount(rows, minlength=scores.shape[0]).tolist()
    uniform = torch.cat(
        [torch.rand(count, generator=generator, dtype=torch.float32) for generator, count in zip(generators, counts)]
    )
    gumbel = -torch.log(-torch.log(uniform.clamp_(min=torch.finfo(torch.float32).tiny)))
    gumbel = gumbel.to(scores.device, scores.dtype)
    if dense:  # masked_scatter fills the finite entries in row-major order, as nonzero lists them
        noise = torch.zeros_like(scores).masked_scatter_(finite, gumbel)
        return torch.where(finite, scores + noise, torch.full_like(scores, -torch.inf))
    out = torch.full_like(scores, -torch.inf)
    out[rows, cols] = scores[rows, cols] + gumbel
    return out


def kv_cache_bytes_per_token(model_config, dtype) -> int | None:
    """Bytes of key/value cache one token position takes: layers x key/value heads x head size x 2 (K and V)
    x the dtype's bytes; None when the config does not say (the caller then falls back to a token count)."""
    import torch

    config = model_config.get_text_config() if hasattr(model_config, "get_text_config") else model_config
    layers, heads = getattr(config, "num_hidden_layers", None), getattr(config, "num_attention_heads", None)
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None)
    if not head_dim and heads and getattr(config, "hidden_size", None):
        head_dim = config.hidden_size // heads
    if not (isinstance(layers, int) and isinstance(kv_heads, int) and isinstance(head_dim, int)):
        return None
    dtype = dtype if isinstance(dtype, torch.dtype) else torch.float32
    return layers * kv_heads * head_dim * 2 * torch.empty((), dtype=dtype).element_size()


def sample_batch_tokens(
    bytes_per_token: int | None, cache_bytes: int = DEFAULT_KV_CACHE_BYTES, cap: int = MAX_SAMPLE_BATCH_TOKENS
) -> int:
    """Token positions per generate call whose key/value cache fits ``cache_bytes`` (at most ``cap``)."""
    if not bytes_per_token:
        return cap
    return max(1, min(cap, cache_bytes // bytes_per_token))


class GumbelMaxSampling:
    """A logits processor that turns greedy decoding into sampling with per-row random streams.

    argmax(z + G), G ~ Gumbel(0, 1) i.i.d., is distributed as softmax(z) (the Gumbel-max trick). It runs
    after the temperature / top-k / top-p warpers, so filtered tokens (-inf) stay impossible. The streams
    are CPU generators on every device (gumbel_perturb), so samples do not depend on which device draws.
    """

    def __init__(self, seeds: Sequence[int]):
        import torch

        self.generators = [torch.Generator(device="cpu").manual_seed(s) for s in seeds]

    def __call__(self, input_ids, scores):
        if scores.shape[0] != len(self.generators):
            raise RuntimeError(f"{scores.shape[0]} rows but {len(self.generators)} random streams")
        return gumbel_perturb(scores, self.generators)

    def keep_rows(self, rows: Sequence[int]) -> None:
        """Follow the batch when finished rows leave it."""
        self.generators = [self.generators[i] for i in rows]


# Generation-config settings that add logits processors. When a model's config sets none of them (beyond a
# repetition penalty, which the decode loop applies itself), Sampler runs its own decode loop, which drops
# finished rows from the batch; otherwise it calls model.generate, which applies them all.
_GENERATE_ONLY_SETTINGS = {
    "no_repeat_ngram_size": 0,
    "encoder_repetition_penalty": 1.0,
    "encoder_no_repeat_ngram_size": 0,
    "bad_words_ids": None,
    "min_length": 0,
    "min_new_tokens": None,
    "forced_bos_token_id": None,
    "forced_eos_token_id": None,
    "suppress_tokens": None,
    "begin_suppress_tokens": None,
    "sequence_bias": None,
    "exponential_decay_length_penalty": None,
    "renormalize_logits": False,
    "guidance_scale": None,
    "epsilon_cutoff": 0.0,
    "eta_cutoff": 0.0,
    "watermarking_config": None,
    "remove_invalid_values": False,
}


def filter_settings(settings: SamplingSettings, generation_config) -> tuple[int, float, float | None]:
    """(top_k, top_p, repetition_penalty) a sampler uses: the flags where set, else the model's generation
    config, else transformers' defaults (50, 1.0); a penalty of 1.0 is none. One rule for the local sampler
    and the server sampler, so the two draw from the same distribution."""
    model_top_k = getattr(generation_config, "top_k", None) or DEFAULT_TOP_K
    top_k = settings.top_k if settings.top_k is not None else model_top_k
    top_p = settings.top_p if settings.top_p is not None else (getattr(generation_config, "top_p", None) or 1.0)
    penalty = getattr(generation_config, "repetition_penalty", None)
    return top_k, top_p, penalty if penalty not in (None, 1.0) else None


def needs_generate(generation_config) -> list[str]:
    """The generation-config settings (other than repetition_penalty) that only model.generate applies."""
    if generation_config is None:
        return []
    return [
        name
        for name, default in _GENERATE_ONLY_SETTINGS.items()
        if getattr(generation_config, name, None) not in (None, default)
    ]


# ---------------------------------------------------------------------------------------------------
# The sampler
# ---------------------------------------------------------------------------------------------------
class Sampler:
    """Batched, seeded sampling of ``settings.num_return_sequences`` responses per prompt."""

    def __init__(
        self,
        model,
        tokenizer,
        settings: SamplingSettings,
        batch_size: int = 16,
        max_batch_tokens: int | None = None,
        salt: str = "",
        kv_cache_bytes: int = DEFAULT_KV_CACHE_BYTES,
    ):
        check_sampling_settings(settings)
        self.model = model
        self.tokenizer = tokenizer
        self.settings = settings
        self.batch_size = batch_size  # prompts per generate call
        # rows x padded (prompt + new tokens) per call; unset: what a kv_cache_bytes key/value cache holds
        config, dtype = getattr(model, "config", None), getattr(model, "dtype", None)
        self.kv_bytes_per_token = kv_cache_bytes_per_token(config, dtype)
        self.max_batch_tokens = max_batch_tokens or sample_batch_tokens(self.kv_bytes_per_token, kv_cache_bytes)
        self.salt = salt
        model_config = getattr(model, "generation_config", None)
        self.stop_ids = stop_token_ids(tokenizer, model_config)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.stop_ids[0]
        self.top_k, self.top_p, self.repetition_penalty = filter_settings(settings, model_config)
        self.generation_config = self._generation_config(model_config)
        self.generate_only = needs_generate(model_config)  # non-empty: use model.generate (no row pruning)
        self.stats = {"prompts": 0, "rows": 0, "new_tokens": 0, "generate_calls": 0, "row_steps": 0}

    def resolved(self) -> dict:
        """What sampling actually used, for config.json."""
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
            "pad_token_id": self.pad_id,
            "method": "greedy" if s.temperature == 0 else "gumbel-max, one random stream per (prompt, sample)",
            "repetition_penalty": self.repetition_penalty,
            "max_batch_tokens": self.max_batch_tokens,
            "kv_cache_bytes_per_token": self.kv_bytes_per_token,
            "decoding": (
                f"model.generate (the generation config sets {', '.join(self.generate_only)})"
                if self.generate_only
                else "own loop, finished rows leave the batch"
            ),
        }

    def _generation_config(self, model_config):
        from transformers import GenerationConfig

        config = copy.deepcopy(model_config) if model_config is not None else GenerationConfig()
        # Sampling happens in our logits processor; the built-in sampler and warpers are switched off, and
        # the N copies of each prompt are made before generate (greedy generate refuses num_return_sequences).
        config.update(
            do_sample=False,
            temperature=None,
            top_k=None,
            top_p=None,
            min_p=None,
            typical_p=None,
            num_beams=1,
            num_return_sequences=1,
            max_new_tokens=self.settings.max_new_tokens,
            max_length=None,
            eos_token_id=self.stop_ids,
            pad_token_id=self.pad_id,
        )
        return config

    def _logits_processors(self, seeds, with_repetition_penalty: bool = False):
        from transformers import LogitsProcessorList
        from transformers.generation.logits_process import (
            RepetitionPenaltyLogitsProcessor,
            TemperatureLogitsWarper,
            TopKLogitsWarper,
            TopPLogitsWarper,
        )

        processors = []
        if with_repetition_penalty and self.repetition_penalty:  # model.generate adds it itself
            processors.append(RepetitionPenaltyLogitsProcessor(self.repetition_penalty))
        if self.settings.temperature == 0:
            return LogitsProcessorList(processors)
        processors.append(TemperatureLogitsWarper(self.settings.temperature))
        if self.top_k and self.top_k > 0:
            processors.append(TopKLogitsWarper(self.top_k))
        if self.top_p < 1.0:
            processors.append(TopPLogitsWarper(self.top_p))
        processors.append(GumbelMaxSampling(seeds))
        return LogitsProcessorList(processors)

    def sample(self, prompts: Sequence[tuple]) -> Iterator[list[Sample]]:
        """``prompts`` = [(prompt_id, token_ids)]; yields the finished Samples of each generate call.

        Prompts are sorted by length (less padding); the order of the yielded samples follows that.
        """
        n = self.settings.num_return_sequences
        lengths = [[len(ids) + self.settings.max_new_tokens] * n for _, ids in prompts]
        for batch in plan_batches(lengths, self.batch_size * n, self.max_batch_tokens):
            yield self._generate([prompts[i] for i in batch])

    def _generate(self, prompts) -> list[Sample]:
        import torch

        n = self.settings.num_return_sequences
        if any(len(ids) == 0 for _, ids in prompts):
            raise IpoError("cannot sample from an empty prompt")
        input_ids, attention_mask = left_pad([ids for _, ids in prompts], self.pad_id)
        # Each prompt is repeated n times in a row: row r is prompt r // n, sample r % n.
        input_ids, attention_mask = input_ids.repeat_interleave(n, dim=0), attention_mask.repeat_interleave(n, dim=0)
        input_ids, attention_mask = input_ids.to(self.model.device), attention_mask.to(self.model.device)
        seeds = [row_seed(self.settings.seed, self.salt, pid, j) for pid, _ in prompts for j in range(n)]
        with torch.inference_mode():
            if self.generate_only:
                rows = self._with_generate(input_ids, attention_mask, seeds)
            else:
                rows = self._with_decode_loop(input_ids, attention_mask, seeds)
        samples = []
        for p, (prompt_id, _) in enumerate(prompts):
            texts, counts, finished = [], [], []
            for ids, stopped in rows[p * n : (p + 1) * n]:
                texts.append(self.tokenizer.decode(ids, skip_special_tokens=True).strip())
                counts.append(len(ids))
                finished.append(stopped)
            samples.append(Sample(prompt_id, texts, counts, finished))
        self.stats["prompts"] += len(prompts)
        self.stats["rows"] += len(prompts) * n
        self.stats["new_tokens"] += sum(sum(s.n_tokens) for s in samples)
        self.stats["generate_calls"] += 1
        return samples

    def _with_generate(self, input_ids, attention_mask, seeds) -> list[tuple[list[int], bool]]:
        """model.generate: every row stays in the batch until the longest one ends."""
        output = self.model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            generation_config=self.generation_config,
            logits_processor=self._logits_processors(seeds),
        )
        new_tokens = output[:, input_ids.shape[1] :]
        self.stats["row_steps"] += new_tokens.numel()
        return [cut_at_stop(row, self.stop_ids) for row in new_tokens.tolist()]

    def _with_decode_loop(self, input_ids, attention_mask, seeds) -> list[tuple[list[int], bool]]:
        """Token-by-token decoding with a KV cache, dropping each row from the batch once it has ended.

        Same logits, processors and random streams as model.generate, so the same tokens (up to float
        noise from the changing batch); but no compute is spent on rows that already stopped, which on a
        CPU (compute-bound at these batch sizes) is most of the saving when responses end early.
        """
        import torch

        processors = self._logits_processors(seeds, with_repetition_penalty=True)
        keeps_logits = "logits_to_keep" in inspect.signature(self.model.forward).parameters
        forward_kwargs = {"logits_to_keep": 1} if keeps_logits else {}
        stop = torch.tensor(self.stop_ids, device=input_ids.device)
        tokens: list[list[int]] = [[] for _ in range(input_ids.shape[0])]
        finished = [False] * input_ids.shape[0]
        active = list(range(input_ids.shape[0]))  # original row of each batch row
        sequences = input_ids  # prompt + tokens so far, for the repetition penalty
        positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        out = self.model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=positions, use_cache=True, **forward_kwargs
        )
        cache = out.past_key_values
        for step in range(self.settings.max_new_tokens):
            scores = processors(sequences, out.logits[:, -1, :].float())
            next_tokens = scores.argmax(-1)
            self.stats["row_steps"] += len(active)
            stopped = torch.isin(next_tokens, stop).tolist()
            for row, token, ended in zip(active, next_tokens.tolist(), stopped):
                if ended:
                    finished[row] = True
                else:
                    tokens[row].append(token)
            keep = [i for i, ended in enumerate(stopped) if not ended]
            if not keep or step == self.settings.max_new_tokens - 1:
                break
            if len(keep) < len(active):
                index = torch.tensor(keep, device=input_ids.device)
                cache.batch_select_indices(index)
                attention_mask, sequences, next_tokens = attention_mask[index], sequences[index], next_tokens[index]
                active = [active[i] for i in keep]
                for processor in processors:
                    if hasattr(processor, "keep_rows"):
                        processor.keep_rows(keep)
            sequences = torch.cat([sequences, next_tokens[:, None]], dim=-1)
            attention_mask = torch.cat([attention_mask, attention_mask.new_ones((len(active), 1))], dim=-1)
            out = self.model(
                input_ids=next_tokens[:, None],
                attention_mask=attention_mask,
                position_ids=attention_mask.sum(-1, keepdim=True) - 1,
                past_key_values=cache,
                use_cache=True,
                **forward_kwargs,
            )
        return [(row_tokens, ended) for row_tokens, ended in zip(tokens, finished)]


# ---------------------------------------------------------------------------------------------------
# Sampling into a record log (resumable: a prompt already in the log is not sampled again)
# ---------------------------------------------------------------------------------------------------
def _progress(total: int, done: int, desc: str, unit: str):
    return tqdm(
        total=total,
        initial=done,
        desc=desc,
        unit=unit,
        dynamic_ncols=True,
        mininterval=0.5 if sys.stderr.isatty() else 30,
    )


def sample_into_log(
    sampler,
    tokenizer,
    prompts: Sequence[Prompt],
    log: RecordLog,
    prompt_format: str,
    desc: str = "sampling",
    cut_at: str | None = None,
) -> int:
    """Sample responses for the prompts ``log`` lacks, appending one record per prompt as batches finish.

    ``cut_at``: a literal marker each response is cut at (then stripped), as upstream DPO/self_reward.py did
    with '<|eot_id|>'; this matters once a model trained on upstream's records writes the marker as text.
    """
    todo = [p for p in prompts if p.id not in log]
    if not todo:
        logger.info("all %d prompts already sampled in %s", len(prompts), log.path)
        return 0
    by_id = {str(p.id): p for p in todo}
    encoded = [(p.id, encode_prompt(tokenizer, p.instruction, prompt_format)) for p in todo]
    with _progress(len(prompts), len(prompts) - len(todo), desc, "prompt") as bar:
        for batch in sampler.sample(encoded):
            records = []
            for sample in batch:
                prompt = by_id[str(sample.prompt_id)]
                responses = sample.responses
                if cut_at:
                    responses = [r.split(cut_at)[0].strip() if cut_at in r else r for r in responses]
                records.append(
                    {
                        "id": prompt.id,
                        "prompt": prompt.instruction,
                        "category": prompt.category,
                        "responses": responses,
                        "n_tokens": sample.n_tokens,
                        "finished": sample.finished,
                    }
                )
            log.append(records)
            bar.update(len(batch))
    return len(todo)
