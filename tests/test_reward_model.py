"""The reward-model baseline scorer: raw logit, both input formats, batching, bad heads."""

import pytest
import torch

from ipo import IpoError
from ipo.data import Example
from ipo.judges.reward_model import RewardModelScorer, rewards_from_logits
from ipo.modeling import load_model, load_tokenizer


@pytest.fixture(scope="module")
def reward_model(tiny_reward_model_dir):
    model, _, _ = load_model(str(tiny_reward_model_dir), dtype="float32", device="cpu", kind="sequence_classification")
    return model, load_tokenizer(str(tiny_reward_model_dir))


def make_examples(n=8):
    return [
        Example(
            id=i,
            prompt=f"What is {i} plus {i}?" + " Explain." * (i % 3),
            responses=[f"It is {2 * i}." + " Yes indeed" * (i % 4), f"It is {i}. Hello" + " there" * (i % 2)],
        )
        for i in range(n)
    ]


def score_all(scorer, examples):
    return {example.id: rewards for batch in scorer.score(examples) for example, rewards, _ in batch}


def direct_reward(model, ids):
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0, 0].item()


def test_rewards_from_logits_is_the_raw_first_logit():
    logits = torch.tensor([[2.5], [-40.0]], dtype=torch.float16)
    rewards = rewards_from_logits(logits)
    assert rewards.dtype == torch.float32 and rewards.tolist() == [2.5, -40.0]  # no sigmoid


@pytest.mark.parametrize("input_format", ["upstream", "chat"])
def test_reward_is_the_raw_logit_of_a_direct_forward(reward_model, input_format):
    model, tokenizer = reward_model
    scorer = RewardModelScorer(model, tokenizer, input_format)
    examples = make_examples(4)
    rewards = score_all(scorer, examples)
    for example in examples:
        for response, reward in zip(example.responses, rewards[example.id]):
            if input_format == "upstream":
                ids = tokenizer(f"Instruction: {example.prompt}\nResponse: {response}").input_ids
            else:
                text = tokenizer.apply_chat_template(
                    [{"role": "user", "content": example.prompt}, {"role": "assistant", "content": response}],
                    tokenize=False,
                )
                assert text.endswith(f"<|im_start|>assistant\n{response}<|im_end|>\n")  # no generation prompt
                ids = tokenizer(text, add_special_tokens=False).input_ids
            assert scorer.encode(example.prompt, response).ids == ids
            assert reward == pytest.approx(direct_reward(model, ids), abs=1e-5)
    spread = [r for pair in rewards.values() for r in pair]
    assert max(spread) - min(spread) > 1e-3  # the rewards really differ (the test could fail)


@pytest.mark.parametrize("input_format", ["upstream", "chat"])
def test_batched_equals_single(reward_model, input_format):
    model, tokenizer = reward_model
    examples = make_examples(10)
    single = score_all(RewardModelScorer(model, tokenizer, input_format, batch_size=1), examples)
    batched = score_all(
        RewardModelScorer(model, tokenizer, input_format, batch_size=8, max_batch_tokens=4096), examples
    )
    assert sorted(batched) == sorted(single)
    for key in single:
        assert batched[key] == pytest.approx(single[key], abs=1e-4)


def test_truncation(reward_model):
    model, tokenizer = reward_model
    long_response = "The sky is blue and the answer is 42. " * 40
    upstream = RewardModelScorer(model, tokenizer, "upstream", max_length=40).encode("What?", long_response)
    assert (
        upstream.truncated
        and upstream.ids == tokenizer(f"Instruction: What?\nResponse: {long_response}").input_ids[:40]
    )
    chat = RewardModelScorer(model, tokenizer, "chat", max_length=40).encode(
        "What is the capital of France?", long_response
    )
    text = tokenizer.decode(chat.ids)
    assert chat.truncated and len(chat.ids) <= 40
    assert text.startswith("<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\nThe sky")
    assert text.endswith("<|im_end|>\n")  # the markup after the response stays


def test_a_two_label_head_is_refused(tiny_two_label_model_dir):
    model, _, _ = load_model(
        str(tiny_two_label_model_dir), dtype="float32", device="cpu", kind="sequence_classification"
    )
    with pytest.raises(IpoError, match="2-label head"):
        RewardModelScorer(model, load_tokenizer(str(tiny_two_label_model_dir)))


def test_other_bad_settings(reward_model, tiny_model_no_template_dir, tiny_model_dir):
    model, tokenizer = reward_model
    with pytest.raises(IpoError, match="unknown input format"):
        RewardModelScorer(model, tokenizer, "pipeline")
    with pytest.raises(IpoError, match="no chat template"):
        RewardModelScorer(model, load_tokenizer(str(tiny_model_no_template_dir)), "chat")
    # A causal LM would get a random classification head: refused when loading, and by the scorer.
    with pytest.raises(IpoError, match="is not a trained sequence-classification reward model.*score.weight"):
        load_model(str(tiny_model_dir), dtype="float32", device="cpu", kind="sequence_classification")
    from transformers import AutoModelForSequenceClassification

    causal = AutoModelForSequenceClassification.from_pretrained(str(tiny_model_dir), num_labels=1)
    with pytest.raises(IpoError, match="LlamaForCausalLM, not a sequence-classification reward model"):
        RewardModelScorer(causal, tokenizer)
