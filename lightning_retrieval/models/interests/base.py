"""The contract multi-interest modules implement (DCM, self-attention, dynamic routing, pre-clustering)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lightning_retrieval.registry import component_kind


@dataclass
class HistoryRows:
    """A history as its distinct table rows: ``rows [U, D]`` and ``index [B, L]`` (0 at padding), so that the
    history is ``rows[index] * mask``. Interest modules with ``takes_history_rows = True`` are also given it
    (``forward(history, mask, rows=...)``) and may run per-item work once per distinct item."""

    rows: torch.Tensor
    index: torch.Tensor

    def gather(self, mask: torch.Tensor) -> torch.Tensor:
        """``[B, L, D]`` history, zeros where ``mask [B, L]`` is False (read from an appended zero row)."""
        padded = torch.cat([self.rows, self.rows.new_zeros(1, self.rows.shape[1])])
        index = self.index.masked_fill(~mask, self.rows.shape[0])
        return padded.index_select(0, index.flatten()).view(*self.index.shape, -1)


@component_kind("interests")
class InterestModule(nn.Module):
    """``forward(history [B, L, D], mask [B, L]) -> (interests [B, K, D], valid [B, K])``.

    ``valid[b, k]`` is False for an interest with no supporting history item (e.g. a user with fewer than K
    history items): such vectors must be masked downstream, never searched. The first constructor
    arguments are ``embedding_dim`` and ``num_interests``.

    ``routing_mass``: modules that weigh their interests (DCM's routing mass ``Σ_l w_lk``) set it in ``forward``
    to a detached ``[B, K]`` tensor for that call (0 for invalid slots); it stays None for the others. Consumers
    (a serving budget in proportion to importance) read it right after calling the module.

    ``routing``: modules that learn how history items feed interests (``exposes_routing = True``: DCM's assignment,
    self-attention's attention, dynamic routing's coupling) set it in ``forward`` to that call's routing matrix
    ``[B, K, L]`` (row k: how much each history position feeds interest k; 0 at padding), *with* gradient, so that a
    routing regulariser (registry ``interest_regularizers``) can train it. Read it through :meth:`last_routing`.

    ``takes_history_rows``: the module's ``forward`` also takes ``rows`` (:class:`HistoryRows`, or None), the
    history's distinct table rows, when the caller has them.
    """

    routing_mass: torch.Tensor | None = None
    exposes_routing: bool = False
    takes_history_rows: bool = False
    routing: torch.Tensor | None = None

    def __init__(self, embedding_dim: int, num_interests: int):
        super().__init__()
        if embedding_dim < 1 or num_interests < 1:
            raise ValueError(f"need embedding_dim >= 1 and num_interests >= 1, got {embedding_dim}, {num_interests}")
        self.embedding_dim = embedding_dim
        self.num_interests = num_interests

    def last_routing(self) -> torch.Tensor:
        """The routing matrix ``[B, K, L]`` of the last ``forward`` (with gradient); a clear error for modules
        that have none (e.g. pre-clustering, whose clusters are not learned) or before the first call."""
        if not self.exposes_routing:
            raise ValueError(
                f"{type(self).__name__} exposes no routing matrix [B, K, L] (it does not learn how history items "
                "feed its interests); routing regularisers need an interest module with exposes_routing = True, "
                "e.g. dcm, multihead_attention or dynamic_routing"
            )
        if self.routing is None:
            raise RuntimeError(f"{type(self).__name__}.routing is unset: call the module before reading it")
        return self.routing

    def check_input(self, history: torch.Tensor, mask: torch.Tensor) -> None:
        if history.dim() != 3 or history.shape[-1] != self.embedding_dim or mask.shape != history.shape[:2]:
            raise ValueError(
                f"{type(self).__name__} expects history [B, L, {self.embedding_dim}] and mask [B, L], got "
                f"{list(history.shape)} and {list(mask.shape)}"
            )


def squash(z: torch.Tensor, eps: float = 1e-9) -> torch.Tensor:
    """Capsule squash ``|z|^2 / (1 + |z|^2) * z / |z|`` on the last dim (0 stays 0, no NaN)."""
    sq = (z * z).sum(-1, keepdim=True)
    return z * (sq / (1.0 + sq)) / torch.sqrt(sq + eps)


def farthest_point_order(
    vectors: torch.Tensor,
    mask: torch.Tensor,
    k: int,
    first: torch.Tensor | None = None,
    similarity: str = "cosine",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Maxmin (farthest-point) selection of ``k`` history positions per user, vectorised over the batch.

    Step 1 takes ``first`` (default: the most recent valid position); each next step takes the valid, unchosen
    position whose highest similarity (``cosine``, or ``dot`` as in the KDD'25 paper's ``c_j^T e_i``) to the
    chosen ones is lowest. Padding is excluded with ±inf (never by multiplying), so it can never win.

    Args:
        vectors: ``[B, L, D]`` (detached by the caller if no gradient is wanted).
        mask: ``[B, L]`` valid positions.
    Returns:
        ``(positions [B, k], slot_valid [B, k])``; ``slot_valid`` is False once a user runs out of valid items.
    """
    batch, length, _ = vectors.shape
    if similarity not in ("cosine", "dot"):
        raise ValueError(f"similarity must be 'cosine' or 'dot', got {similarity!r}")
    unit = torch.nn.functional.normalize(vectors, dim=-1) if similarity == "cosine" else vectors
    sims = unit @ unit.transpose(1, 2)  # [B, L, L]
    arange = torch.arange(length, device=vectors.device)
    if first is None:  # most recent valid position (histories are right-aligned, but do not rely on it)
        first = torch.where(mask, arange, -1).max(1).values.clamp(min=0)
    chosen = torch.zeros(batch, length, dtype=torch.bool, device=vectors.device)
    positions = torch.zeros(batch, k, dtype=torch.long, device=vectors.device)
    n_valid = mask.sum(1)
    positions[:, 0] = first
    chosen[torch.arange(batch), first] = True
    closest = sims[torch.arange(batch), first]  # [B, L] max similarity to the chosen set
    for step in range(1, k):
        score = closest.masked_fill(~mask | chosen, float("inf"))
        pick = score.argmin(1)
        positions[:, step] = pick
        chosen[torch.arange(batch), pick] = True
        closest = torch.maximum(closest, sims[torch.arange(batch), pick])
    slot_valid = torch.arange(k, device=vectors.device)[None, :] < n_valid[:, None]
    return positions, slot_valid


def recency_rank(mask: torch.Tensor) -> torch.Tensor:
    """``[B, L]`` rank of each valid position counted from the user's most recent valid item (0 = most recent).

    Independent of how much padding there is and where it sits, so anything indexed by it (position
    embeddings, fixed routing logits) gives the same output however a history is padded. Padding gets 0.
    """
    later = mask.flip(1).long().cumsum(1).flip(1)  # valid items at or after each position
    return torch.where(mask, later - 1, torch.zeros_like(later))


def interests_supported(mask: torch.Tensor, num_interests: int) -> torch.Tensor:
    """``[B, K]``: slot ``k`` is valid iff the user has more than ``k`` valid items (n items: <= n interests)."""
    n = mask.sum(1)
    return torch.arange(num_interests, device=mask.device)[None, :] < n[:, None]
