"""Interest-aware hard negatives (REMI's IHN, Xie et al. RecSys 2023) as a sampled-softmax option."""

from __future__ import annotations

import math

import torch

from lightning_retrieval.losses.sampled_softmax import SampledSoftmaxLoss
from lightning_retrieval.registry import register


def hard_negative_log_weights(
    scores: torch.Tensor, log_counts: torch.Tensor, negative: torch.Tensor, beta: float
) -> torch.Tensor:
    """Log of the self-normalised importance weights that turn a pool of sampled negatives into draws from the
    hard-negative distribution ``q*(j | u) ∝ exp(beta * s_uj)`` over the corpus: ``[B, C]`` (``-inf`` off the pool).

    Column c of row u holds an item drawn with expected count ``exp(log_counts[u, c])`` (in-batch: ``B q_j``;
    corpus negatives: their sampler's; 0 when every column counts once); its weight is
    ``exp(beta * s_uc - log_counts[u, c])`` normalised over the row's pool (``negative [B, C]``). With
    ``beta = 0`` this is the plain logQ-corrected (uniform-over-corpus) weighting. Scores are detached: the
    weights play the role of a sampling distribution, which is not differentiated. Like any self-normalised
    importance weighting it is consistent, with a bias of order 1 / (pool size) on rare, hard items.
    """
    log_r = (beta * scores.detach() - log_counts).masked_fill(~negative, float("-inf"))
    return log_r - _finite_logsumexp(log_r)


def _finite_logsumexp(x: torch.Tensor) -> torch.Tensor:
    """Row-wise logsumexp ``[B, C] -> [B, 1]``, finite for rows that are all ``-inf`` (no negative left)."""
    return torch.logsumexp(x, dim=1, keepdim=True).clamp(min=torch.finfo(x.dtype).min)


@register("hard_negative_softmax")
class HardNegativeSoftmaxLoss(SampledSoftmaxLoss):
    """Sampled softmax whose negatives are re-weighted towards the ones the (selected) interest scores highest.

    REMI's interest-aware hard negative mining: the ideal negative distribution is
    ``q*(j | u) ∝ exp(beta * s_uj)`` (``s_uj`` the logit of item j for user vector u: under the ``interests``
    query kind u is the interest selected for the target, so the negatives are hard *for that interest*), and the
    negatives at hand (the in-batch positives, plus corpus negatives if any) are a Monte-Carlo sample from the
    sampling distribution. Each row's negative sum ``Σ_j exp(s_uj) / E[count_j]`` becomes
    ``N_hat * Σ_j w_uj exp(s_uj)`` with ``w`` the self-normalised weights of :func:`hard_negative_log_weights` and
    ``N_hat = Σ_j 1 / E[count_j]`` the corpus size the pool stands for; the positive's logit is unchanged.
    ``beta = 0`` gives back the parent loss (uniform over the corpus after the logQ correction); larger ``beta``
    puts more of the denominator on hard negatives. With ``logq_correction: false`` every column counts once.

    Args:
        beta: hardness (REMI's ``beta``; the paper's runs use 0.1, 1 and 10), on the loss's logits ``<u, v> / tau``.
        Other arguments: as ``sampled_softmax``.
    """

    def __init__(
        self,
        beta: float = 1.0,
        temperature: float = 0.05,
        learn_temperature: bool = True,
        min_temperature: float = 0.01,
        logq_correction: bool = True,
        mask_duplicates: bool = True,
        gather_negatives: bool = True,
    ):
        super().__init__(
            temperature, learn_temperature, min_temperature, logq_correction, mask_duplicates, gather_negatives
        )
        if not math.isfinite(beta) or beta < 0:
            raise ValueError(f"beta must be a finite number >= 0 (0: no hard-negative weighting), got {beta}")
        self.beta = beta

    def logits(
        self,
        user,
        item,
        item_ids,
        item_log_q,
        neg=None,
        neg_ids=None,
        neg_log_q=None,
        positives: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The parent's corrected, masked logits ``[B, C + M]`` with every negative column ``c`` of row u set to
        ``s_uc + log w_uc + log N_hat_u``; the positive column and masked columns are left as they are."""
        scores, log_counts = self.scores_and_log_counts(user, item, item_log_q, neg, neg_log_q)
        corrected = self.corrected_logits(scores, log_counts, item_ids, neg_ids, positives)
        rows = torch.arange(user.shape[0], device=user.device)
        positives = rows if positives is None else positives
        if log_counts is None:  # every column counts once
            log_counts = torch.zeros(scores.shape[1], dtype=scores.dtype, device=scores.device)
        log_counts = log_counts[None, :].expand_as(scores)
        negative = torch.isfinite(corrected)
        negative[rows, positives] = False
        log_w = hard_negative_log_weights(scores, log_counts, negative, self.beta)
        log_pool = _finite_logsumexp((-log_counts).masked_fill(~negative, float("-inf")))
        return torch.where(negative, scores + log_w + log_pool, corrected)
