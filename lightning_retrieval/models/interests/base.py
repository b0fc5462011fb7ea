"""The contract multi-interest modules implement (DCM, self-attention, dynamic routing, pre-clustering)."""

from __future__ import annotations

import torch
from torch import nn

from lightning_retrieval.registry import component_kind


@component_kind("interests")
class InterestModule(nn.Module):
    """``forward(history [B, L, D], mask [B, L]) -> (interests [B, K, D], valid [B, K])``.

    ``valid[b, k]`` is False for an interest with no supporting history item (e.g. a user with fewer than K
    history items): such vectors must be masked downstream, never searched. The first constructor
    arguments are ``embedding_dim`` and ``num_interests``.
    """

    def __init__(self, embedding_dim: int, num_interests: int):
        super().__init__()
        if embedding_dim < 1 or num_interests < 1:
            raise ValueError(f"need embedding_dim >= 1 and num_interests >= 1, got {embedding_dim}, {num_interests}")
        self.embedding_dim = embedding_dim
        self.num_interests = num_interests

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
    vectors: torch.Tensor, mask: torch.Tensor, k: int, first: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Maxmin (farthest-point) selection of ``k`` history positions per user, vectorised over the batch.

    Step 1 takes ``first`` (default: the most recent valid position); each next step takes the valid, unchosen
    position whose highest cosine similarity to the chosen ones is lowest. Padding is excluded with ±inf
    (never by multiplying), so it can never win.

    Args:
        vectors: ``[B, L, D]`` (detached by the caller if no gradient is wanted).
        mask: ``[B, L]`` valid positions.
    Returns:
        ``(positions [B, k], slot_valid [B, k])``; ``slot_valid`` is False once a user runs out of valid items.
    """
    batch, length, _ = vectors.shape
    unit = torch.nn.functional.normalize(vectors, dim=-1)
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
