"""Right numbers in half precision and on big judges: the float32 Yes/No head, the reward head, the NaN
guard, the auto dtype on GPUs without native bf16, and a judge placed over several devices.

bf16 and fp16 on the CPU reproduce the rounding and overflow that a GPU run would meet; accelerate's
offloading to "disk" stands in for a second device (a CPU-only machine has no other).
"""

import json
import math
from types import SimpleNamespace

import pytest
import torch
from helpers import REPO, build_tokenizer

from ipo import IpoError
from ipo.data import Example
from ipo.judges.reward_model import RewardModelScorer
from ipo.judges.self_reward import SelfRewardScorer
from ipo.judges.yes_no import YesNoJudge, YesNoScorer, yes_no_head
from ipo.modeling import SHARD, apply_rows, linear_rows, load_model, load_tokenizer, resolve_device, resolve_dtype
from ipo.prompts import REWARDBENCH_LAYOUT

QUESTION = "Is the response correct? Answer Yes/No."


def make_examples(n=12):
    examples = []
    for i in range(n):
        responses = [f"It is {2 * i}." + " Yes indeed" * (i % 5), f"It is {i}." + " Hello there" * (i % 3)]
        examples.append(Example(id=i, prompt=f"What is {i} plus {i}?" + " Explain." * (i % 4), responses=responses))
    return examples


def demo_examples():
    rows = [json.loads(line) for line in (REPO / "data" / "demo_rewardbench.jsonl").read_text().splitlines()]
    return [Example(id=r["id"], prompt=r["prompt"], responses=[r["chosen"], r["rejected"]]) for r in rows]


def scores_of(judge, examples):
    out = {}
    for batch in YesNoScorer(judge, REWARDBENCH_LAYOUT, lambda e: QUESTION).score(examples):
        out.update({example.id: scores for example, scores, _ in batch})
    return out


def full_logit_scores(judge, examples):
    """The same judge reading the model's full logits in its dtype (the path before the float32 head)."""
    head, judge.head = judge.head, None
    try:
        return scores_of(judge, examples)
    finally:
        judge.head = head


def summary(scores, reference, other):
    """(ties, distinct values, max |dP| and verdict flips vs ``reference``, max |dP| vs ``other``)."""
    values = [v for pair in scores.values() for v in pair]
    flips = sum((scores[k][0] > scores[k][1]) != (reference[k][0] > reference[k][1]) for k in scores)
    return {
        "ties": sum(pair[0] == pair[1] for pair in scores.values()),
        "distinct": len(set(values)),
        "max_dp_vs_reference": max(abs(a - b) for k in scores for a, b in zip(scores[k], reference[k])),
        "flips_vs_reference": flips,
        "max_dp_vs_other": max(abs(a - b) for k in scores for a, b in zip(scores[k], other[k])),
    }


def load_large_logits(model_dir, dtype):
    """The tiny judge in ``dtype`` with Yes/No logits of 10-30 apart by about 1, as in real judges (the random
    model's logits are near 0, where bf16 rounds finely): No's row scaled by 150, Yes's row No's plus 3 times
    their difference."""
    model, _, _ = load_model(str(model_dir), dtype=dtype, device="cpu")
    tokenizer = load_tokenizer(str(model_dir))
    (yes,) = tokenizer.encode(" Yes", add_special_tokens=False)
    (no,) = tokenizer.encode(" No", add_special_tokens=False)
    weight = model.get_output_embeddings().weight
    with torch.no_grad():
        difference = weight[yes].float() - weight[no].float()
        weight[no] = (150.0 * weight[no].float()).to(weight.dtype)
        weight[yes] = (weight[no].float() + 3.0 * difference).to(weight.dtype)
    return model


def load_large_rewards(model_dir, dtype):
    """The tiny reward model in ``dtype`` with its head scaled by 4: rewards of 10-40."""
    model, _, _ = load_model(str(model_dir), dtype=dtype, device="cpu", kind="sequence_classification")
    with torch.no_grad():
        model.score.weight.mul_(4.0)
    return model


# ---------------------------------------------------------------------------------------------------
# The float32 Yes/No head
# ---------------------------------------------------------------------------------------------------
def test_float32_head_gives_todays_scores(tiny_model):
    model, tokenizer = tiny_model
    for scoring in ("upstream", "chat"):
        judge = YesNoJudge(model, tokenizer, scoring, batch_size=8)
        assert judge.head is not None  # the Yes/No rows path really runs
        examples = make_examples(8)
        ours, full = scores_of(judge, examples), full_logit_scores(judge, examples)
        for key in full:
            assert ours[key] == pytest.approx(full[key], abs=1e-6)


@pytest.mark.parametrize("architecture", ["gemma2_softcap", "cohere_logit_scale", "granite_logits_scaling"])
def test_final_logit_transforms_are_applied_to_the_yes_no_rows(architecture):
    from transformers import (
        Cohere2Config,
        Cohere2ForCausalLM,
        Gemma2Config,
        Gemma2ForCausalLM,
        GraniteConfig,
        GraniteForCausalLM,
    )

    tokenizer = build_tokenizer()
    config_class, model_class, extra, expected = {
        "gemma2_softcap": (
            Gemma2Config,
            Gemma2ForCausalLM,
            {"final_logit_softcapping": 0.5, "head_dim": 16},
            (1.0, 0.5),
        ),
        "cohere_logit_scale": (Cohere2Config, Cohere2ForCausalLM, {"logit_scale": 0.25}, (0.25, None)),
        "granite_logits_scaling": (GraniteConfig, GraniteForCausalLM, {"logits_scaling": 4.0}, (0.25, None)),
    }[architecture]
    torch.manual_seed(0)
    config = config_class(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        **extra,
    )
    judge = YesNoJudge(model_class(config).eval(), tokenizer, "upstream", batch_size=8)
    assert judge.head is not None and (judge.head.scale, judge.head.softcap) == expected
    examples = make_examples(4)
    ours, full = scores_of(judge, examples), full_logit_scores(judge, examples)
    for key in full:
        assert ours[key] == pytest.approx(full[key], abs=1e-6)


def test_an_unknown_logit_transform_falls_back_to_the_full_logits(tiny_model_dir):
    model, _, _ = load_model(str(tiny_model_dir), dtype="float32", device="cpu")
    tokenizer = load_tokenizer(str(tiny_model_dir))
    forward = model.forward

    def scaled_forward(*args, **kwargs):  # a remote-code model that rescales its logits after the head
        out = forward(*args, **kwargs)
        out.logits = out.logits * 3.0
        return out

    model.forward = scaled_forward
    head, why = yes_no_head(model, YesNoJudge(model, tokenizer, "upstream").tokens)
    assert head is None and "differs from the model's own logits" in why
    assert YesNoJudge(model, tokenizer, "upstream").head is None


def test_bf16_head_has_no_rounding_ties(tiny_model_dir):
    """Yes/No logits of 10-30: bf16 logits round to steps of 0.06-0.125 and P(Yes) ties; the float32 rows
    on the same bf16 hidden states do not."""
    tokenizer = load_tokenizer(str(tiny_model_dir))
    examples = make_examples(17)[1:]  # example 0's two responses are the same text
    reference = scores_of(YesNoJudge(load_large_logits(tiny_model_dir, "float32"), tokenizer, "upstream"), examples)
    assert len({v for pair in reference.values() for v in pair}) == 32 and all(a != b for a, b in reference.values())
    judge = YesNoJudge(load_large_logits(tiny_model_dir, "bfloat16"), tokenizer, "upstream", batch_size=8)
    assert judge.head is not None
    ours, rounded = scores_of(judge, examples), full_logit_scores(judge, examples)
    assert len({v for pair in rounded.values() for v in pair}) < 24  # the old path: rounded logits
    stats = summary(ours, reference, rounded)
    assert stats["ties"] == 0 and stats["distinct"] == 32, stats


@pytest.mark.smollm2
def test_smollm2_bf16_scores_against_float32(smollm2_dir):
    """SmolLM2 on the 32 demo pairs (upstream wrapper): bf16 batched vs one at a time vs float32.

    Measured on CPU (docs/precision.md): 0 ties and 64/64 distinct scores (before the float32 head: 5 ties,
    35 distinct); batched vs one at a time up to 0.037; bf16 vs float32 up to 0.029, 2 verdicts flipped,
    both on pairs that float32 separates by less than 0.011. The bounds below leave about 1.5x room.
    """
    tokenizer = load_tokenizer(str(smollm2_dir))
    examples = demo_examples()
    fp32_model, _, _ = load_model(str(smollm2_dir), dtype="float32", device="cpu")
    reference = scores_of(YesNoJudge(fp32_model, tokenizer, "upstream", batch_size=64), examples)
    model, _, _ = load_model(str(smollm2_dir), dtype="bfloat16", device="cpu")
    batched = scores_of(YesNoJudge(model, tokenizer, "upstream", batch_size=64), examples)
    single = scores_of(YesNoJudge(model, tokenizer, "upstream", batch_size=1, prefix_sharing=False), examples)
    stats = summary(batched, reference, single)
    print("bf16 vs float32, SmolLM2, 32 demo pairs:", stats)
    assert all(a != b for a, b in reference.values())
    assert stats["ties"] == 0 and stats["distinct"] == 64, stats
    assert stats["max_dp_vs_other"] < 0.06 and stats["max_dp_vs_reference"] < 0.05, stats
    for key, (chosen, rejected) in batched.items():
        if (chosen > rejected) != (reference[key][0] > reference[key][1]):
            assert abs(reference[key][0] - reference[key][1]) < 0.03, (key, reference[key], batched[key])


# ---------------------------------------------------------------------------------------------------
# The reward model's head
# ---------------------------------------------------------------------------------------------------
def test_reward_head_in_float32(tiny_reward_model_dir):
    tokenizer = load_tokenizer(str(tiny_reward_model_dir))
    examples = make_examples(17)[1:]  # example 0's two responses are the same text

    def rewards(scorer, full=False):
        head, scorer.head = scorer.head, (None if full else scorer.head)
        try:
            return {e.id: r for batch in scorer.score(examples) for e, r, _ in batch}
        finally:
            scorer.head = head

    fp32 = RewardModelScorer(load_large_rewards(tiny_reward_model_dir, "float32"), tokenizer)
    assert fp32.head is not None
    reference, full = rewards(fp32), rewards(fp32, full=True)
    for key in full:
        assert reference[key] == pytest.approx(full[key], abs=1e-5)
    bf16 = RewardModelScorer(load_large_rewards(tiny_reward_model_dir, "bfloat16"), tokenizer)
    ours, rounded = rewards(bf16), rewards(bf16, full=True)

    def bf16_values(values):  # how many are bf16 numbers (8 significant bits: steps of 0.06-0.25 at 10-40)
        return sum(v == torch.tensor(v).bfloat16().item() for pair in values.values() for v in pair)

    assert bf16_values(rounded) == 32  # the old path: every reward rounded to bf16 before any comparison
    assert bf16_values(ours) <= 2 and all(a != b for a, b in ours.values())
    assert max(abs(a - b) for k in ours for a, b in zip(ours[k], reference[k])) < 1.0  # bf16 hidden states


# ---------------------------------------------------------------------------------------------------
# NaN guard: a float16 overflow must raise, never score
# ---------------------------------------------------------------------------------------------------
def overflow(model):
    """Scale the first MLP so that its float16 output overflows (fine in bf16 and float32)."""
    mlp = decoder_layers(model)[0].mlp
    with torch.no_grad():
        for layer in (mlp.gate_proj, mlp.up_proj, mlp.down_proj):
            layer.weight.mul_(300.0)


def decoder_layers(model):
    return model.model.layers


def test_fp16_overflow_raises_in_the_yes_no_judge(tiny_model_dir):
    model, _, _ = load_model(str(tiny_model_dir), dtype="float16", device="cpu")
    tokenizer = load_tokenizer(str(tiny_model_dir))
    judge = YesNoJudge(model, tokenizer, "upstream", batch_size=8)
    assert all(math.isfinite(p) for pair in scores_of(judge, make_examples(2)).values() for p in pair)
    overflow(model)
    with pytest.raises(IpoError, match=r"NaN or infinite in float16; rerun with --dtype bfloat16 or --dtype float32"):
        scores_of(judge, make_examples(2))
    judge.head = None  # the full-logits path is guarded too
    with pytest.raises(IpoError, match="float16"):
        scores_of(judge, make_examples(2))
    with pytest.raises(IpoError, match="float16"):  # and a judge built on an overflowing model
        YesNoJudge(model, tokenizer, "upstream")


def test_fp16_overflow_raises_in_the_reward_model_and_the_5_point_judge(tiny_reward_model_dir, tiny_model_dir):
    model, _, _ = load_model(str(tiny_reward_model_dir), dtype="float16", device="cpu", kind="sequence_classification")
    scorer = RewardModelScorer(model, load_tokenizer(str(tiny_reward_model_dir)))
    overflow(model)
    with pytest.raises(IpoError, match="reward model's hidden state is NaN or infinite in float16"):
        list(scorer.score(make_examples(2)))
    model, _, _ = load_model(str(tiny_model_dir), dtype="float16", device="cpu")
    judge = SelfRewardScorer(model, load_tokenizer(str(tiny_model_dir)), max_new_tokens=4)
    overflow(model)
    with pytest.raises(IpoError, match="5-point judge's next-token logits is NaN or infinite in float16"):
        list(judge.score(make_examples(2)))


# ---------------------------------------------------------------------------------------------------
# The auto dtype on GPUs without native bf16
# ---------------------------------------------------------------------------------------------------
GPUS = [
    ("V100", (7, 0), torch.float16),
    ("T4", (7, 5), torch.float16),
    ("A100", (8, 0), torch.bfloat16),
    ("H100", (9, 0), torch.bfloat16),
]


@pytest.mark.parametrize("gpu, capability, expected", GPUS)
def test_auto_dtype_needs_native_bf16(monkeypatch, gpu, capability, expected):
    # A CUDA host as torch.cuda.is_bf16_supported() sees it; on V100/T4 emulated bf16 "works" (the old trap).
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    properties = SimpleNamespace(name=gpu, major=capability[0], minor=capability[1])
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: properties)
    monkeypatch.setattr(torch.cuda, "_check_bf16_tensor_supported", lambda device: True)
    for device in ("cuda", "cuda:1", SHARD):
        assert resolve_dtype("auto", device) == expected
    assert resolve_dtype("float32", "cuda") == torch.float32 and resolve_dtype("bfloat16", "cuda") == torch.bfloat16


# ---------------------------------------------------------------------------------------------------
# A judge larger than one device
# ---------------------------------------------------------------------------------------------------
def test_shard_is_a_device_for_inference_only():
    assert resolve_device(SHARD, shardable=True) == SHARD
    with pytest.raises(IpoError, match="not usable here"):
        resolve_device(SHARD)  # training resolves its device without shardable


def test_shard_loads_and_judges_on_a_cpu_only_host(tiny_model_dir, tiny_model):
    model, device, dtype = load_model(str(tiny_model_dir), dtype="auto", device=SHARD)
    assert device == SHARD and dtype == torch.float32  # no GPU: device_map="auto" keeps everything on the CPU
    tokenizer = load_tokenizer(str(tiny_model_dir))
    plain = scores_of(YesNoJudge(tiny_model[0], tokenizer, "upstream"), make_examples(4))
    sharded = scores_of(YesNoJudge(model, tokenizer, "upstream"), make_examples(4))
    for key in plain:
        assert sharded[key] == pytest.approx(plain[key], abs=1e-6)


def test_judge_over_offloaded_layers_reads_the_head_rows(tiny_model_dir, tiny_model, tmp_path):
    """Layer 1 and the output layer offloaded by accelerate (weights on the meta device, loaded per call);
    prefix sharing and the cache work across the pieces, and the Yes/No rows are read from the offload."""
    from transformers import AutoModelForCausalLM

    on_cpu = ["model.embed_tokens", "model.rotary_emb", "model.layers.0", "model.norm"]
    device_map = {**dict.fromkeys(on_cpu, "cpu"), "model.layers.1": "disk", "lm_head": "disk"}
    model = AutoModelForCausalLM.from_pretrained(
        str(tiny_model_dir), dtype=torch.float32, device_map=device_map, offload_folder=str(tmp_path)
    ).eval()
    assert model.lm_head.weight.device.type == "meta"
    tokenizer = load_tokenizer(str(tiny_model_dir))
    judge = YesNoJudge(model, tokenizer, "upstream", batch_size=8)
    assert judge.head is not None and judge.head.rows[0].device.type == "cpu"
    plain = scores_of(YesNoJudge(tiny_model[0], tokenizer, "upstream", batch_size=8), make_examples(6))
    offloaded = scores_of(judge, make_examples(6))
    assert judge.stats["shared_prefix_batches"] > 0
    for key in plain:
        assert offloaded[key] == pytest.approx(plain[key], abs=1e-6)


def test_head_rows_go_to_the_device_of_the_hidden_state(tiny_model):
    """A sharded model's last hidden state sits on its last GPU; the rows (read once, where the output layer
    is) follow it. The meta device stands in for that other device: nothing is computed, only placed."""
    model, _ = tiny_model
    rows = linear_rows(model.get_output_embeddings(), [3, 4, 5])
    assert rows[0].device.type == "cpu" and rows[0].dtype == torch.float32 and rows[1] is None
    out = apply_rows(torch.zeros(2, rows[0].shape[1], dtype=torch.bfloat16, device="meta"), rows)
    assert out.device.type == "meta" and out.shape == (2, 3) and out.dtype == torch.float32
    assert linear_rows(torch.nn.Embedding(4, 2), [0]) is not None  # any 2-D floating weight reads as rows
    quantised = SimpleNamespace(weight=torch.zeros(4, 2, dtype=torch.uint8))
    assert linear_rows(quantised, [0]) is None  # a 4-bit/8-bit layer: the judge keeps the full logits
