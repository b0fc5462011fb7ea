"""Pre-clustering baseline (PinnerSage, Pai et al. 2020): cluster the history without learning, use medoids."""

from __future__ import annotations

import torch

from lightning_retrieval.models.interests.base import InterestModule, farthest_point_order
from lightning_retrieval.registry import register


def squared_distances(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``[B, L, D]``, ``[B, M, D]`` -> ``[B, L, M]`` squared Euclidean distances, each computed from its own pair.

    Not ``torch.cdist``'s default: above 25 points it uses ``|x|^2 + |y|^2 - 2 x.y`` through a matrix multiply,
    whose rounding depends on the other rows of the batch (and on padding), which flips near-ties in the Ward
    merges and the medoid choice. Clustering must not depend on how much padding a history has.
    """
    return torch.cdist(x, y, compute_mode="donot_use_mm_for_euclid_dist").pow(2)


def ward_labels(x: torch.Tensor, mask: torch.Tensor, k: int) -> torch.Tensor:
    """Ward agglomerative clustering down to (at most) ``k`` clusters per user, batched over users.

    Every step merges, for each user still above ``k`` clusters, the pair with the smallest Ward distance
    ``D(a, b) = 2 n_a n_b / (n_a + n_b) |mu_a - mu_b|^2`` (twice the increase in within-cluster variance; the
    square of scipy's ``linkage(method="ward")`` height). ``D`` starts as the squared Euclidean distances and is
    kept up to date by the Lance-Williams update, one row and column per merge, never recomputed:
    ``D(c, a+b) = ((n_a + n_c) D(c, a) + (n_b + n_c) D(c, b) - n_c D(a, b)) / (n_a + n_b + n_c)``.
    Each cluster's nearest neighbour is cached, so a step reads ``[B, L]`` minima plus the few rows whose
    neighbour was merged, not the ``[B, L, L]`` matrix. Loop over merge steps (at most L - k), never over users.

    Args:
        x: ``[B, L, D]`` points; mask: ``[B, L]`` True for real points.
    Returns:
        cluster labels ``[B, L]``: the slot of the cluster's surviving (lowest) member; -1 for padding.
    """
    batch, length, _ = x.shape
    labels = torch.where(mask, torch.arange(length, device=x.device).expand(batch, -1), -1)
    remaining = mask.sum(1)
    if not bool((remaining > k).any()):
        return labels
    inf = float("inf")
    slots = torch.arange(length, device=x.device)
    dist = squared_distances(x, x)  # [B, L, L]
    dist = dist.masked_fill(~(mask[:, :, None] & mask[:, None, :]) | torch.eye(length, dtype=torch.bool), inf)
    flat = dist.view(batch, length * length)
    counts = mask.to(x.dtype)
    near, near_to = dist.min(2)  # [B, L] each cluster's nearest-neighbour distance and slot
    for _ in range(length - k):
        users = torch.nonzero(remaining > k).squeeze(1)  # users that merge this step
        if users.numel() == 0:
            break
        u = users[:, None]
        first = near[users].argmin(1)
        second = near_to[users, first]
        a, b = torch.minimum(first, second)[:, None], torch.maximum(first, second)[:, None]  # [m, 1], a < b
        n = counts[users]  # [m, L]
        n_a, n_b = n.gather(1, a), n.gather(1, b)
        row_a, row_b = dist[users, a.squeeze(1)], dist[users, b.squeeze(1)]  # [m, L]
        d_ab = row_a.gather(1, b)
        merged = ((n_a + n) * row_a + (n_b + n) * row_b - n * d_ab) / (n_a + n_b + n)
        merged = merged.masked_fill((n == 0) | (slots == a) | (slots == b), inf)  # [m, L] to the cluster a+b
        # write row and column a (merged) and row and column b (gone) of each merging user's matrix
        cells = torch.cat([a * length + slots, slots * length + a, b * length + slots, slots * length + b], 1)
        values = torch.cat([merged, merged, torch.full_like(merged, inf), torch.full_like(merged, inf)], 1)
        flat.index_put_((u.expand_as(cells), cells), values)
        counts.index_put_((u, b), torch.zeros_like(n_b))
        counts.index_put_((u, a), n_a + n_b)
        remaining[users] -= 1
        labels[users] = torch.where(labels[users] == b, a, labels[users])
        # nearest neighbours: the merged cluster, clusters whose neighbour was a or b (recomputed), the others
        user_near, user_to = near[users], near_to[users]
        stale = ((user_to == a) | (user_to == b)) & (n > 0)
        closer = (merged < user_near) | ((merged == user_near) & (a < user_to))
        user_near, user_to = torch.where(closer, merged, user_near), torch.where(closer, a, user_to)
        best, best_to = merged.min(1, keepdim=True)
        user_near = user_near.scatter(1, a, best).scatter(1, b, torch.full_like(best, inf))
        user_to = user_to.scatter(1, a, best_to)
        stale_user, stale_slot = torch.nonzero(stale & (slots != a) & (slots != b), as_tuple=True)
        if stale_user.numel():
            fresh, fresh_to = dist[users[stale_user], stale_slot].min(1)
            user_near[stale_user, stale_slot], user_to[stale_user, stale_slot] = fresh, fresh_to
        near[users], near_to[users] = user_near, user_to
    return labels


def kmeans_labels(x: torch.Tensor, mask: torch.Tensor, k: int, iterations: int = 10) -> torch.Tensor:
    """Batched Lloyd k-means with maxmin initialisation; labels are centroid slots ``[B, L]`` (-1 padding)."""
    batch = x.shape[0]
    positions, slot_valid = farthest_point_order(x, mask, k)
    centroids = x[torch.arange(batch)[:, None], positions]
    for _ in range(iterations):
        dist = squared_distances(x, centroids).masked_fill(~slot_valid[:, None, :], float("inf"))
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
            spread = (squared_distances(x, x) * same).sum(-1).masked_fill(~mask, float("inf"))
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
