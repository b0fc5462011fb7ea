"""Behaviour-to-interest dynamic routing (MIND, Li et al. 2019 / ComiRec-DR)."""

from __future__ import annotations

import torch
from torch import nn

from lightning_retrieval.models.interests.base import InterestModule, squash
from lightning_retrieval.registry import register


@register("dynamic_routing")
class DynamicRoutingInterests(InterestModule):
    """Capsule routing with accumulated logits: ``b_lk += c_k · S e_l`` each iteration.

    Unlike DCM, the routing logits start at zero (``init: zeros``, ComiRec-DR) or random (``init: random``,
    MIND) and are accumulated, not recomputed from centroids; every item feeds every capsule (soft routing).

    Args:
        adaptive_k: MIND's per-user interest count ``K_u = max(1, min(K, floor(log2 n_u)))``; slots beyond
            ``K_u`` are invalid.
    """

    def __init__(
        self,
        embedding_dim: int,
        num_interests: int = 4,
        iterations: int = 3,
        init: str = "zeros",
        adaptive_k: bool = False,
    ):
        super().__init__(embedding_dim, num_interests)
        if init not in ("zeros", "random"):
            raise ValueError(f"init must be 'zeros' or 'random', got {init!r}")
        self.S = nn.Linear(embedding_dim, embedding_dim, bias=False)
        self.iterations, self.init, self.adaptive_k = iterations, init, adaptive_k

    def forward(self, history: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``history [B, L, D]``, ``mask [B, L]`` -> ``(interests [B, K, D], valid [B, K])``."""
        self.check_input(history, mask)
        se = self.S(history)  # [B, L, D]
        batch, length, _ = history.shape
        logits = torch.zeros(batch, length, self.num_interests, device=history.device)
        if self.init == "random":
            logits = torch.randn_like(logits)
        for step in range(self.iterations):
            weights = torch.softmax(logits, dim=-1) * mask[:, :, None]
            capsules = squash(torch.einsum("blk,bld->bkd", weights, se))
            if step < self.iterations - 1:  # routing logits carry no gradient (as in MIND/ComiRec)
                logits = logits + torch.einsum("bkd,bld->blk", capsules, se).detach()
        n = mask.sum(1)
        if self.adaptive_k:
            k_user = torch.clamp(torch.floor(torch.log2(n.clamp(min=1).float())), 1, self.num_interests).long()
        else:
            k_user = torch.full_like(n, self.num_interests)
        valid = (torch.arange(self.num_interests, device=n.device)[None] < k_user[:, None]) & (n[:, None] > 0)
        return capsules, valid
