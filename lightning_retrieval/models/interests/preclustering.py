"""Pre-clustering baseline (PinnerSage, Pai et al. 2020): cluster the history without learning, use medoids."""

from __future__ import annotations

import numbers

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


def pairwise_squared_distances(x: torch.Tensor, block: int = 13) -> torch.Tensor:
    """``[B, L, D]`` -> ``[B, L, L]`` squared Euclidean distances of every pair of points of a user.

    The same values as ``squared_distances(x, x)`` (each pair computed from its own two rows, so ``d(i, j)`` and
    ``d(j, i)`` are equal bit for bit): only the blocks on and above the diagonal are computed, the rest mirrored.
    """
    batch, length, _ = x.shape
    out = torch.empty(batch, length, length, dtype=x.dtype, device=x.device)
    for s in range(0, length, block):
        e = min(s + block, length)
        part = squared_distances(x[:, s:e], x[:, s:])  # [B, e - s, L - s]
        out[:, s:e, s:] = part
        out[:, s:, s:e] = part.transpose(1, 2)
    return out


WARD_IMPLEMENTATIONS = ("auto", "compiled", "torch")
COMPILED_DTYPES = (torch.float32, torch.float64)


def _check_ward_input(
    x: torch.Tensor, mask: torch.Tensor, k: int, distances: torch.Tensor | None, implementation: str
) -> None:
    """Errors naming what is wrong with ``ward_labels``' arguments (the compiled kernel does no bounds checks)."""
    if implementation not in WARD_IMPLEMENTATIONS:
        raise ValueError(f"implementation must be one of {WARD_IMPLEMENTATIONS}, got {implementation!r}")
    if x.dim() != 3 or mask.shape != x.shape[:2] or mask.dtype != torch.bool:
        raise ValueError(
            f"ward_labels expects points [B, L, D] and a bool mask [B, L], got {list(x.shape)} and "
            f"{mask.dtype} {list(mask.shape)}"
        )
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
        raise ValueError(f"k (clusters per user) must be an int >= 1, got {k!r}")
    batch, length, _ = x.shape
    if distances is not None and (
        distances.shape != (batch, length, length) or distances.dtype != x.dtype or distances.device != x.device
    ):
        raise ValueError(
            f"distances must be [B, L, L] = {[batch, length, length]} of the points' dtype and device "
            f"({x.dtype}, {x.device}), got {list(distances.shape)} {distances.dtype} on {distances.device}"
        )
    if implementation == "compiled" and not _compilable(x):
        raise ValueError(f"the compiled Ward takes CPU float32/float64 points, got {x.dtype} on {x.device}")


def _compilable(x: torch.Tensor) -> bool:
    """Whether the compiled kernel takes these points (CPU, float32 or float64)."""
    return x.device.type == "cpu" and x.dtype in COMPILED_DTYPES


def _non_finite_users(dist: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``[B]`` True for users with a NaN or inf in ``dist [B, L, L]`` between real points (padding may hold
    anything)."""
    return (~torch.isfinite(dist) & mask[:, :, None] & mask[:, None, :]).flatten(1).any(1)


def _refuse_non_finite(bad: torch.Tensor) -> None:
    """An error naming the users flagged in ``bad [B]``, if any."""
    if bool(bad.any()):
        users = torch.nonzero(bad).flatten()[:5].tolist()
        raise ValueError(
            f"non-finite squared distances between the real points of users {users} of the batch (NaN or inf in "
            "their points, or float overflow): Ward needs finite distances"
        )


def ward_labels(
    x: torch.Tensor,
    mask: torch.Tensor,
    k: int,
    distances: torch.Tensor | None = None,
    implementation: str = "auto",
) -> torch.Tensor:
    """Ward agglomerative clustering down to (at most) ``k`` clusters per user.

    Two implementations of the same merges, with the same labels bit for bit: ``compiled`` (numba, one user
    after another, ``ward_kernel.ward_labels_compiled``; CPU tensors of float32 or float64) and ``torch`` (below,
    batched over users, any device). ``auto`` takes ``compiled`` where it applies, else ``torch``.

    Every step merges, for each user still above ``k`` clusters, the pair with the smallest Ward distance
    ``D(a, b) = 2 n_a n_b / (n_a + n_b) |mu_a - mu_b|^2`` (twice the increase in within-cluster variance; the
    square of scipy's ``linkage(method="ward")`` height). ``D`` starts as the squared Euclidean distances and is
    kept up to date by the Lance-Williams update, one row and column per merge, never recomputed:
    ``D(c, a+b) = ((n_a + n_c) D(c, a) + (n_b + n_c) D(c, b) - n_c D(a, b)) / (n_a + n_b + n_c)``.
    Each cluster's nearest neighbour is cached, so a step reads ``[B, L]`` minima plus the few rows whose
    neighbour was merged, not the ``[B, L, L]`` matrix. Loop over merge steps (at most L - k), never over users.

    A user with ``n`` points merges in exactly the first ``n - k`` steps, so users are sorted by that count and
    step ``s`` works on a prefix of the batch (views, no masking); rows and columns are written in place; a
    merged-away cluster's row and column are left as they are and masked where read. When a third of the slots
    (or users) are done, the state is compacted to the live slots (in order, so ties break as before). Each
    point's cluster is read off the merge forest at the end.

    Args:
        x: ``[B, L, D]`` points; mask: ``[B, L]`` True for real points.
        distances: optional ``[B, L, L]`` ``pairwise_squared_distances(x)`` when the caller has them (not
            modified).
        implementation: one of ``WARD_IMPLEMENTATIONS``.
    Returns:
        cluster labels ``[B, L]``: the slot of the cluster's surviving (lowest) member; -1 for padding.
    """
    _check_ward_input(x, mask, k, distances, implementation)
    batch, length, _ = x.shape
    dist = pairwise_squared_distances(x.detach()) if distances is None else distances.detach()
    if implementation != "torch" and _compilable(x):
        from lightning_retrieval.models.interests.ward_kernel import ward_labels_compiled

        work = (dist.clone() if distances is not None else dist).contiguous().numpy()  # the kernel overwrites it
        bad = torch.zeros(batch, dtype=torch.bool)  # the kernel flags non-finite users as it reads their distances
        labels = ward_labels_compiled(work, mask.contiguous().numpy(), int(k), bad.numpy())
        _refuse_non_finite(bad)
        return torch.from_numpy(labels)
    _refuse_non_finite(_non_finite_users(dist, mask))
    device, inf = x.device, float("inf")
    slots = torch.arange(length, device=device)
    merges = (mask.sum(1) - k).clamp(min=0)  # [B] merge steps of each user
    if not bool((merges > 0).any()):
        return torch.where(mask, slots, -1)
    order = merges.argsort(descending=True, stable=True)
    mask, merges = mask[order], merges[order]
    dist = dist[order]  # a copy (the caller's distances are not modified)
    dist.masked_fill_(~(mask[:, :, None] & mask[:, None, :]) | torch.eye(length, dtype=torch.bool, device=device), inf)
    near, near_to = dist.min(2)  # [B, L] each cluster's nearest-neighbour distance and slot
    state = _WardState(dist, near, near_to, mask.to(x.dtype), mask.clone(), slots.repeat(batch, 1))
    parent = slots.repeat(batch, 1)  # [B, L] the slot each cluster was merged into (itself while alive)
    widest = int(mask[0].sum())  # the first user has the most points
    for step in range(int(merges[0])):
        users = int((merges > step).sum())  # users that merge at this step: the first ``users`` of the batch
        width = widest - step  # the most clusters any of them has left
        if width <= state.width * 2 // 3 or users <= state.users * 2 // 3:
            state = state.compact(users, width)
        state.merge(users, parent)
    # each point's cluster is the root of its merge chain (pointer jumping: about log2(L) rounds)
    while True:
        grand = parent.gather(1, parent)
        if torch.equal(grand, parent):
            break
        parent = grand
    labels = torch.empty_like(parent)
    labels[order] = torch.where(mask, parent, -1)
    return labels


class _WardState:
    """The merge state of the first ``users`` users of a sorted batch, over ``width`` cluster slots.

    dist ``[P, W, W]`` Lance-Williams distances (entries of merged-away clusters left stale, masked by ``dead``
    where read); near / near_to ``[P, W]`` each cluster's nearest-neighbour distance and slot; counts, live,
    dead (0 live, inf otherwise) ``[P, W]``; slot_id ``[P, W]`` each slot's position in the input history.
    """

    def __init__(self, dist, near, near_to, counts, live, slot_id):
        self.dist, self.near, self.near_to = dist, near, near_to
        self.counts, self.live, self.slot_id = counts, live, slot_id
        self.dead = torch.zeros_like(counts).masked_fill_(~live, float("inf"))
        self.users, self.width = near.shape

    def compact(self, users: int, width: int) -> _WardState:
        """The first ``users`` users over ``width`` slots: live slots first, in their order (so every argmin and
        slot comparison picks what it picked before), done users dropped."""
        live = self.live[:users]
        keep = torch.sort((~live).to(torch.int8), dim=1, stable=True).indices[:, :width]  # [P', W'] old slots
        new_slot = torch.zeros_like(self.near_to[:users]).scatter_(
            1, keep, torch.arange(width, device=keep.device).expand(users, -1)
        )
        dist = self.dist[:users].gather(1, keep[:, :, None].expand(-1, -1, self.width))
        dist = dist.gather(2, keep[:, None, :].expand(-1, width, -1))
        near_to = new_slot.gather(1, self.near_to[:users].gather(1, keep))  # live clusters' neighbours are live
        return _WardState(
            dist,
            self.near[:users].gather(1, keep),
            near_to,
            self.counts[:users].gather(1, keep),
            live.gather(1, keep),
            self.slot_id[:users].gather(1, keep),
        )

    def merge(self, users: int, parent: torch.Tensor) -> None:
        """One Ward merge for each of the first ``users`` users (closest pair), recorded in ``parent [B, L]``."""
        inf, width = float("inf"), self.width
        dist = self.dist[:users]
        rows = self.dist.view(-1, width)  # row (user, slot) at user * W + slot
        row_base = torch.arange(users, device=dist.device)[:, None] * width  # [m, 1]
        near, near_to, n = self.near[:users], self.near_to[:users], self.counts[:users]
        first = near.argmin(1, keepdim=True)
        second = near_to.gather(1, first)
        a, b = torch.minimum(first, second), torch.maximum(first, second)  # [m, 1], a < b
        n_a, n_b = n.gather(1, a), n.gather(1, b)
        row_a, row_b = rows.index_select(0, (row_base + a).view(-1)), rows.index_select(0, (row_base + b).view(-1))
        live, dead = self.live[:users].scatter_(1, b, False), self.dead[:users].scatter_(1, b, inf)
        # D(c, a+b), inf at a, b and at merged-away and padding slots (whose matrix entries are left stale)
        merged = ((n_a + n) * row_a + (n_b + n) * row_b - n * row_a.gather(1, b)) / (n_a + n_b + n)
        merged += dead  # exact for live clusters (+ 0)
        # row and column a become D(., a+b); b's row and column are never read again (b is not live)
        rows.index_copy_(0, (row_base + a).view(-1), merged)
        dist.scatter_(2, a[:, :, None].expand(-1, width, 1), merged[:, :, None])
        n.scatter_(1, b, 0.0).scatter_(1, a, n_a + n_b)
        slot_id = self.slot_id[:users]
        parent[:users].scatter_(1, slot_id.gather(1, b), slot_id.gather(1, a))
        # nearest neighbours: clusters whose neighbour was a or b are recomputed from their row; any other live
        # cluster moves to a+b if it is closer (or as close with a lower slot); a+b takes its row's minimum
        merging = torch.zeros_like(live).scatter_(1, a, True).scatter_(1, b, True)
        stale = (merging.gather(1, near_to) & live).scatter_(1, a, False)
        candidates = torch.nonzero(((merged <= near) & live).view(-1)).squeeze(1)
        if candidates.numel():
            m_c, n_c = merged.view(-1)[candidates], near.view(-1)[candidates]
            a_c = a.view(-1)[candidates // width]
            closer = (m_c < n_c) | ((m_c == n_c) & (a_c < near_to.view(-1)[candidates]))
            near.view(-1)[candidates[closer]] = m_c[closer]
            near_to.view(-1)[candidates[closer]] = a_c[closer]
        best, best_to = merged.min(1, keepdim=True)
        near.scatter_(1, a, best).scatter_(1, b, inf)
        near_to.scatter_(1, a, best_to)
        stale_rows = torch.nonzero(stale.view(-1)).squeeze(1)
        if stale_rows.numel():
            fresh = rows.index_select(0, stale_rows).add_(dead.index_select(0, stale_rows // width))
            near.view(-1)[stale_rows], near_to.view(-1)[stale_rows] = fresh.min(1)  # flat (user, slot) = row


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
            pairs = pairwise_squared_distances(x)  # [B, L, L], shared by Ward and the medoid choice
            if self.method == "ward":
                labels = ward_labels(x, mask, self.num_interests, distances=pairs)
            else:
                labels = kmeans_labels(x, mask, self.num_interests, self.kmeans_iterations)
            slots = labels.clamp(min=0)
            age = (length - 1 - torch.arange(length, device=x.device)).float()
            weight = torch.exp(-self.recency_decay * age)[None].expand(batch, -1) * mask
            importance = torch.zeros(batch, length, device=x.device).scatter_add_(1, slots, weight)
            # medoid: the member with the least summed squared distance to its cluster's members
            same = (labels[:, :, None] == labels[:, None, :]) & mask[:, :, None] & mask[:, None, :]
            spread = (pairs * same).sum(-1).masked_fill(~mask, float("inf"))
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
