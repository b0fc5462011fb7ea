"""In-batch sampled softmax with logQ correction, learnable temperature and optional corpus negatives."""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol
import torch.nn.functional as F
from torch import nn

from lightning_retrieval.registry import component_kind, register


def _gather(tensor: torch.Tensor) -> torch.Tensor:
    """All-gather without gradients (ids, log-probabilities), concatenated in rank order."""
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


@component_kind("losses")
class RetrievalLoss(nn.Module):
    """``forward(user [B, D], item [B, D], item_ids [B], item_log_q [B], neg [M, D], neg_ids [M], neg_log_q [M])``."""


@register("sampled_softmax")
class SampledSoftmaxLoss(RetrievalLoss):
    """Softmax over the batch's positives (and optional shared corpus negatives), row i's label is item i.

    Logit ``s_ij = <u_i, v_j> / tau``. With ``logq_correction`` each in-batch column is corrected by
    ``log(B * q_j)``, ``q_j`` the item's share of training interactions (Yi et al. 2019), and each corpus
    negative by the log expected count under its sampler. Columns holding the same item as row i's positive
    (duplicates in the batch, accidental hits among corpus negatives) are masked out, not used as negatives.

    Args:
        temperature: initial (or fixed) softmax temperature.
        learn_temperature: learn ``log(1/tau)``; clamped so that ``tau >= min_temperature``.
        min_temperature: lower bound of the learned temperature.
        logq_correction: apply the sampling-bias correction.
        mask_duplicates: mask columns whose item equals the row's positive.
        gather_negatives: under distributed training, use every process's positives as negatives (all-gather
            with gradients), so N processes with batch B train like one process with batch N * B.
    """

    def __init__(
        self,
        temperature: float = 0.05,
        learn_temperature: bool = True,
        min_temperature: float = 0.01,
        logq_correction: bool = True,
        mask_duplicates: bool = True,
        gather_negatives: bool = True,
    ):
        super().__init__()
        if not 0 < min_temperature <= temperature:
            raise ValueError(f"need 0 < min_temperature <= temperature, got {min_temperature}, {temperature}")
        log_inv = torch.tensor(math.log(1.0 / temperature))
        if learn_temperature:
            self.log_inverse_temperature = nn.Parameter(log_inv)
        else:
            self.register_buffer("log_inverse_temperature", log_inv)
        self.max_log_inverse = math.log(1.0 / min_temperature)
        self.logq_correction = logq_correction
        self.mask_duplicates = mask_duplicates
        self.gather_negatives = gather_negatives

    @property
    def temperature(self) -> torch.Tensor:
        return 1.0 / self.log_inverse_temperature.clamp(max=self.max_log_inverse).exp()

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
        """Corrected, masked logits ``[B, C + M]`` over ``C`` in-batch columns (``C = B`` on one process);
        the positive of row i is column ``positives[i]`` (default i)."""
        scores, log_counts = self.scores_and_log_counts(user, item, item_log_q, neg, neg_log_q)
        return self.corrected_logits(scores, log_counts, item_ids, neg_ids, positives, inplace=True)

    def scores_and_log_counts(
        self, user, item, item_log_q, neg=None, neg_log_q=None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Scaled scores ``<u, v> / tau`` ``[B, C + M]`` (in-batch columns, then corpus negatives) and each column's
        logQ offset ``[C + M]`` (log expected count: ``log(C q_j)`` in-batch, the sampler's for negatives; None
        without ``logq_correction``)."""
        scale = self.log_inverse_temperature.clamp(max=self.max_log_inverse).exp()
        scores = user @ item.T * scale
        log_counts = item_log_q + math.log(item.shape[0]) if self.logq_correction else None
        if neg is not None:
            scores = torch.cat([scores, user @ neg.T * scale], dim=1)
            log_counts = torch.cat([log_counts, neg_log_q]) if log_counts is not None else None
        return scores, log_counts

    def corrected_logits(
        self, scores, log_counts, item_ids, neg_ids=None, positives=None, inplace: bool = False
    ) -> torch.Tensor:
        """``scores`` minus the logQ offsets, with every other column holding a row's positive item set to -inf;
        ``inplace``: written into ``scores`` (for callers that do not read the scores again; same values)."""
        rows = torch.arange(scores.shape[0], device=scores.device)
        positives = rows if positives is None else positives
        logits = scores
        if log_counts is not None:
            logits = logits.sub_(log_counts[None, :]) if inplace else logits - log_counts[None, :]
            inplace = True  # a fresh tensor from here on
        if self.mask_duplicates:
            ids = item_ids if neg_ids is None else torch.cat([item_ids, neg_ids])
            same = ids[None, :] == item_ids[positives][:, None]
            same[rows, positives] = False
            logits = logits.masked_fill_(same, float("-inf")) if inplace else logits.masked_fill(same, float("-inf"))
        return logits

    def forward(self, user, item, item_ids, item_log_q, neg=None, neg_ids=None, neg_log_q=None) -> torch.Tensor:
        offset = 0
        if self.gather_negatives and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            offset = dist.get_rank() * user.shape[0]  # every rank has the same batch size (drop_last)
            # [W*B, D] in rank order; the backward reduce-scatters, so gradients flow back to the owning rank
            # private module on purpose: torch 2.13 deprecates the public torch.distributed.nn.functional.all_gather
            # in favour of this function; tests/test_packaging.py pins it
            item = funcol.all_gather_single_autograd(item.contiguous(), gather_dim=0, group=dist.group.WORLD)
            item_ids, item_log_q = _gather(item_ids), _gather(item_log_q)
        labels = torch.arange(user.shape[0], device=user.device) + offset
        logits = self.logits(user, item, item_ids, item_log_q, neg, neg_ids, neg_log_q, positives=labels)
        return F.cross_entropy(logits, labels)
