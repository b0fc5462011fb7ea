"""Ward merges in compiled code (numba), one user after another: the merges, ties and labels of the batched torch
loop in ``preclustering.ward_labels``, without its ~30 small tensor operations per merge step.

The arithmetic is that loop's, operation for operation and in the distances' dtype (float32 stays float32, no
fused multiply-add), so both give the same labels bit for bit; ``tests/test_preclustering.py`` checks it.
Compiled on first use and cached next to this file, or in the user's cache folder where this one is read-only
(numba's ``cache=True``); with neither writable, compiled once per process.
"""

from __future__ import annotations

import numba
import numpy as np


def _compiled(function):
    """``numba.njit`` with an on-disk cache where numba finds a writable place for it."""
    try:
        return numba.njit(cache=True, nogil=True)(function)
    except RuntimeError:  # numba: "cannot cache function ...: no locator available"
        return numba.njit(nogil=True)(function)


@_compiled
def _first_min(row: np.ndarray) -> tuple:
    """The smallest value of ``row [L]`` and its first slot (slot 0 when all are inf, as ``torch.min``)."""
    best, best_to = row[0], 0
    for j in range(1, row.shape[0]):
        if row[j] < best:
            best, best_to = row[j], j
    return best, best_to


@_compiled
def ward_labels_compiled(dist: np.ndarray, mask: np.ndarray, k: int, non_finite: np.ndarray) -> np.ndarray:
    """Ward clustering down to (at most) ``k`` clusters per user.

    Args:
        dist: ``[B, L, L]`` squared Euclidean distances (float32 or float64); overwritten (pass a copy).
        mask: ``[B, L]`` True for real points.
        non_finite: ``[B]`` bool, set True for each user with a NaN or inf distance between real points; that
            user's labels are left at -1 (the caller raises). Shapes are not checked here (the caller does).
    Returns:
        ``[B, L]`` int64 labels: the slot of the cluster's surviving (lowest) member; -1 for padding.
    """
    batch, length = mask.shape
    inf = dist.dtype.type(np.inf)
    zero = dist.dtype.type(0.0)
    labels = np.full((batch, length), -1, dtype=np.int64)
    counts = np.empty(length, dtype=dist.dtype)
    dead = np.empty(length, dtype=dist.dtype)  # 0 for live clusters, inf otherwise
    near = np.empty(length, dtype=dist.dtype)  # each cluster's nearest-neighbour distance
    merged = np.empty(length, dtype=dist.dtype)
    row = np.empty(length, dtype=dist.dtype)
    near_to = np.empty(length, dtype=np.int64)
    parent = np.empty(length, dtype=np.int64)
    live = np.empty(length, dtype=np.bool_)
    stale = np.empty(length, dtype=np.bool_)
    for u in range(batch):
        d = dist[u]
        n_points = 0
        for i in range(length):
            live[i] = mask[u, i]
            counts[i] = 1.0 if live[i] else 0.0
            dead[i] = zero if live[i] else inf
            parent[i] = i
            n_points += 1 if live[i] else 0
        for i in range(length):
            for j in range(length):
                if i == j or not (live[i] and live[j]):
                    d[i, j] = inf
                elif not np.isfinite(d[i, j]):
                    non_finite[u] = True
            near[i], near_to[i] = _first_min(d[i])
        if non_finite[u]:
            continue
        for _ in range(n_points - k):
            first = np.argmin(near)  # first slot of the smallest nearest-neighbour distance
            second = near_to[first]
            a, b = min(first, second), max(first, second)
            n_a, n_b, d_ab = counts[a], counts[b], d[a, b]
            live[b] = False
            dead[b] = inf
            for c in range(length):  # Lance-Williams: D(c, a+b), inf at a, b, merged-away and padding slots
                n_c = counts[c]
                merged[c] = ((n_a + n_c) * d[a, c] + (n_b + n_c) * d[b, c] - n_c * d_ab) / (n_a + n_b + n_c)
                merged[c] += dead[c]
            for c in range(length):
                d[a, c] = merged[c]
                d[c, a] = merged[c]
            counts[b] = zero
            counts[a] = n_a + n_b
            parent[b] = a
            # nearest neighbours: clusters whose neighbour was a or b are recomputed from their row; any other
            # live cluster moves to a+b if it is closer (or as close with a lower slot); a+b takes its row's min.
            # In exact arithmetic a+b is never as close as a neighbour other than a or b (Ward is reducible:
            # D(c, a+b) >= min(D(c, a), D(c, b)), equal only if all of them tie, and then c's first-slot
            # neighbour was a); the tie clause is the torch loop's, for ties that rounding makes.
            for c in range(length):
                stale[c] = live[c] and c != a and (near_to[c] == a or near_to[c] == b)
            for c in range(length):
                if live[c] and merged[c] <= near[c] and (merged[c] < near[c] or a < near_to[c]):
                    near[c], near_to[c] = merged[c], a
            near[a], near_to[a] = _first_min(merged)
            near[b] = inf
            for c in range(length):
                if stale[c]:
                    for j in range(length):
                        row[j] = d[c, j] + dead[j]
                    near[c], near_to[c] = _first_min(row)
        for i in range(length):
            if mask[u, i]:
                root = i
                while parent[root] != root:
                    root = parent[root]
                labels[u, i] = root
    return labels
