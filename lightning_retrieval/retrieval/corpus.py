"""Serving corpus builders (registry kind ``corpora``): which items get indexed.

Pinterest's Homefeed corpus moved from the plain sum of engagements over a window to a time-decayed sum, with
items de-duplicated by a canonical signature. ``TimeDecayedCorpus`` does that on the interactions visible
before the evaluated period: ``score(i) = Σ_e 2^(-age_days(e) / half_life_days)``, age measured from the last
visible interaction; items sharing a signature keep only their best-scoring member; the top ``top_n`` items form
the corpus.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from lightning_retrieval.registry import component_kind, register
from lightning_retrieval.retrieval.index import IndexBackend

SECONDS_PER_DAY = 86_400.0


@component_kind("corpora")
class CorpusBuilder(ABC):
    """``build(item, timestamp, num_items, signature) -> (corpus item ids [C] by score desc, scores [C])``."""

    @abstractmethod
    def build(self, item: np.ndarray, timestamp: np.ndarray, num_items: int, signature: np.ndarray | None = None): ...


def decayed_scores(
    item: np.ndarray, timestamp: np.ndarray, num_items: int, half_life_days: float, now: float | None = None
) -> np.ndarray:
    """``[N]`` time-decayed engagement sums (timestamps in seconds; ``now`` defaults to the latest one)."""
    if half_life_days <= 0:
        raise ValueError(f"half_life_days must be > 0, got {half_life_days}")
    now = float(timestamp.max()) if now is None else now
    age_days = (now - timestamp.astype(np.float64)) / SECONDS_PER_DAY
    if (age_days < 0).any():
        raise ValueError("interactions after `now`: the decay reference must not precede any interaction")
    return np.bincount(item, weights=np.exp2(-age_days / half_life_days), minlength=num_items)


@register("time_decayed")
class TimeDecayedCorpus(CorpusBuilder):
    """Top items by time-decayed engagement, one per signature.

    Args:
        half_life_days: an engagement's weight halves every this many days (``None``: plain sum).
        top_n: corpus size (``None``: every item with a positive score).
        dedupe_by_signature: keep one item per signature (the items table's ``signature`` column) when present.
    """

    def __init__(self, half_life_days: float | None = 30.0, top_n: int | None = None, dedupe_by_signature: bool = True):
        if top_n is not None and top_n < 1:
            raise ValueError(f"top_n must be >= 1, got {top_n}")
        self.half_life_days, self.top_n, self.dedupe_by_signature = half_life_days, top_n, dedupe_by_signature

    def build(self, item, timestamp, num_items, signature=None):
        if self.half_life_days is None:
            scores = np.bincount(item, minlength=num_items).astype(np.float64)
        else:
            scores = decayed_scores(item, timestamp, num_items, self.half_life_days)
        order = np.lexsort((np.arange(num_items), -scores))  # by score desc, ties by item id
        order = order[scores[order] > 0]
        if signature is not None and self.dedupe_by_signature:
            _, first = np.unique(signature[order], return_index=True)  # best-scoring item per signature
            order = order[np.sort(first)]
        if self.top_n is not None:
            order = order[: self.top_n]
        return order.astype(np.int64), scores[order]


class SubsetIndex(IndexBackend):
    """An index over a subset of the items (a serving corpus) that answers with global item ids.

    ``size`` is the corpus size; ``id_space`` is the global number of items (for id arithmetic).
    """

    def __init__(self, inner: IndexBackend, item_ids: np.ndarray, id_space: int):
        super().__init__(None)  # device placement is the inner backend's business
        self.inner, self.item_ids, self.id_space = inner, np.asarray(item_ids, dtype=np.int64), id_space
        self.exact = inner.exact

    def _build(self, vectors):
        self.inner.build(vectors)
        self.index, self.on_gpu = self.inner.index, self.inner.on_gpu

    def _search(self, queries, k):
        scores, ids = self.inner.search(queries, k)
        return scores, np.where(ids >= 0, self.item_ids[np.maximum(ids, 0)], -1)

    def describe(self) -> dict:
        out = self.inner.describe()
        out.update(corpus="subset", corpus_size=self.size, catalogue_size=self.id_space)
        return out
