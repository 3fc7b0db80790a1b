"""The preference losses of ipo.training.losses against fixed golden vectors (three pairs, beta 0.1;
float64, atol 1e-6), against TRL 1.16's own loss code, and their RPO properties."""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from ipo.training import losses as L

ATOL = 1e-6
BETA = 0.1

# The golden micro-batch: M = 3, beta = 0.1 => r_w = [0.5, -0.2, 0.5], r_l = [-0.5, -0.5, -0.8], h = [1.0, 0.3, 1.3]
POLICY_CHOSEN = [-10.0, -12.2, -8.0]
POLICY_REJECTED = [-11.0, -11.5, -9.3]
REFERENCE_CHOSEN = [-10.5, -12.0, -8.5]
REFERENCE_REJECTED = [-10.5, -11.0, -8.5]
CHOSEN_LENGTHS = [5, 6, 4]
REJECTED_LENGTHS = [4, 6, 5]
# RPO-paired prompts e0, e1, e2 (unit vectors): D = [[0, .2, 1], [.2, 0, 1], [1, 1, 0]]
EMBEDDINGS = [[1.0, 0.0, 0.0, 0.0], [0.8, 0.6, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]]


def f64(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def golden_logps(requires_grad: bool = False) -> tuple[torch.Tensor, ...]:
    tensors = tuple(f64(v) for v in (POLICY_CHOSEN, POLICY_REJECTED, REFERENCE_CHOSEN, REFERENCE_REJECTED))
    if requires_grad:
        tensors[0].requires_grad_(True)
        tensors[1].requires_grad_(True)
    return tensors


def assert_close(actual: torch.Tensor, expected) -> None:
    torch.testing.assert_close(actual, f64(expected).to(actual.dtype), atol=ATOL, rtol=0)


# ---------------------------------------------------------------------------------------------------
# Golden vectors: fixed expected values for the micro-batch above
# ---------------------------------------------------------------------------------------------------
def test_dpo_sigmoid_golden():
    result = L.dpo_sigmoid_loss(*golden_logps(), BETA)
    assert_close(result.losses, [0.64439666, 0.67825968, 0.63025819])
    assert result.losses.mean().item() == pytest.approx(0.65097151, abs=ATOL)
    assert_close(result.chosen_rewards, [0.05, -0.02, 0.05])
    assert_close(result.rejected_rewards, [-0.05, -0.05, -0.08])


def test_ipo_sum_golden():
    result = L.ipo_sum_loss(*golden_logps(), BETA)
    assert_close(result.losses, [16.0, 22.09, 13.69])
    assert result.losses.mean().item() == pytest.approx(17.26, abs=ATOL)


def test_ipo_averaged_golden():
    result = L.ipo_loss(*golden_logps(), BETA, f64(CHOSEN_LENGTHS), f64(REJECTED_LENGTHS))
    # averaged margins [0.225, 0.05, 0.285], target 1/(2 beta) = 5
    assert_close(result.losses, [22.800625, 24.5025, 22.231225])
    assert result.losses.mean().item() == pytest.approx(23.17811667, abs=ATOL)
    # TRL 1.x logs rewards from the summed log-ratios, also for IPO
    assert_close(result.chosen_rewards, [0.05, -0.02, 0.05])


def test_ipo_lengths_accept_integer_tensors_and_clamp_zero_like_trl():
    integer = L.ipo_loss(*golden_logps(), BETA, torch.tensor(CHOSEN_LENGTHS), torch.tensor(REJECTED_LENGTHS))
    assert_close(integer.losses, [22.800625, 24.5025, 22.231225])
    zero = L.ipo_loss(*golden_logps(), BETA, f64([0, 6, 4]), f64(REJECTED_LENGTHS))
    one = L.ipo_loss(*golden_logps(), BETA, f64([1, 6, 4]), f64(REJECTED_LENGTHS))
    torch.testing.assert_close(zero.losses, one.losses)


def test_kto_pair_golden():
    result = L.kto_pair_loss(*golden_logps(), BETA)
    # KL_w = mean r_w = 0.26666667, KL_l = max(0, -0.6) = 0; 2M = 6 entries, chosen half first
    assert_close(result.losses, [0.4875026, 0.50499983, 0.4875026, 0.48084272, 0.48084272, 0.47335859])
    assert result.losses.mean().item() == pytest.approx(0.48584151, abs=ATOL)
    assert result.chosen_rewards.shape == (3,)


def test_kto_pair_kl_terms_are_not_detached():
    # TRL <= 0.8 / HALOs: the batch-mean KL terms carry gradient. Changing one rejected log-prob moves
    # KL_l and therefore every chosen entry; with a detached KL only the rejected entries would move.
    policy_chosen, policy_rejected, reference_chosen, reference_rejected = golden_logps(requires_grad=True)
    shifted = policy_rejected.detach() + f64([3.0, 3.0, 3.0])  # mean r_l becomes 2.4 > 0, so the clamp is open
    shifted.requires_grad_(True)
    result = L.kto_pair_loss(policy_chosen, shifted, reference_chosen, reference_rejected, BETA)
    chosen_half = result.losses[:3].sum()
    (gradient,) = torch.autograd.grad(chosen_half, shifted)
    assert torch.all(gradient != 0)


def test_rpo_diagonal_golden():
    result = L.rpo_diagonal_loss(*golden_logps(), BETA, diagonal_weight=0.8)
    assert_close(result.losses, [0.64298281, 0.67679342, 0.63308589])
    assert result.losses.mean().item() == pytest.approx(0.65095404, abs=ATOL)


def test_rpo_uniform_golden():
    result = L.rpo_uniform_loss(*golden_logps(), BETA)
    assert result.losses.mean().item() == pytest.approx(0.65091328, abs=ATOL)


def test_rpo_weights_golden():
    weights = L.rpo_weights(f64(EMBEDDINGS), f64(EMBEDDINGS), temperature=0.5)
    expected = [
        [0.55381555, 0.37123367, 0.07495078],
        [0.37123367, 0.55381555, 0.07495078],
        [0.10650698, 0.10650698, 0.78698604],
    ]
    assert weights.dtype == torch.float32
    torch.testing.assert_close(weights, torch.tensor(expected, dtype=torch.float32), atol=ATOL, rtol=0)


def test_rpo_paired_golden():
    result = L.rpo_paired_loss(*golden_logps(), f64(EMBEDDINGS), BETA, temperature=0.5)
    # H = [[1, 1, 1.3], [0.3, 0.3, 0.6], [1, 1, 1.3]]; weights in fp32 (documented), so the fp64
    # golden values hold to ~1e-8 rather than 1e-15
    assert_close(result.losses, [0.67629492, 0.68778994, 0.67299097])
    assert result.losses.mean().item() == pytest.approx(0.67902527, abs=ATOL)
    assert_close(result.chosen_rewards, [0.05, -0.02, 0.05])


def test_rpo_unpaired_golden():
    # batch: chosen(x0, r=0.5), rejected(x1, r=-0.5), chosen(x2, r=-0.1), rejected(x0, r=0.3)
    policy = f64([-1.0, -2.5, -3.1, -0.7])
    reference = f64([-1.5, -2.0, -3.0, -1.0])
    is_chosen = torch.tensor([True, False, True, False])
    embeddings = f64([EMBEDDINGS[0], EMBEDDINGS[1], EMBEDDINGS[2], EMBEDDINGS[0]])
    result = L.rpo_unpaired_loss(policy, reference, is_chosen, embeddings, BETA, temperature=0.5)
    assert_close(result.losses, [0.68023054, 0.69319718])
    assert result.losses.mean().item() == pytest.approx(0.68671386, abs=ATOL)
    assert_close(result.chosen_rewards, [0.05, -0.01])
    assert_close(result.rejected_rewards, [-0.05, 0.03])
    weights = L.rpo_weights(embeddings[[0, 2]], embeddings[[1, 3]], 0.5)
    torch.testing.assert_close(weights, torch.tensor([[0.40131234, 0.59868766], [0.5, 0.5]]), atol=ATOL, rtol=0)


# ---------------------------------------------------------------------------------------------------
# Against TRL 1.16's own loss code
# ---------------------------------------------------------------------------------------------------
class _LogProbModel:
    """Stands in for the policy in DPOTrainer._compute_loss: returns the fused-head outputs TRL reads,
    with per-token log-probs that sum, per row, to the given sequence log-probs (zero outside the
    completion, as TRL's fused head returns them)."""

    training = True

    def __init__(self, per_token_logps: torch.Tensor):
        self.per_token_logps = per_token_logps

    def __call__(self, input_ids, labels=None, fused_lm_head=False, **kwargs):
        assert fused_lm_head, "TRL 1.16 asks for the fused head; if this fails its _compute_loss changed"
        rows, length = input_ids.shape
        zeros = torch.zeros(rows, length - 1, dtype=torch.float64)
        return SimpleNamespace(
            log_probs=self.per_token_logps,
            entropy=zeros,
            mean_logits=zeros,
            is_top1=torch.zeros(rows, length - 1, dtype=torch.bool),
        )


def trl_loss(loss_type: str) -> tuple[float, dict]:
    """TRL 1.16's loss on the golden log-probs, by calling ``DPOTrainer._compute_loss`` itself.

    There is no smaller callable piece in TRL 1.x: the loss formulas are inline in the private
    ``_compute_loss(self, model, inputs, return_outputs)`` (trl/trainer/dpo_trainer.py, v1.16.0). We call
    that unbound method with a minimal stand-in for ``self`` (the attributes it reads) and a stand-in
    model returning per-token log-probs, with the reference log-probs passed as precomputed inputs
    (``precompute_ref_logps=True``), so TRL's own code computes the loss on identical numbers.
    """
    from trl import DPOTrainer

    completion_lengths = CHOSEN_LENGTHS + REJECTED_LENGTHS  # rows: 3 prompt+chosen, then 3 prompt+rejected
    sequence_logps = POLICY_CHOSEN + POLICY_REJECTED
    prompt_length, length = 2, 2 + max(completion_lengths) + 1  # +1: a padding column
    completion_mask = torch.zeros(6, length, dtype=torch.long)
    per_token_logps = torch.zeros(6, length - 1, dtype=torch.float64)
    for row, (tokens, total) in enumerate(zip(completion_lengths, sequence_logps)):
        completion_mask[row, prompt_length : prompt_length + tokens] = 1
        per_token_logps[row, prompt_length - 1 : prompt_length - 1 + tokens] = total / tokens
    inputs = {
        "input_ids": torch.ones(6, length, dtype=torch.long),
        "attention_mask": torch.ones(6, length, dtype=torch.long),  # only counted for a logging metric
        "completion_mask": completion_mask,
        "ref_chosen_logps": f64(REFERENCE_CHOSEN),
        "ref_rejected_logps": f64(REFERENCE_REJECTED),
    }
    metrics = {"train": defaultdict(list)}
    accelerator = SimpleNamespace(device=torch.device("cpu"), gather=lambda t: t, gather_for_metrics=lambda t: t)
    trainer = SimpleNamespace(
        model=_LogProbModel(per_token_logps),
        accelerator=accelerator,
        aux_loss_enabled=False,
        ld_alpha=None,
        precompute_ref_logps=True,
        f_divergence_type="reverse_kl",
        loss_types=[loss_type],
        loss_weights=[1.0],
        beta=BETA,
        use_weighting=False,
        _metrics=metrics,
        _total_train_tokens=0,
        _tp_size=1,
    )
    loss = DPOTrainer._compute_loss(trainer, trainer.model, inputs, return_outputs=False)
    return loss.item(), {k: v[-1] for k, v in metrics["train"].items()}


def test_sigmoid_matches_trl():
    trl_value, trl_metrics = trl_loss("sigmoid")
    ours = L.dpo_sigmoid_loss(*golden_logps(), BETA)
    assert ours.losses.mean().item() == pytest.approx(trl_value, abs=1e-9)
    assert ours.chosen_rewards.mean().item() == pytest.approx(trl_metrics["rewards/chosen"], abs=1e-9)
    assert ours.rejected_rewards.mean().item() == pytest.approx(trl_metrics["rewards/rejected"], abs=1e-9)


def test_ipo_matches_trl():
    trl_value, trl_metrics = trl_loss("ipo")
    ours = L.ipo_loss(*golden_logps(), BETA, f64(CHOSEN_LENGTHS), f64(REJECTED_LENGTHS))
    assert ours.losses.mean().item() == pytest.approx(trl_value, abs=1e-9)
    assert trl_value == pytest.approx(23.17811667, abs=ATOL)  # TRL itself agrees with the golden value
    assert ours.chosen_rewards.mean().item() == pytest.approx(trl_metrics["rewards/chosen"], abs=1e-9)


def test_ipo_sum_differs_from_trl_ipo():
    trl_value, _ = trl_loss("ipo")
    assert L.ipo_sum_loss(*golden_logps(), BETA).losses.mean().item() != pytest.approx(trl_value, abs=1e-3)


# ---------------------------------------------------------------------------------------------------
# RPO properties
# ---------------------------------------------------------------------------------------------------
def test_rpo_weight_rows_sum_to_one_and_favour_the_same_prompt():
    generator = torch.Generator().manual_seed(0)
    chosen_side = torch.randn(5, 16, generator=generator)
    rejected_side = torch.cat([chosen_side[:2], torch.randn(5, 16, generator=generator)])
    for temperature in (0.05, 0.5, 3.0):
        weights = L.rpo_weights(chosen_side, rejected_side, temperature)
        assert weights.shape == (5, 7)
        torch.testing.assert_close(weights.sum(dim=1), torch.ones(5), atol=1e-6, rtol=0)
        assert torch.all(weights > 0)
        # rows 0 and 1 have their own prompt among the rejected side: it gets the largest weight
        assert weights[0].argmax().item() == 0 and weights[1].argmax().item() == 1


def test_rpo_weights_carry_no_gradient():
    embeddings = f64(EMBEDDINGS).requires_grad_(True)
    weights = L.rpo_weights(embeddings, embeddings, 0.5)
    assert not weights.requires_grad and weights.grad_fn is None

    policy_chosen, policy_rejected, reference_chosen, reference_rejected = golden_logps(requires_grad=True)
    result = L.rpo_paired_loss(policy_chosen, policy_rejected, reference_chosen, reference_rejected, embeddings, BETA)
    loss = result.losses.mean()
    assert torch.autograd.grad(loss, embeddings, retain_graph=True, allow_unused=True) == (None,)
    with pytest.raises(RuntimeError):
        torch.autograd.grad(loss, embeddings, retain_graph=True)  # not part of the graph at all
    # while the policy log-probs do get gradient
    gradient_chosen, gradient_rejected = torch.autograd.grad(loss, (policy_chosen, policy_rejected))
    assert torch.all(gradient_chosen < 0) and torch.all(gradient_rejected > 0)
    assert embeddings.grad is None


def test_rpo_unpaired_weights_carry_no_gradient():
    policy = f64([-1.0, -2.5, -3.1, -0.7]).requires_grad_(True)
    embeddings = f64([EMBEDDINGS[0], EMBEDDINGS[1], EMBEDDINGS[2], EMBEDDINGS[0]]).requires_grad_(True)
    result = L.rpo_unpaired_loss(
        policy, f64([-1.5, -2.0, -3.0, -1.0]), torch.tensor([True, False, True, False]), embeddings, BETA
    )
    assert torch.autograd.grad(result.losses.mean(), embeddings, allow_unused=True) == (None,)


def test_rpo_diagonal_equalities():
    """Which equalities hold, exactly (per example):

    * diagonal weight alpha = 1: RPO-diagonal == DPO (-log sigmoid(beta h_i)); only the own pair counts.
    * alpha = 1/M: every entry of a row weighs 1/M, so RPO-diagonal == RPO-uniform (W = 1), the mean
      DPO loss over all M x M chosen/rejected combinations. That is *not* DPO (off-diagonal pairs
      contrast different prompts), except when M = 1 or when every row of H is the same pair.
    * RPO-paired whose weights are uniform is not DPO either: identical prompts give W_ij = 1/M, so
      the logits are scaled by 1/M (checked below).
    """
    dpo = L.dpo_sigmoid_loss(*golden_logps(), BETA).losses
    uniform = L.rpo_uniform_loss(*golden_logps(), BETA).losses
    torch.testing.assert_close(L.rpo_diagonal_loss(*golden_logps(), BETA, diagonal_weight=1.0).losses, dpo)
    torch.testing.assert_close(L.rpo_diagonal_loss(*golden_logps(), BETA, diagonal_weight=1 / 3).losses, uniform)
    assert not torch.allclose(uniform, dpo)

    # M = 1: every variant reduces to DPO
    single = tuple(t[:1] for t in golden_logps())
    single_dpo = L.dpo_sigmoid_loss(*single, BETA).losses
    torch.testing.assert_close(L.rpo_uniform_loss(*single, BETA).losses, single_dpo)
    torch.testing.assert_close(L.rpo_diagonal_loss(*single, BETA).losses, single_dpo)
    torch.testing.assert_close(L.rpo_paired_loss(*single, f64([[1.0, 2.0]]), BETA).losses, single_dpo)

    # identical prompts: W = 1/M everywhere, i.e. RPO-uniform at beta / M
    same_prompt = f64([EMBEDDINGS[0]] * 3)
    torch.testing.assert_close(
        L.rpo_paired_loss(*golden_logps(), same_prompt, BETA).losses,
        L.rpo_uniform_loss(*golden_logps(), BETA / 3).losses,
    )


def test_rpo_unpaired_with_one_side_only_is_skipped():
    policy, reference = f64([-1.0, -2.0]), f64([-1.5, -2.5])
    embeddings = f64(EMBEDDINGS[:2])
    assert L.rpo_unpaired_loss(policy, reference, torch.tensor([True, True]), embeddings, BETA) is None
    assert L.rpo_unpaired_loss(policy, reference, torch.tensor([False, False]), embeddings, BETA) is None


def test_rpo_matrix_uses_float32_for_bf16_inputs():
    logps = tuple(t.to(torch.bfloat16) for t in golden_logps())
    result = L.rpo_paired_loss(*logps, f64(EMBEDDINGS).to(torch.bfloat16), BETA)
    assert result.losses.dtype == torch.float32
    assert result.losses.mean().item() == pytest.approx(0.67902527, abs=2e-3)  # bf16 log-probs round


# ---------------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("temperature", [0.0, -0.5, float("nan")])
def test_non_positive_temperature_raises(temperature):
    with pytest.raises(ValueError, match="temperature must be > 0"):
        L.rpo_weights(f64(EMBEDDINGS), f64(EMBEDDINGS), temperature)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        L.rpo_paired_loss(*golden_logps(), f64(EMBEDDINGS), BETA, temperature=temperature)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        L.rpo_unpaired_loss(
            f64([-1.0, -2.0]),
            f64([-1.0, -2.0]),
            torch.tensor([True, False]),
            f64(EMBEDDINGS[:2]),
            BETA,
            temperature=temperature,
        )


def test_shape_mismatches_raise():
    policy_chosen, policy_rejected, reference_chosen, reference_rejected = golden_logps()
    with pytest.raises(ValueError, match="batch sizes differ"):
        L.dpo_sigmoid_loss(policy_chosen, policy_rejected[:2], reference_chosen, reference_rejected, BETA)
    with pytest.raises(ValueError, match="1-D tensor"):
        L.kto_pair_loss(policy_chosen[:, None], policy_rejected, reference_chosen, reference_rejected, BETA)
    with pytest.raises(ValueError, match="batch sizes differ"):
        L.ipo_loss(*golden_logps(), BETA, f64([5, 6]), f64(REJECTED_LENGTHS))
    with pytest.raises(ValueError, match=r"prompt_embeddings must have shape \(3, d\)"):
        L.rpo_paired_loss(*golden_logps(), f64(EMBEDDINGS[:2]), BETA)
    with pytest.raises(ValueError, match="embedding sizes differ"):
        L.rpo_weights(f64(EMBEDDINGS), torch.ones(2, 3), 0.5)
    with pytest.raises(ValueError, match="empty batch"):
        L.dpo_sigmoid_loss(*(torch.zeros(0),) * 4, BETA)
    with pytest.raises(ValueError, match="bool tensor"):
        L.rpo_unpaired_loss(f64([-1.0, -2.0]), f64([-1.0, -2.0]), torch.tensor([1, 0]), f64(EMBEDDINGS[:2]), BETA)
    with pytest.raises(ValueError, match="beta must be > 0"):
        L.ipo_sum_loss(*golden_logps(), 0.0)
    with pytest.raises(ValueError, match=r"diagonal_weight must be in \[0, 1\]"):
        L.rpo_diagonal_loss(*golden_logps(), BETA, diagonal_weight=1.5)


def test_paired_preference_loss_dispatches_every_paired_type():
    extras = dict(
        chosen_lengths=f64(CHOSEN_LENGTHS), rejected_lengths=f64(REJECTED_LENGTHS), prompt_embeddings=f64(EMBEDDINGS)
    )
    expected_means = {
        "sigmoid": 0.65097151,
        "ipo": 23.17811667,
        "ipo_sum": 17.26,
        "kto_pair": 0.48584151,
        "rpo_paired": 0.67902527,
        "rpo_diagonal": 0.65095404,
        "rpo_uniform": 0.65091328,
    }
    assert set(expected_means) | L.UNPAIRED_LOSS_TYPES == set(L.LOSS_TYPES)
    for loss_type, expected in expected_means.items():
        result = L.paired_preference_loss(loss_type, *golden_logps(), beta=BETA, **extras)
        assert result.losses.mean().item() == pytest.approx(expected, abs=ATOL), loss_type
    with pytest.raises(ValueError, match="unknown loss_type 'dpo'"):
        L.paired_preference_loss("dpo", *golden_logps(), beta=BETA)
    with pytest.raises(ValueError, match="rpo_unpaired_loss"):
        L.paired_preference_loss("rpo_unpaired", *golden_logps(), beta=BETA)
    with pytest.raises(ValueError, match="needs chosen_lengths"):
        L.paired_preference_loss("ipo", *golden_logps(), beta=BETA)
    with pytest.raises(ValueError, match="needs prompt_embeddings"):
        L.paired_preference_loss("rpo_paired", *golden_logps(), beta=BETA)
