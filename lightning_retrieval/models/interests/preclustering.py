"""Pre-clustering baseline (PinnerSage, Pai et al. 2020): cluster the history without learning, use medoids."""

from __future__ import annotations

import torch

from lightning_retrieval.models.interests.base import InterestModule, farthest_point_order
from lightning_retrieval.registry import register


def ward_labels(x: torch.Tensor, mask: torch.Tensor, k: int) -> torch.Tensor:
    """Ward agglomerative clustering down to (at most) ``k`` clusters per user, batched over users.

    Every step merges, for each user still above ``k`` clusters, the pair with the smallest Ward cost
    ``n_a n_b / (n_a + n_b) |mu_a - mu_b|^2``. Loop over merge steps (at most L - k), never over users.
    Returns cluster labels ``[B, L]`` (the index of the cluster's surviving slot; -1 for padding).
    """
    batch, length, _ = x.shape
    sums, counts = x * mask[:, :, None], mask.float()
    labels = torch.where(mask, torch.arange(length, device=x.device).expand(batch, -1), -1)
    active = mask.clone()
    eye = torch.eye(length, dtype=torch.bool, device=x.device)[None]
    rows = torch.arange(batch, device=x.device)
    for _ in range(max(length - k, 0)):
        need = active.sum(1) > k
        if not need.any():
            break
        mu = sums / counts.clamp(min=1)[:, :, None]
        dist = torch.cdist(mu, mu).pow(2)
        n_a, n_b = counts[:, :, None], counts[:, None, :]
        cost = n_a * n_b / (n_a + n_b).clamp(min=1) * dist
        pair_ok = active[:, :, None] & active[:, None, :] & ~eye
        cost = cost.masked_fill(~pair_ok, float("inf")).flatten(1)
        flat = cost.argmin(1)
        a, b = flat // length, flat % length
        a, b = torch.minimum(a, b), torch.maximum(a, b)
        upd = need  # users that merge this step
        sums[rows[upd], a[upd]] += sums[rows[upd], b[upd]]
        counts[rows[upd], a[upd]] += counts[rows[upd], b[upd]]
        counts[rows[upd], b[upd]] = 0
        active[rows[upd], b[upd]] = False
        moved = upd[:, None] & (labels == b[:, None])
        labels = torch.where(moved, a[:, None].expand(-1, length), labels)
    return labels


def kmeans_labels(x: torch.Tensor, mask: torch.Tensor, k: int, iterations: int = 10) -> torch.Tensor:
    """Batched Lloyd k-means with maxmin initialisation; labels are centroid slots ``[B, L]`` (-1 padding)."""
    batch = x.shape[0]
    positions, slot_valid = farthest_point_order(x, mask, k)
    centroids = x[torch.arange(batch)[:, None], positions]
    for _ in range(iterations):
        dist = torch.cdist(x, centroids).masked_fill(~slot_valid[:, None, :], float("inf"))
        labels = dist.argmin(-1)
        onehot = torch.nn.functional.one_hot(labels, k).float() * mask[:, :, None]
        counts = onehot.sum(1)
        new = torch.einsum("blk,bld->bkd", onehot, x) / counts.clamp(min=1)[:, :, None]
        centroids = torch.where(counts[:, :, None] > 0, new, centroids)
    return torch.where(mask, labels, -1)


@register("preclustering")
class PreClusteringInterests(InterestModule):
    """Clusters each user's history item embeddings (no gradient into the clustering), one interest per cluster.

    Each cluster is represented by its medoid item (the member with the least total squared distance to the
    others); clusters are ordered by importance ``Σ_members exp(-decay * age)`` (age in positions from the
    most recent item), so size and recency both count, and the first interests are the most important.

    Args:
        method: ``ward`` (agglomerative, as PinnerSage) or ``kmeans``.
        recency_decay: per-position decay of the importance weight.
    """

    def __init__(
        self,
        embedding_dim: int,
        num_interests: int = 4,
        method: str = "ward",
        recency_decay: float = 0.05,
        kmeans_iterations: int = 10,
    ):
        super().__init__(embedding_dim, num_interests)
        if method not in ("ward", "kmeans"):
            raise ValueError(f"method must be 'ward' or 'kmeans', got {method!r}")
        self.method, self.recency_decay, self.kmeans_iterations = method, recency_decay, kmeans_iterations

    def forward(self, history: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``history [B, L, D]``, ``mask [B, L]`` -> ``(medoids [B, K, D], valid [B, K])``."""
        self.check_input(history, mask)
        batch, length, _ = history.shape
        with torch.no_grad():
            x = history.detach()
            if self.method == "ward":
                labels = ward_labels(x, mask, self.num_interests)
            else:
                labels = kmeans_labels(x, mask, self.num_interests, self.kmeans_iterations)
            slots = labels.clamp(min=0)
            age = (length - 1 - torch.arange(length, device=x.device)).float()
            weight = torch.exp(-self.recency_decay * age)[None].expand(batch, -1) * mask
            importance = torch.zeros(batch, length, device=x.device).scatter_add_(1, slots, weight)
            # medoid: the member with the least summed squared distance to its cluster's members
            same = (labels[:, :, None] == labels[:, None, :]) & mask[:, :, None] & mask[:, None, :]
            spread = (torch.cdist(x, x).pow(2) * same).sum(-1).masked_fill(~mask, float("inf"))
            best = torch.full((batch, length), float("inf"), device=x.device).scatter_reduce(
                1, slots, spread, reduce="amin"
            )
            is_medoid = mask & (spread == best.gather(1, slots))
            # one medoid per cluster (first on ties); its position, per cluster slot
            medoid_pos = torch.full((batch, length), length, device=x.device, dtype=torch.long)
            pos = torch.arange(length, device=x.device).expand(batch, -1)
            medoid_pos = medoid_pos.scatter_reduce(1, slots, torch.where(is_medoid, pos, length), reduce="amin")
            order = importance.argsort(1, descending=True)[:, : self.num_interests]  # clusters by importance
            valid = importance.gather(1, order) > 0
            chosen = medoid_pos.gather(1, order).clamp(max=length - 1)
        interests = history[torch.arange(batch)[:, None], chosen] * valid[:, :, None]
        return interests, valid
