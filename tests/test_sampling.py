"""ipo.selfimprove.sampling: stop tokens, cutting by token ids, per-row random streams, batch invariance, Gumbel-max."""

import math

import pytest
import torch

from ipo import IpoError
from ipo.selfimprove.sampling import (
    MAX_SAMPLE_BATCH_TOKENS,
    GumbelMaxSampling,
    Sampler,
    SamplingSettings,
    check_can_generate,
    check_sampling_settings,
    cut_at_stop,
    encode_prompt,
    gumbel_perturb,
    kv_cache_bytes_per_token,
    row_seed,
    sample_batch_tokens,
    stop_token_ids,
)

INSTRUCTIONS = [
    "What is 2 plus 2?",
    "Hello, how are you today?",
    "Answer Yes/No: is the sky blue?",
    "def add(a, b):",
    "The answer is 42.",
    "Review the user's question.",
]


class FakeTokenizer:
    def __init__(self, eos_token_id):
        self.eos_token_id = eos_token_id


class FakeGenerationConfig:
    def __init__(self, eos_token_id):
        self.eos_token_id = eos_token_id


def test_stop_tokens_are_the_union_of_tokenizer_and_generation_config():
    assert stop_token_ids(FakeTokenizer(2), FakeGenerationConfig([7, 2])) == [2, 7]
    assert stop_token_ids(FakeTokenizer(None), FakeGenerationConfig(5)) == [5]
    assert stop_token_ids(FakeTokenizer(3), None) == [3]
    with pytest.raises(IpoError, match="no end-of-sequence token"):
        stop_token_ids(FakeTokenizer(None), FakeGenerationConfig(None))


def test_cut_at_stop_uses_token_ids():
    assert cut_at_stop([5, 6, 2, 7, 2], [2]) == ([5, 6], True)
    assert cut_at_stop([5, 6, 7], [2, 9]) == ([5, 6, 7], False)
    assert cut_at_stop([9, 5], [2, 9]) == ([], True)


def test_row_seeds_are_stable_and_distinct():
    assert row_seed(42, "round1", "p1", 0) == row_seed(42, "round1", "p1", 0)
    seeds = {row_seed(42, salt, pid, j) for salt in ("round1", "round2") for pid in ("p1", "p2", 3) for j in range(4)}
    assert len(seeds) == 24 and all(0 <= s < 2**63 for s in seeds)


def test_gumbel_max_draws_from_the_softmax():
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0, -math.inf])
    rows = 20000
    processor = GumbelMaxSampling([row_seed(0, "t", i, 0) for i in range(rows)])
    picks = processor(None, logits.expand(rows, -1).clone()).argmax(-1)
    frequencies = torch.bincount(picks, minlength=5).float() / rows
    expected = torch.softmax(logits, -1)
    assert frequencies[4] == 0  # a filtered (-inf) token is never drawn
    torch.testing.assert_close(frequencies, expected, atol=0.012, rtol=0)


def test_encode_prompt_formats(tiny_model):
    _, tokenizer = tiny_model
    assert encode_prompt(tokenizer, "What is 2 plus 2?", "upstream") == tokenizer("What is 2 plus 2?").input_ids
    chat = tokenizer.decode(encode_prompt(tokenizer, "What is 2 plus 2?", "chat"))
    assert chat == "<|im_start|>user\nWhat is 2 plus 2?<|im_end|>\n<|im_start|>assistant\n"


def test_chat_format_needs_a_template(tiny_model_no_template_dir):
    from ipo.modeling import load_tokenizer

    with pytest.raises(IpoError, match="no chat template"):
        encode_prompt(load_tokenizer(str(tiny_model_no_template_dir)), "x", "chat")


def sample_all(sampler, prompts):
    return {s.prompt_id: s for batch in sampler.sample(prompts) for s in batch}


def exact_model(tiny_model):
    """The tiny model as the exact-equality tests need it: float32 on the CPU (conftest loads it so, whatever the
    host). In bf16/fp16, or on a GPU, a row's logits depend on its batch by rounding: samples are not
    batch-invariant there."""
    model, tokenizer = tiny_model
    assert model.dtype == torch.float32 and model.device.type == "cpu"
    return model, tokenizer


def test_samples_do_not_depend_on_batching(tiny_model):
    model, tokenizer = exact_model(tiny_model)
    prompts = [(f"p{i}", encode_prompt(tokenizer, x, "chat")) for i, x in enumerate(INSTRUCTIONS)]
    settings = SamplingSettings(num_return_sequences=3, max_new_tokens=12)
    together = sample_all(Sampler(model, tokenizer, settings, batch_size=6, salt="r1"), prompts)
    alone = sample_all(Sampler(model, tokenizer, settings, batch_size=1, salt="r1"), prompts)
    subset = sample_all(Sampler(model, tokenizer, settings, batch_size=2, salt="r1"), prompts[3:])
    assert set(together) == {f"p{i}" for i in range(6)}
    for pid, sample in together.items():
        assert sample.responses == alone[pid].responses and sample.n_tokens == alone[pid].n_tokens
        if pid in subset:
            assert subset[pid].responses == sample.responses
        assert len(sample.responses) == 3 and len(set(sample.responses)) > 1  # sampled, not greedy
        assert all(n <= 12 for n in sample.n_tokens)
        assert all(f == (n < 12) or f for n, f in zip(sample.n_tokens, sample.finished))
    other_salt = sample_all(Sampler(model, tokenizer, settings, batch_size=6, salt="r2"), prompts)
    assert any(other_salt[p].responses != together[p].responses for p in together)


def test_greedy_matches_plain_generate_cut_by_token_ids(tiny_model):
    model, tokenizer = tiny_model
    sampler = Sampler(
        model, tokenizer, SamplingSettings(num_return_sequences=2, temperature=0.0, max_new_tokens=10), batch_size=4
    )
    prompts = [(i, encode_prompt(tokenizer, x, "upstream")) for i, x in enumerate(INSTRUCTIONS[:4])]
    samples = sample_all(sampler, prompts)
    for pid, ids in prompts:
        with torch.no_grad():
            out = model.generate(
                torch.tensor([ids]),
                do_sample=False,
                max_new_tokens=10,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=sampler.stop_ids,
            )
        new, _ = cut_at_stop(out[0, len(ids) :].tolist(), sampler.stop_ids)
        expected = tokenizer.decode(new, skip_special_tokens=True).strip()
        assert samples[pid].responses == [expected, expected] and samples[pid].n_tokens == [len(new)] * 2
    assert sampler.resolved()["greedy"] is True


def test_resolved_settings_follow_the_model(tiny_model):
    model, tokenizer = tiny_model
    resolved = Sampler(model, tokenizer, SamplingSettings()).resolved()
    assert resolved["top_k"] == 50 and resolved["top_p"] == 1.0 and resolved["temperature"] == 0.7
    assert resolved["stop_tokens"] == ["<|im_end|>"] and resolved["num_return_sequences"] == 4
    assert resolved["max_new_tokens"] == 256


def test_a_model_without_eos_is_refused_before_loading(tmp_path):
    from helpers import save_tiny_model

    path = save_tiny_model(tmp_path / "no_eos", eos=False)
    with pytest.raises(IpoError, match="end-of-sequence"):
        check_can_generate(str(path))


def test_decode_loop_matches_generate_and_skips_finished_rows(tiny_model):
    """The own decode loop (rows leave the batch when they end) gives model.generate's tokens."""
    model, tokenizer = exact_model(tiny_model)
    prompts = [(f"p{i}", encode_prompt(tokenizer, x, "upstream")) for i, x in enumerate(INSTRUCTIONS)]
    settings = SamplingSettings(num_return_sequences=4, max_new_tokens=30)

    def sampler(use_generate):
        s = Sampler(model, tokenizer, settings, batch_size=6, salt="loop")
        s.stop_ids = [3, 4, 5]  # three frequent tokens end a response: rows stop at many lengths
        s.generation_config = s._generation_config(model.generation_config)
        s.generate_only = ["forced by the test"] if use_generate else []
        return s

    looped, generated = sampler(False), sampler(True)
    a, b = sample_all(looped, prompts), sample_all(generated, prompts)
    assert {pid: s.responses for pid, s in a.items()} == {pid: s.responses for pid, s in b.items()}
    assert {pid: s.finished for pid, s in a.items()} == {pid: s.finished for pid, s in b.items()}
    lengths = [n for s in a.values() for n in s.n_tokens]
    assert 0 < sum(f for s in a.values() for f in s.finished) < len(lengths)  # some rows ended, some ran out
    assert looped.stats["row_steps"] == sum(min(n + 1, 30) for n in lengths)  # one step per token, + the stop
    assert generated.stats["row_steps"] == len(lengths) * (max(lengths) + (max(lengths) < 30))


def test_generation_config_processors_force_generate(tiny_model):
    from transformers import GenerationConfig

    model, tokenizer = tiny_model
    original = model.generation_config
    try:
        model.generation_config = GenerationConfig(
            eos_token_id=original.eos_token_id, no_repeat_ngram_size=3, repetition_penalty=1.1
        )
        sampler = Sampler(model, tokenizer, SamplingSettings(max_new_tokens=4))
        assert sampler.generate_only == ["no_repeat_ngram_size"] and sampler.repetition_penalty == 1.1
        assert sampler.resolved()["decoding"].startswith("model.generate")
        model.generation_config = GenerationConfig(eos_token_id=original.eos_token_id, repetition_penalty=1.1)
        assert Sampler(model, tokenizer, SamplingSettings()).generate_only == []
    finally:
        model.generation_config = original


# ---------------------------------------------------------------------------------------------------
# Gumbel noise: the same numbers as one draw per row, fewer launches on a GPU
# ---------------------------------------------------------------------------------------------------
def per_row_gumbel(scores, generators):
    """The former gumbel_perturb: one torch.rand per row on the scores' device, then a scatter by index."""
    rows, cols = (scores > -torch.inf).nonzero(as_tuple=True)
    counts = torch.bincount(rows, minlength=scores.shape[0]).tolist()
    uniform = torch.cat(
        [torch.rand(c, generator=g, device=scores.device, dtype=torch.float32) for g, c in zip(generators, counts)]
    )
    gumbel = -torch.log(-torch.log(uniform.clamp_(min=torch.finfo(torch.float32).tiny)))
    out = torch.full_like(scores, -torch.inf)
    out[rows, cols] = scores[rows, cols] + gumbel.to(scores.dtype)
    return out


def test_gumbel_noise_is_each_rows_own_stream_drawn_at_once():
    """Both placements (by index on the CPU; by one mask scatter, one read back, one copy on a GPU) add exactly the
    numbers that one torch.rand per row added before, on CPU float32, for rows with different numbers of finite
    entries; a row's noise does not depend on the other rows."""
    from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

    torch.manual_seed(0)
    scores = TopPLogitsWarper(0.8)(None, TopKLogitsWarper(40)(None, torch.randn(7, 300) * 2))
    scores[3, :] = -torch.inf
    scores[3, 17] = 1.0  # a row with a single finite entry

    def streams(rows=range(7)):
        return [torch.Generator().manual_seed(row_seed(5, "g", r, 0)) for r in rows]

    expected = per_row_gumbel(scores, streams())
    for dense in (False, True):
        assert torch.equal(gumbel_perturb(scores, streams(), dense=dense), expected)
    assert torch.equal(gumbel_perturb(scores[4:6], streams(range(4, 6)), dense=True), expected[4:6])
    assert all(g.device.type == "cpu" for g in GumbelMaxSampling([1, 2]).generators)  # the same on every device


# ---------------------------------------------------------------------------------------------------
# The sampler's batch budget: the key/value cache it allocates
# ---------------------------------------------------------------------------------------------------
def test_the_batch_budget_counts_the_key_value_cache():
    from transformers import LlamaConfig, MistralConfig

    llama2_7b = LlamaConfig(hidden_size=4096, num_attention_heads=32, num_key_value_heads=32, num_hidden_layers=32)
    mistral_7b = MistralConfig(hidden_size=4096, num_attention_heads=32, num_key_value_heads=8, num_hidden_layers=32)
    # 32 layers x 32 key/value heads x 128 per head x 2 (K, V) x 2 bytes = 0.5 MiB per position in bf16
    assert kv_cache_bytes_per_token(llama2_7b, torch.bfloat16) == 32 * 32 * 128 * 2 * 2 == 2**19
    assert kv_cache_bytes_per_token(llama2_7b, torch.float32) == 2**20
    assert kv_cache_bytes_per_token(mistral_7b, torch.bfloat16) == 32 * 8 * 128 * 2 * 2
    # the former fixed budget of 65,536 positions was 32 GiB of cache for a Llama-2-7B in bf16
    assert MAX_SAMPLE_BATCH_TOKENS * kv_cache_bytes_per_token(llama2_7b, torch.bfloat16) == 32 * 2**30
    assert sample_batch_tokens(2**19) == 16384  # 8 GiB by default
    assert sample_batch_tokens(2**19, cache_bytes=2 * 2**30) == 4096
    assert sample_batch_tokens(32 * 8 * 128 * 2 * 2) == MAX_SAMPLE_BATCH_TOKENS  # 8 GiB exactly
    assert sample_batch_tokens(512) == MAX_SAMPLE_BATCH_TOKENS  # small models keep the cap
    assert sample_batch_tokens(None) == MAX_SAMPLE_BATCH_TOKENS  # a config that does not say
    gemma_like = LlamaConfig(
        hidden_size=2048, num_attention_heads=8, num_key_value_heads=1, head_dim=256, num_hidden_layers=18
    )
    assert kv_cache_bytes_per_token(gemma_like, torch.bfloat16) == 18 * 1 * 256 * 2 * 2  # head_dim as configured


def test_the_sampler_batches_within_its_cache_budget(tiny_model):
    model, tokenizer = exact_model(tiny_model)
    per_token = 2 * 2 * 16 * 2 * 4  # the tiny Llama: 2 layers, 2 key/value heads of 16, float32
    sampler = Sampler(model, tokenizer, SamplingSettings(num_return_sequences=2, max_new_tokens=6), salt="b")
    assert sampler.kv_bytes_per_token == per_token and sampler.max_batch_tokens == MAX_SAMPLE_BATCH_TOKENS
    resolved = sampler.resolved()
    assert (resolved["max_batch_tokens"], resolved["kv_cache_bytes_per_token"]) == (MAX_SAMPLE_BATCH_TOKENS, per_token)
    prompts = [(f"p{i}", encode_prompt(tokenizer, x, "upstream")) for i, x in enumerate(INSTRUCTIONS)]
    longest = max(len(ids) for _, ids in prompts) + 6
    small = Sampler(
        model,
        tokenizer,
        SamplingSettings(num_return_sequences=2, max_new_tokens=6),
        salt="b",
        kv_cache_bytes=per_token * 2 * longest,
    )  # room for one prompt's 2 rows
    assert small.max_batch_tokens == 2 * longest
    batches = list(small.sample(prompts))
    assert [len(b) for b in batches] == [1] * len(prompts)
    assert {s.prompt_id: s.responses for b in batches for s in b} == {
        pid: s.responses for pid, s in sample_all(sampler, prompts).items()
    }
    assert Sampler(model, tokenizer, SamplingSettings(), max_batch_tokens=100).max_batch_tokens == 100


@pytest.mark.parametrize(
    "settings, message",
    [
        (SamplingSettings(top_p=2.0), "--top_p must be in"),
        (SamplingSettings(top_p=0.0), "--top_p must be in"),
        (SamplingSettings(top_k=-1), "--top_k must be >= 0"),
        (SamplingSettings(temperature=-1.0), "--temperature"),
        (SamplingSettings(temperature=math.nan), "--temperature"),
        (SamplingSettings(max_new_tokens=0), "at least one"),
    ],
)
def test_sampling_settings_are_checked(settings, message):
    with pytest.raises(IpoError, match=message):
        check_sampling_settings(settings)
