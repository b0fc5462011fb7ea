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
