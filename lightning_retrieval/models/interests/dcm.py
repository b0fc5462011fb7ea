"""Differentiable Clustering Module (Pinterest KDD'25): capsule routing with maxmin init and single assignment."""

from __future__ import annotations

import torch
from torch import nn

from lightning_retrieval.models.interests.base import InterestModule, farthest_point_order, squash
from lightning_retrieval.registry import register


@register("dcm")
class DifferentiableClusteringModule(InterestModule):
    """Clusters the history inside the network into K interest centroids.

    1. Maxmin (farthest-point) initialisation: centroid 1 is the most recent valid item (``first: recent``) or
       a random valid one (``first: random``, training only; evaluation always starts from the most recent, so
       serving is deterministic); each next centroid is the valid item least similar (``init_similarity``) to
       the chosen ones. So the first centroids are the most spread out / representative, which is what lets
       serving keep only the first K_u of them.
    2. ``iterations`` rounds of routing: ``w_lk = softmax_k(c_k · S e_l)``; with ``single_assignment`` only
       the arg-max centroid keeps its (differentiable) weight, so every history item feeds exactly one
       cluster; ``c_k = squash(Σ_l w_lk S e_l)``.
    3. A slot is valid if the user had enough distinct valid items and the cluster received weight.

    Valid history = non-padding positions (``mask``); filter low ratings upstream (the datamodule's ``min_rating``)
    if they should not seed clusters.

    Routing mass (the paper's interest importance, which sizes each interest's serving budget): after a call,
    ``routing_mass`` ``[B, K]`` holds ``Σ_l w_lk`` of the final iteration (0 for invalid slots) and
    ``last_assignment`` ``[B, L, K]`` the weights themselves; ``forward_with_mass`` returns it with the interests.

    Args:
        bilinear: learn the shared map ``S`` (initialised to the identity), else ``S = I``.
        first: ``recent`` or ``random`` (the paper's VA-FPI draws the first centroid at random).
        init_similarity: maxmin initialisation on ``cosine`` (default) or ``dot`` products (the paper's
            ``c_j^T e_i``, under which short vectors look far from everything and become seeds).
        centroid_scale: what the module returns as the interest (routing itself always uses the squashed
            centroids, as in the paper): ``squash`` (default, the paper) returns ``squash(Σ_l w_lk S e_l)``, whose
            norm grows with the cluster's routing mass; ``unit`` returns its direction ``Σ_l w_lk S e_l / |·|``
            (METHODS.md §3(e) "Centroid scale"), so an interest reaches the user tower at one scale however many
            history items support it: a cluster of one item reads as that item's direction, not as a near-zero
            field. Scale-free (no threshold); the support stays in ``routing_mass`` for the serving budget.
            On the synthetic benchmark (docs/synthetic_interests_dcm_fix.md) ``squash`` slots of routing mass
            <= 0.5 reach the tower at norm 0.07 and put 8% of their top-50 in the user's own clusters (mass > 4.5:
            norm 0.84, 99%); ``unit`` alone did not fix that: such a slot's direction was the problem there (its
            ID rows were noise), which the ``interests`` queries' ``history_space: items`` addresses.
        min_support: a slot is valid only if at least this many valid history items are routed to it (their
            largest routing weight is its); the slot with the most items stays valid, so a user with history always
            keeps one interest. 1 (default) = any slot that received an item. Farthest-point seeding picks each
            next seed as the item least like the chosen ones, so a cluster of one item is by construction the
            history's most isolated item (an outlier, or a rarely seen item whose embedding is barely trained),
            not a recurring interest; 2 serves only clusters that at least two items support. A count, so it
            does not depend on the embeddings' scale or on K.
    """

    exposes_routing = True

    def __init__(
        self,
        embedding_dim: int,
        num_interests: int = 7,
        iterations: int = 3,
        single_assignment: bool = True,
        bilinear: bool = True,
        first: str = "recent",
        init_similarity: str = "cosine",
        centroid_scale: str = "squash",
        min_support: int = 1,
    ):
        super().__init__(embedding_dim, num_interests)
        if iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {iterations}")
        if first not in ("recent", "random"):
            raise ValueError(f"first must be 'recent' or 'random', got {first!r}")
        if init_similarity not in ("cosine", "dot"):
            raise ValueError(f"init_similarity must be 'cosine' or 'dot', got {init_similarity!r}")
        if centroid_scale not in ("squash", "unit"):
            raise ValueError(f"centroid_scale must be 'squash' or 'unit', got {centroid_scale!r}")
        if min_support < 1:
            raise ValueError(f"min_support must be >= 1 (history items per valid slot), got {min_support}")
        self.iterations = iterations
        self.single_assignment = single_assignment
        self.first = first
        self.init_similarity = init_similarity
        self.centroid_scale = centroid_scale
        self.min_support = min_support
        self.S = nn.Linear(embedding_dim, embedding_dim, bias=False) if bilinear else None
        if self.S is not None:
            nn.init.eye_(self.S.weight)
        self.last_assignment: torch.Tensor | None = None  # [B, L, K] routing weights of the last call
        self.routing_mass: torch.Tensor | None = None  # [B, K] Σ_l w_lk of the last call

    def forward(self, history: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``history [B, L, D]``, ``mask [B, L]`` -> ``(interests [B, K, D], valid [B, K])``."""
        self.check_input(history, mask)
        batch = history.shape[0]
        se = self.S(history) if self.S is not None else history
        first = None
        if self.first == "random" and self.training:
            noise = torch.rand(mask.shape, device=mask.device).masked_fill(~mask, -1.0)
            first = noise.argmax(1)
        positions, slot_valid = farthest_point_order(
            history.detach(), mask, self.num_interests, first, similarity=self.init_similarity
        )
        centroids = se[torch.arange(batch)[:, None], positions]  # [B, K, D]
        slot_mask = slot_valid[:, None, :]  # [B, 1, K]
        for _ in range(self.iterations):
            logits = torch.einsum("bkd,bld->blk", centroids, se).masked_fill(~slot_mask, float("-inf"))
            weights = torch.softmax(logits, dim=-1).nan_to_num(0.0)  # users without valid slots -> 0
            if self.single_assignment:
                winner = torch.nn.functional.one_hot(logits.argmax(-1), self.num_interests).bool()
                weights = weights * winner
            weights = weights * mask[:, :, None]
            summed = torch.einsum("blk,bld->bkd", weights, se)  # [B, K, D]
            centroids = squash(summed)
        if self.centroid_scale == "unit":  # the direction only (an empty slot stays 0)
            centroids = torch.nn.functional.normalize(summed, dim=-1)
        mass = weights.sum(1)  # [B, K]
        valid = slot_valid & (mass > 0)
        if self.min_support > 1:
            valid = valid & self.supported(logits, mask)
        self.last_assignment = weights.detach()
        self.routing = weights.transpose(1, 2)  # [B, K, L] with gradient, for routing regularisers
        self.routing_mass = (mass * valid).detach()
        return centroids, valid

    def supported(self, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``[B, K]``: slots with at least ``min_support`` valid items routed to them (``logits [B, L, K]`` of the
        last iteration, -inf at invalid slots), plus each user's best-supported slot."""
        winner = torch.nn.functional.one_hot(logits.argmax(-1), self.num_interests) & mask[:, :, None]
        support = winner.sum(1)  # [B, K] items per slot
        best = torch.nn.functional.one_hot(support.argmax(1), self.num_interests).bool()
        return (support >= self.min_support) | best

    def forward_with_mass(
        self, history: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``forward`` plus the routing mass: ``(interests [B, K, D], valid [B, K], mass [B, K])``.

        ``mass[b, k] = Σ_l w_lk`` (detached; 0 for invalid slots); ``mass / mass.sum(1)`` is the share of the
        serving budget the paper gives each interest.
        """
        interests, valid = self(history, mask)
        return interests, valid, self.routing_mass
