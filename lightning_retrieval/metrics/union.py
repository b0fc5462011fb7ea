"""Max-over-embeddings accuracy (the KDD'25 DCM paper's offline protocol): each of a user's valid queries retrieves
its own top-k, and a target counts as found if ANY query's top-k contains it. There is no merge and no shared
budget: a user with E queries looks at up to E * k items.

- union_hit_rate@k = 1[|(∪_q R_q@k) ∩ T| > 0]
- union_recall@k = |(∪_q R_q@k) ∩ T| / |T|        (a target found by two queries counts once)

For one query per user (K = 1) they equal ``hit_rate@k`` and ``recall@k``.
"""

from __future__ import annotations

import numpy as np

from lightning_retrieval.arrays import CSR, sorted_member

UNION_METRICS = ("union_hit_rate", "union_recall")


def union_metrics(
    query_items: np.ndarray, query_valid: np.ndarray, targets: CSR, num_items: int, ks
) -> dict[str, np.ndarray]:
    """Per-user ``union_hit_rate@k`` and ``union_recall@k`` for every k in ``ks``.

    Args:
        query_items: ``[U, K, depth]`` each query's ranked item ids (seen items already excluded; -1 = empty slot),
            ``depth >= max(ks)``.
        query_valid: ``[U, K]`` which queries were searched; the others find nothing.
        targets: the users' target items (``U`` rows).
        num_items: catalogue size (item ids are in ``[0, num_items)``).
    Returns:
        ``{"union_hit_rate@k": [U], "union_recall@k": [U], ...}`` (float64).
    """
    users, _, depth = query_items.shape
    if query_valid.shape != query_items.shape[:2] or targets.num_rows != users:
        raise ValueError(
            f"need query_items [U, K, depth], query_valid [U, K] and U target rows, got {query_items.shape}, "
            f"{query_valid.shape} and {targets.num_rows} rows"
        )
    if max(ks) > depth:
        raise ValueError(f"union cut-off {max(ks)} is deeper than the retrieved lists ({depth})")
    items = np.where(query_valid[:, :, None], query_items, -1)
    keys = np.arange(users)[:, None, None] * num_items + items
    hit = sorted_member(keys, targets.keys(num_items)) & (items >= 0)
    hit_users, _, hit_ranks = np.nonzero(hit)
    hit_keys = keys[hit]
    # best (smallest) rank at which any query found each distinct (user, target)
    order = np.lexsort((hit_ranks, hit_keys))
    hit_keys, hit_users, hit_ranks = hit_keys[order], hit_users[order], hit_ranks[order]
    first = np.ones(len(hit_keys), dtype=bool)
    first[1:] = hit_keys[1:] != hit_keys[:-1]
    found_users, best_rank = hit_users[first], hit_ranks[first]
    out: dict[str, np.ndarray] = {}
    for k in sorted(set(int(k) for k in ks)):
        found = np.bincount(found_users[best_rank < k], minlength=users).astype(np.float64)
        out[f"union_hit_rate@{k}"] = (found > 0).astype(np.float64)
        out[f"union_recall@{k}"] = found / np.maximum(targets.lengths, 1)
    return out
