"""Result mergers (registry kind ``mergers``): several ranked lists per user -> one de-duplicated list.

Multi-embedding retrieval runs one search per user embedding (``E`` of them); a merger combines the ``E``
lists of depth ``k`` into the user's final top-``depth`` list. Vectorised over users: per-row de-duplication
is a stable sort by item id plus an adjacent-equality test, no Python loop over users.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from lightning_retrieval.registry import component_kind, register


def first_occurrences(items: np.ndarray) -> np.ndarray:
    """``[U, M]`` bool: True where ``items[u, j]`` (>= 0) does not appear earlier in row u."""
    order = np.argsort(items, axis=1, kind="stable")
    sorted_items = np.take_along_axis(items, order, 1)
    first_sorted = np.ones_like(sorted_items, dtype=bool)
    first_sorted[:, 1:] = sorted_items[:, 1:] != sorted_items[:, :-1]
    first = np.empty_like(first_sorted)
    np.put_along_axis(first, order, first_sorted, 1)
    return first & (items >= 0)


def take_first(items: np.ndarray, scores: np.ndarray, keep: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray]:
    """First ``depth`` kept entries of each row, in row order; missing slots are -1 / -inf."""
    order = np.argsort(~keep, axis=1, kind="stable")[:, :depth]
    out_items = np.take_along_axis(items, order, 1)
    out_scores = np.take_along_axis(scores, order, 1).astype(np.float32)
    missing = ~np.take_along_axis(keep, order, 1)
    out_items[missing], out_scores[missing] = -1, -np.inf
    if out_items.shape[1] < depth:  # fewer candidates than depth in total
        pad = depth - out_items.shape[1]
        out_items = np.pad(out_items, ((0, 0), (0, pad)), constant_values=-1)
        out_scores = np.pad(out_scores, ((0, 0), (0, pad)), constant_values=-np.inf)
    return out_items, out_scores


@component_kind("mergers")
class ResultMerger(ABC):
    """``merge(items [U, E, k], scores [U, E, k], valid [U, E], depth) -> (items [U, depth], scores [U, depth])``.

    ``valid[u, e]`` False marks an embedding that was masked (empty interest) and contributes nothing.
    Slots that cannot be filled hold item -1 and score -inf. A merger with ``uses_weights = True`` is also given
    ``weights [U, E]`` (``UserQueries.weights``, e.g. DCM's routing mass) as the keyword argument ``weights``.
    """

    uses_weights: bool = False

    @abstractmethod
    def merge(self, items: np.ndarray, scores: np.ndarray, valid: np.ndarray, depth: int): ...

    @staticmethod
    def _check(items, scores, valid):
        if items.ndim != 3 or items.shape != scores.shape or valid.shape != items.shape[:2]:
            raise ValueError(
                f"merge expects items/scores [U, E, k] and valid [U, E], got {items.shape}, {scores.shape}, "
                f"{valid.shape}"
            )


@register("round_robin")
class RoundRobinMerger(ResultMerger):
    """Take rank 1 of every embedding's list, then rank 2, ... (embedding order = priority), skipping
    items already taken. With maxmin-ordered interests the first embeddings are the most representative."""

    def merge(self, items, scores, valid, depth):
        self._check(items, scores, valid)
        users, emb, k = items.shape
        items = np.where(valid[:, :, None], items, -1)
        interleaved = items.transpose(0, 2, 1).reshape(users, k * emb)  # rank-major
        interleaved_scores = scores.transpose(0, 2, 1).reshape(users, k * emb)
        return take_first(interleaved, interleaved_scores, first_occurrences(interleaved), depth)


@register("score")
class ScoreMerger(ResultMerger):
    """Global sort of all ``E * k`` candidates by score, keeping each item once (ComiRec's merge)."""

    def merge(self, items, scores, valid, depth):
        self._check(items, scores, valid)
        users = items.shape[0]
        flat_items = np.where(valid[:, :, None], items, -1).reshape(users, -1)
        flat_scores = np.where(valid[:, :, None], scores, -np.inf).reshape(users, -1)
        order = np.argsort(-flat_scores, axis=1, kind="stable")
        flat_items = np.take_along_axis(flat_items, order, 1)
        flat_scores = np.take_along_axis(flat_scores, order, 1)
        return take_first(flat_items, flat_scores, first_occurrences(flat_items), depth)


@register("weighted_budget")
class WeightedBudgetMerger(ResultMerger):
    """Each interest gets a share of the list in proportion to its query weight (the DCM paper's serving budget:
    the routing mass of the interest's cluster).

    Seats are dealt by the Sainte-Laguë highest-averages rule: interest e's r-th item (r = 0, 1, ...) has the
    priority ``(r + 0.5) / w_e`` and the list takes candidates in increasing priority (ties: rank, then slot
    order). Without duplicates, the first n entries of the list give interest e its Sainte-Laguë share of n seats
    (with a few interests within one item of the quota ``n * w_e / sum(w)``), at every prefix n at once, and the
    shares sum to n. Largest-remainder rounding is not used: it is not prefix-consistent (Alabama paradox), and
    one list is read at several cut-offs.
    An item found by two interests is kept once, where it comes first, and counts towards that interest's
    share (the other interest's next item moves up), as in round-robin. With equal weights the order is
    rank-major, slot order: exactly ``round_robin``.

    Interests with weight 0 get no share: they only fill slots the weighted interests cannot (short lists).
    No minimum per interest: an interest whose share of ``depth`` is below half an item gets none.

    Raises ``ValueError`` when no weights are given (a query kind without weights, e.g. ``single`` or a module
    without routing mass: use ``round_robin`` or ``score``), or when weights are negative or not finite.
    """

    uses_weights = True

    def merge(self, items, scores, valid, depth, weights=None):
        self._check(items, scores, valid)
        if weights is None:
            raise ValueError(
                "merger weighted_budget needs query weights [U, E] (UserQueries.weights, e.g. DCM's routing mass); "
                "this model's queries have none: use merger round_robin or score"
            )
        weights = np.asarray(weights, dtype=np.float64)
        if weights.shape != valid.shape:
            raise ValueError(f"weights must be [U, E] = {list(valid.shape)}, got {list(weights.shape)}")
        used = valid & (weights > 0)
        if not np.isfinite(weights[valid]).all() or (weights[valid] < 0).any():
            raise ValueError("weighted_budget: query weights must be finite and >= 0")
        users, emb, k = items.shape
        items = np.where(valid[:, :, None], items, -1)
        rank = np.broadcast_to(np.arange(k, dtype=np.float64)[None, None, :], items.shape)
        safe = np.where(used, weights, 1.0)[:, :, None]
        # weighted interests first by priority; zero-weight ones after all of them, in round-robin order
        priority = np.where(used[:, :, None], (rank + 0.5) / safe, np.inf)
        slot = np.broadcast_to(np.arange(emb)[None, :, None], items.shape)
        flat = (users, emb * k)
        # per row: by priority, then rank, then slot
        order = np.lexsort((slot.reshape(flat), rank.reshape(flat), priority.reshape(flat)), axis=-1)
        ordered_items = np.take_along_axis(items.reshape(flat), order, 1)
        ordered_scores = np.take_along_axis(scores.reshape(flat), order, 1)
        return take_first(ordered_items, ordered_scores, first_occurrences(ordered_items), depth)
