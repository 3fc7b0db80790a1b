"""Preference-optimisation losses as small pure functions of sequence log-probabilities.

These are the companion training losses (`--loss_type`): DPO, Identity-PO (averaged and summed),
KTO-pair and Relative Preference Optimization (paired, unpaired, diagonal and uniform ablations).
They know nothing about models, tokenisers or TRL; the trainer computes log-probabilities and calls them.

Notation (that of the DPO paper, Rafailov et al. 2023). For a micro-batch of M pairs (x_i, y_w_i, y_l_i):

* ``policy_chosen_logps[i]`` = log pi_theta(y_w_i | x_i), **summed** over the completion tokens (every
  reference implementation and TRL sum, they do not average); likewise for rejected and for the reference.
* log-ratios r_w_i = log pi_theta(y_w_i|x_i) - log pi_ref(y_w_i|x_i), r_l_i likewise; DPO margin
  h_i = r_w_i - r_l_i.
* Implicit rewards, for logging only: chosen = beta * r_w, rejected = beta * r_l (detached).

Every function returns per-example losses; the training loss is ``losses.mean()`` (as in every
reference implementation). Shapes are checked; ``ValueError`` says what is wrong.

Sources (the reference implementations at the commits named):
* DPO: Rafailov et al. 2023, arXiv 2305.18290, Eq. 7; eric-mitchell/direct-preference-optimization
  @f8b8c0f ``preference_loss``.
* IPO: Azar et al. 2023, arXiv 2310.12036, Eq. 17 (tau -> beta). Averaged form: TRL PR #1265 (commit
  29d439a2, first in v0.7.11), kept in TRL 1.16 ``DPOTrainer._compute_loss`` branch ``"ipo"``.
* KTO-pair: TRL v0.8.0 ``dpo_trainer.py::dpo_loss`` branch ``"kto_pair"`` (removed from TRL in PR #1734),
  identical to ContextualAI HALOs ``SimpleKTOTrainer``; KTO: Ethayarajh et al. 2024, arXiv 2402.01306.
* RPO: Yin et al. 2024, arXiv 2402.10958; the reference code yinyueqin/Relative-Preference-Optimization
  @c1b5163 ``trainers.py`` (``RPOTrainer``, ``RPOUnpairedTrainer``, ``RPODiagonalTrainer``) is the ground
  truth here (the paper's equation numbering was not checked against the code).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

# --loss_type values, with the one-line description used in --help and the README.
LOSS_TYPES = {
    "sigmoid": "DPO (Rafailov et al. 2023): -log sigmoid(beta * margin)",
    "ipo": "Identity-PO (Azar et al. 2023) on length-averaged log-ratios, as TRL >= 0.7.11",
    "ipo_sum": "Identity-PO on summed log-ratios, as the original implementations (DPO repo, HALOs, RPO)",
    "kto_pair": "paired KTO as TRL <= 0.8 / HALOs kto-simple: batch-mean KL reference points",
    "rpo_paired": "Relative Preference Optimization: all chosen x rejected pairs of the micro-batch, "
    "weighted by prompt similarity",
    "rpo_unpaired": "RPO on unpaired data: every chosen x every rejected example of the micro-batch",
    "rpo_diagonal": "RPO ablation without embeddings: 0.8 x own pair + 0.2 x mean of the other pairs",
    "rpo_uniform": "RPO ablation with all weights 1 (mean DPO loss over all M x M pairs)",
}
# The one loss that trains on unpaired (prompt, completion, label) rows; every other loss needs pairs.
UNPAIRED_LOSS_TYPES = frozenset({"rpo_unpaired"})
# Losses that weight pairs by prompt-embedding similarity (they need the sentence-transformer).
EMBEDDING_LOSS_TYPES = frozenset({"rpo_paired", "rpo_unpaired"})

DEFAULT_RPO_TEMPERATURE = 0.5  # RPO config/loss/rpo-*.yaml distance_temperature
DEFAULT_RPO_DIAGONAL_WEIGHT = 0.8  # RPO config/loss/rpo-diagonal.yaml diagonal_weight


class PreferenceLoss(NamedTuple):
    """Per-example losses and the implicit rewards to log (both reward tensors detached)."""

    losses: torch.Tensor  # the training loss is losses.mean()
    chosen_rewards: torch.Tensor  # beta * r_w
    rejected_rewards: torch.Tensor  # beta * r_l


# ---------------------------------------------------------------------------------------------------
# Input checks
# ---------------------------------------------------------------------------------------------------
def _check_positive(name: str, value: float, why: str) -> None:
    if not value > 0:  # also rejects NaN
        raise ValueError(f"{name} must be > 0 ({why}), got {value}")


def _check_vectors(**tensors: torch.Tensor) -> int:
    """All tensors 1-D with the same non-zero length; returns that length."""
    lengths = {}
    for name, tensor in tensors.items():
        if not isinstance(tensor, torch.Tensor) or tensor.dim() != 1:
            shape = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
            raise ValueError(f"{name} must be a 1-D tensor (one value per example), got shape {shape}")
        lengths[name] = tensor.shape[0]
    if len(set(lengths.values())) > 1:
        raise ValueError(f"batch sizes differ: {', '.join(f'{k}={v}' for k, v in lengths.items())}")
    size = next(iter(lengths.values()))
    if size == 0:
        raise ValueError("empty batch: every loss needs at least one example")
    return size


def _check_embeddings(name: str, embeddings: torch.Tensor, rows: int) -> None:
    if not isinstance(embeddings, torch.Tensor) or embeddings.dim() != 2 or embeddings.shape[0] != rows:
        shape = tuple(embeddings.shape) if isinstance(embeddings, torch.Tensor) else type(embeddings).__name__
        raise ValueError(f"{name} must have shape ({rows}, d), one embedding per example; got {shape}")


def _paired_logratios(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps):
    _check_vectors(
        policy_chosen_logps=policy_chosen_logps,
        policy_rejected_logps=policy_rejected_logps,
        reference_chosen_logps=reference_chosen_logps,
        reference_rejected_logps=reference_rejected_logps,
    )
    return policy_chosen_logps - reference_chosen_logps, policy_rejected_logps - reference_rejected_logps


def _rewards(beta: float, chosen_logratios, rejected_logratios) -> tuple[torch.Tensor, torch.Tensor]:
    return beta * chosen_logratios.detach(), beta * rejected_logratios.detach()


# ---------------------------------------------------------------------------------------------------
# DPO, IPO, KTO-pair
# ---------------------------------------------------------------------------------------------------
def dpo_sigmoid_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    reference_chosen_logps: torch.Tensor,
    reference_rejected_logps: torch.Tensor,
    beta: float,
) -> PreferenceLoss:
    """DPO: loss_i = -log sigmoid(beta * h_i), h_i = r_w_i - r_l_i.

    Rafailov et al. 2023 (arXiv 2305.18290) Eq. 7; TRL ``loss_type="sigmoid"`` with the default
    ``f_divergence_type="reverse_kl"``.

    Args: four (M,) tensors of summed completion log-probs; ``beta`` > 0 (the KL strength).
    Returns: losses (M,), chosen_rewards (M,), rejected_rewards (M,).
    """
    _check_positive("beta", beta, "it scales the margin inside the sigmoid")
    chosen_logratios, rejected_logratios = _paired_logratios(
        policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps
    )
    losses = -F.logsigmoid(beta * (chosen_logratios - rejected_logratios))
    return PreferenceLoss(losses, *_rewards(beta, chosen_logratios, rejected_logratios))


def ipo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    reference_chosen_logps: torch.Tensor,
    reference_rejected_logps: torch.Tensor,
    beta: float,
    chosen_lengths: torch.Tensor,
    rejected_lengths: torch.Tensor,
) -> PreferenceLoss:
    """Identity-PO on length-averaged log-ratios: loss_i = (r_w_i/|y_w_i| - r_l_i/|y_l_i| - 1/(2 beta))^2.

    Azar et al. 2023 (arXiv 2310.12036) Eq. 17 with tau -> beta, in the form TRL has used since PR #1265
    (v0.7.11; the HF "pref-tuning" blog's fix) and still uses in 1.16 (``_compute_loss``, branch "ipo"):
    each log-ratio is divided by its own completion length (tokens after truncation, EOS included,
    clamped to >= 1 as TRL does). The rewards stay beta * summed log-ratios, as TRL 1.x logs them.

    Args: four (M,) tensors of summed completion log-probs; ``chosen_lengths`` and ``rejected_lengths``
        (M,) completion token counts; ``beta`` > 0 (the target margin is 1/(2 beta) nats per token).
    Returns: losses (M,), chosen_rewards (M,), rejected_rewards (M,).
    """
    _check_positive("beta", beta, "the IPO target margin is 1/(2 beta)")
    chosen_logratios, rejected_logratios = _paired_logratios(
        policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps
    )
    _check_vectors(
        policy_chosen_logps=policy_chosen_logps, chosen_lengths=chosen_lengths, rejected_lengths=rejected_lengths
    )
    averaged_margin = chosen_logratios / chosen_lengths.clamp(min=1) - rejected_logratios / rejected_lengths.clamp(
        min=1
    )
    losses = (averaged_margin - 1 / (2 * beta)) ** 2
    return PreferenceLoss(losses, *_rewards(beta, chosen_logratios, rejected_logratios))


def ipo_sum_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    reference_chosen_logps: torch.Tensor,
    reference_rejected_logps: torch.Tensor,
    beta: float,
) -> PreferenceLoss:
    """Identity-PO on summed log-ratios: loss_i = (h_i - 1/(2 beta))^2.

    Azar et al. 2023 (arXiv 2310.12036) Eq. 17 as the original implementations compute it: DPO repo
    ``preference_loss(ipo=True)``, HALOs/RPO ``IPOTrainer``, TRL <= 0.7.10. Kept for parity with those
    papers; the HF blog found the averaged form (``ipo_loss``) trains better.

    Args: four (M,) tensors of summed completion log-probs; ``beta`` > 0.
    Returns: losses (M,), chosen_rewards (M,), rejected_rewards (M,).
    """
    _check_positive("beta", beta, "the IPO target margin is 1/(2 beta)")
    chosen_logratios, rejected_logratios = _paired_logratios(
        policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps
    )
    losses = (chosen_logratios - rejected_logratios - 1 / (2 * beta)) ** 2
    return PreferenceLoss(losses, *_rewards(beta, chosen_logratios, rejected_logratios))


def kto_pair_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    reference_chosen_logps: torch.Tensor,
    reference_rejected_logps: torch.Tensor,
    beta: float,
) -> PreferenceLoss:
    """Paired KTO: each half's reference point is the other half's batch-mean log-ratio.

    KL_w = max(0, mean_i r_w_i), KL_l = max(0, mean_i r_l_i) (batch means, NOT detached), then the 2M
    entries [1 - sigmoid(beta (r_w_i - KL_l))]_i followed by [1 - sigmoid(beta (KL_w - r_l_i))]_i.

    Re-implemented from TRL v0.8.0 ``dpo_loss`` branch "kto_pair" (its comment cites Eq. 7 of the
    HALOs/KTO paper, Ethayarajh et al. 2024, arXiv 2402.01306), identical to HALOs ``SimpleKTOTrainer``;
    current TRL removed it (PR #1734). The KL terms couple the examples of a micro-batch, so the loss
    depends on the micro-batch size.

    Args: four (M,) tensors of summed completion log-probs; ``beta`` > 0.
    Returns: losses (2M,) (chosen half first), chosen_rewards (M,), rejected_rewards (M,).
    """
    _check_positive("beta", beta, "it scales the log-ratios inside the sigmoid")
    chosen_logratios, rejected_logratios = _paired_logratios(
        policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps
    )
    chosen_kl = chosen_logratios.mean().clamp(min=0)
    rejected_kl = rejected_logratios.mean().clamp(min=0)
    losses = torch.cat(
        (
            1 - torch.sigmoid(beta * (chosen_logratios - rejected_kl)),
            1 - torch.sigmoid(beta * (chosen_kl - rejected_logratios)),
        )
    )
    return PreferenceLoss(losses, *_rewards(beta, chosen_logratios, rejected_logratios))


# ---------------------------------------------------------------------------------------------------
# Relative Preference Optimization
# ---------------------------------------------------------------------------------------------------
def rpo_weights(
    chosen_side_embeddings: torch.Tensor, rejected_side_embeddings: torch.Tensor, temperature: float
) -> torch.Tensor:
    """RPO contrast weights W = softmax_j(-D_ij / tau), D_ij = 1 - cos(e_i, e_j), a constant (no gradient).

    Row i belongs to a chosen response's prompt embedding, column j to a rejected response's; every row
    sums to 1. Same prompt -> D = 0 -> the largest weight in its row. RPO ``RPOTrainer.loss`` /
    ``RPOUnpairedTrainer.loss`` (F.normalize, 1 - e e^T, softmax over dim 1).

    Computed in float32 under ``no_grad`` on detached inputs (the reference code casts the embeddings to
    the policy dtype, bf16 in its configs; fp32 is a documented, numerically small departure).

    Args: chosen_side_embeddings (N_c, d), rejected_side_embeddings (N_r, d) (need not be normalised);
        ``temperature`` tau > 0 (smaller = sharper preference for similar prompts).
    Returns: weights (N_c, N_r), float32, on the embeddings' device, ``requires_grad=False``.
    """
    _check_positive("temperature", temperature, "RPO divides the prompt distance by it")
    for name, embeddings in (
        ("chosen_side_embeddings", chosen_side_embeddings),
        ("rejected_side_embeddings", rejected_side_embeddings),
    ):
        if not isinstance(embeddings, torch.Tensor) or embeddings.dim() != 2 or embeddings.shape[0] == 0:
            raise ValueError(
                f"{name} must be a non-empty (N, d) tensor, got {getattr(embeddings, 'shape', embeddings)}"
            )
    if chosen_side_embeddings.shape[1] != rejected_side_embeddings.shape[1]:
        raise ValueError(
            f"embedding sizes differ: {chosen_side_embeddings.shape[1]} vs {rejected_side_embeddings.shape[1]}"
        )
    with torch.no_grad():
        chosen_unit = F.normalize(chosen_side_embeddings.detach().float(), p=2, dim=1)
        rejected_unit = F.normalize(rejected_side_embeddings.detach().float(), p=2, dim=1)
        distance = 1 - chosen_unit @ rejected_unit.T
        return torch.softmax(-distance / temperature, dim=1)


def rpo_contrast_loss(
    chosen_logratios: torch.Tensor, rejected_logratios: torch.Tensor, weights: torch.Tensor, beta: float
) -> torch.Tensor:
    """The RPO core: loss_i = (1/N_r) sum_j -log sigmoid(beta * W_ij * (r_w_i - r_l_j)).

    H_ij = r_w_i - r_l_j contrasts chosen response i with rejected response j (any prompt); the weight
    multiplies the logit, not the loss, and is not renormalised (a row of M weights sums to 1, so the
    effective beta per entry is beta * W_ij; RPO's code does exactly this).

    Args: chosen_logratios (N_c,), rejected_logratios (N_r,), weights (N_c, N_r) (constants);
        ``beta`` > 0.
    Returns: per-chosen-row losses (N_c,), computed in float32 (or float64 if the inputs are).
    """
    _check_positive("beta", beta, "it scales the weighted margins inside the sigmoid")
    _check_vectors(chosen_logratios=chosen_logratios)
    _check_vectors(rejected_logratios=rejected_logratios)
    expected = (chosen_logratios.shape[0], rejected_logratios.shape[0])
    if tuple(weights.shape) != expected:
        raise ValueError(f"weights must have shape {expected} (chosen x rejected), got {tuple(weights.shape)}")
    dtype = torch.promote_types(chosen_logratios.dtype, torch.float32)
    contrast = chosen_logratios.to(dtype)[:, None] - rejected_logratios.to(dtype)[None, :]
    return -F.logsigmoid(beta * weights.to(device=contrast.device, dtype=dtype) * contrast).mean(dim=1)


def rpo_paired_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    reference_chosen_logps: torch.Tensor,
    reference_rejected_logps: torch.Tensor,
    prompt_embeddings: torch.Tensor,
    beta: float,
    temperature: float = DEFAULT_RPO_TEMPERATURE,
) -> PreferenceLoss:
    """RPO-paired: every chosen response of the micro-batch against every rejected one, weighted by prompts.

    loss_i = (1/M) sum_j -log sigmoid(beta W_ij (r_w_i - r_l_j)), W = ``rpo_weights(e, e, tau)``;
    the diagonal (own pair, D = 0) is included and gets the largest weight of its row. The matrix is
    the micro-batch on this device (RPO slices its batch per GPU and never all-gathers).
    RPO @c1b5163 ``RPOTrainer.loss``; config/loss/rpo-paired.yaml (beta 0.1, tau 0.5).

    Args: four (M,) tensors of summed completion log-probs; ``prompt_embeddings`` (M, d), one per pair
        (the prompt text as the model sees it); ``beta`` > 0; ``temperature`` > 0.
    Returns: losses (M,) (float32), chosen_rewards (M,), rejected_rewards (M,).
    """
    chosen_logratios, rejected_logratios = _paired_logratios(
        policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps
    )
    _check_embeddings("prompt_embeddings", prompt_embeddings, chosen_logratios.shape[0])
    weights = rpo_weights(prompt_embeddings, prompt_embeddings, temperature)
    losses = rpo_contrast_loss(chosen_logratios, rejected_logratios, weights, beta)
    return PreferenceLoss(losses, *_rewards(beta, chosen_logratios, rejected_logratios))


def rpo_uniform_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    reference_chosen_logps: torch.Tensor,
    reference_rejected_logps: torch.Tensor,
    beta: float,
) -> PreferenceLoss:
    """RPO with all weights 1 (the paper's "uniform weighting" ablation; RPO code without embeddings).

    loss_i = (1/M) sum_j -log sigmoid(beta (r_w_i - r_l_j)): the mean DPO loss over all M x M
    chosen/rejected combinations. Equals ``dpo_sigmoid_loss`` when M = 1.

    Args: four (M,) tensors of summed completion log-probs; ``beta`` > 0.
    Returns: losses (M,), chosen_rewards (M,), rejected_rewards (M,).
    """
    chosen_logratios, rejected_logratios = _paired_logratios(
        policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps
    )
    size = chosen_logratios.shape[0]
    weights = torch.ones(size, size, device=chosen_logratios.device)
    losses = rpo_contrast_loss(chosen_logratios, rejected_logratios, weights, beta)
    return PreferenceLoss(losses, *_rewards(beta, chosen_logratios, rejected_logratios))


def rpo_diagonal_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    reference_chosen_logps: torch.Tensor,
    reference_rejected_logps: torch.Tensor,
    beta: float,
    diagonal_weight: float = DEFAULT_RPO_DIAGONAL_WEIGHT,
) -> PreferenceLoss:
    """RPO-diagonal (ablation, no embeddings): alpha x own pair + (1 - alpha) x mean over the other pairs.

    A_ij = -log sigmoid(beta (r_w_i - r_l_j)); loss_i = alpha A_ii + (1 - alpha)/(M - 1) sum_{j != i} A_ij.
    With alpha = 1 this is exactly DPO; with alpha = 1/M it is exactly ``rpo_uniform_loss``.
    RPO @c1b5163 ``RPODiagonalTrainer.loss``; config/loss/rpo-diagonal.yaml (alpha 0.8, beta 0.1).
    Departure: with M = 1 there is no other pair; the reference code then averages an empty set
    (NaN), here the loss is A_11 (DPO).

    Args: four (M,) tensors of summed completion log-probs; ``beta`` > 0; ``diagonal_weight`` alpha in
        [0, 1].
    Returns: losses (M,), chosen_rewards (M,), rejected_rewards (M,).
    """
    _check_positive("beta", beta, "it scales the margins inside the sigmoid")
    if not 0 <= diagonal_weight <= 1:
        raise ValueError(f"diagonal_weight must be in [0, 1], got {diagonal_weight}")
    chosen_logratios, rejected_logratios = _paired_logratios(
        policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps
    )
    all_pairs = -F.logsigmoid(beta * (chosen_logratios[:, None] - rejected_logratios[None, :]))
    own_pair = all_pairs.diagonal()
    size = own_pair.shape[0]
    if size == 1:
        losses = own_pair
    else:
        other_pairs = (all_pairs.sum(dim=1) - own_pair) / (size - 1)
        losses = diagonal_weight * own_pair + (1 - diagonal_weight) * other_pairs
    return PreferenceLoss(losses, *_rewards(beta, chosen_logratios, rejected_logratios))


def rpo_unpaired_loss(
    policy_logps: torch.Tensor,
    reference_logps: torch.Tensor,
    is_chosen: torch.Tensor,
    prompt_embeddings: torch.Tensor,
    beta: float,
    temperature: float = DEFAULT_RPO_TEMPERATURE,
) -> PreferenceLoss | None:
    """RPO-unpaired: every desirable example of the micro-batch against every undesirable one.

    With C the chosen (desirable) and R the rejected (undesirable) examples, N_c = |C|, N_r = |R|:
    loss_c = (1/N_r) sum_r -log sigmoid(beta W_cr (r_c - r_r)), W = ``rpo_weights(e_C, e_R, tau)``
    built from each example's own prompt. There is no diagonal and no KL term (this is not KTO).
    RPO @c1b5163 ``RPOUnpairedTrainer.loss``; config/loss/rpo-unpaired.yaml (beta 0.1, tau 0.5).

    Args: policy_logps (N,), reference_logps (N,) summed completion log-probs; is_chosen (N,) bool;
        prompt_embeddings (N, d); ``beta`` > 0; ``temperature`` > 0.
    Returns: None when N_c = 0 or N_r = 0 (no matrix can be formed: skip the step and count it, as the
        reference code does); else losses (N_c,) (float32), chosen_rewards (N_c,), rejected_rewards (N_r,).
    """
    _check_positive("beta", beta, "it scales the weighted margins inside the sigmoid")
    _check_positive("temperature", temperature, "RPO divides the prompt distance by it")
    size = _check_vectors(policy_logps=policy_logps, reference_logps=reference_logps, is_chosen=is_chosen)
    if is_chosen.dtype != torch.bool:
        raise ValueError(f"is_chosen must be a bool tensor, got {is_chosen.dtype}")
    _check_embeddings("prompt_embeddings", prompt_embeddings, size)
    is_chosen = is_chosen.to(policy_logps.device)
    if bool(is_chosen.all()) or not bool(is_chosen.any()):
        return None
    logratios = policy_logps - reference_logps
    chosen_logratios, rejected_logratios = logratios[is_chosen], logratios[~is_chosen]
    embedding_side = is_chosen.to(prompt_embeddings.device)
    weights = rpo_weights(prompt_embeddings[embedding_side], prompt_embeddings[~embedding_side], temperature)
    losses = rpo_contrast_loss(chosen_logratios, rejected_logratios, weights, beta)
    return PreferenceLoss(losses, *_rewards(beta, chosen_logratios, rejected_logratios))


# ---------------------------------------------------------------------------------------------------
# One entry point for the paired losses (the trainer calls this)
# ---------------------------------------------------------------------------------------------------
def paired_preference_loss(
    loss_type: str,
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    reference_chosen_logps: torch.Tensor,
    reference_rejected_logps: torch.Tensor,
    *,
    beta: float,
    chosen_lengths: torch.Tensor | None = None,
    rejected_lengths: torch.Tensor | None = None,
    prompt_embeddings: torch.Tensor | None = None,
    temperature: float = DEFAULT_RPO_TEMPERATURE,
    diagonal_weight: float = DEFAULT_RPO_DIAGONAL_WEIGHT,
) -> PreferenceLoss:
    """The paired loss named by ``--loss_type`` (every type except rpo_unpaired), on (M,) log-probs.

    ``ipo`` needs ``chosen_lengths``/``rejected_lengths`` (M,); ``rpo_paired`` needs ``prompt_embeddings``
    (M, d). The training loss is ``result.losses.mean()``.
    """
    logps = (policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps)
    if loss_type == "sigmoid":
        return dpo_sigmoid_loss(*logps, beta)
    if loss_type == "ipo":
        if chosen_lengths is None or rejected_lengths is None:
            raise ValueError("loss_type 'ipo' needs chosen_lengths and rejected_lengths (completion token counts)")
        return ipo_loss(*logps, beta, chosen_lengths, rejected_lengths)
    if loss_type == "ipo_sum":
        return ipo_sum_loss(*logps, beta)
    if loss_type == "kto_pair":
        return kto_pair_loss(*logps, beta)
    if loss_type == "rpo_paired":
        if prompt_embeddings is None:
            raise ValueError("loss_type 'rpo_paired' needs prompt_embeddings (M, d)")
        return rpo_paired_loss(*logps, prompt_embeddings, beta, temperature)
    if loss_type == "rpo_diagonal":
        return rpo_diagonal_loss(*logps, beta, diagonal_weight)
    if loss_type == "rpo_uniform":
        return rpo_uniform_loss(*logps, beta)
    if loss_type in UNPAIRED_LOSS_TYPES:
        raise ValueError(f"loss_type {loss_type!r} takes unpaired examples: call rpo_unpaired_loss")
    raise ValueError(f"unknown loss_type {loss_type!r}; choose one of {', '.join(LOSS_TYPES)}")
