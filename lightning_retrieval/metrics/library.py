"""Built-in metrics. Definitions (per user, top-k list R, target set T, hits h_1..h_k):

- recall@k = |R ∩ T| / |T|                         (ComiRec's multi-target recall)
- precision@k = |R ∩ T| / k
- hit_rate@k = 1[|R ∩ T| > 0]                       (not recall: one hit is enough)
- ndcg@k = Σ_i h_i / log2(i + 1) / Σ_{i ≤ min(|T|, k)} 1 / log2(i + 1)   (binary relevance, textbook)
- mrr@k = 1 / rank of the first hit (0 if none)
- coverage@k = |∪_u R_u| / N                        (catalogue coverage, corpus level)
- topic_diversity@k = mean over pairs of (1 - Jaccard(topics_i, topics_j)); a pair with no topics on
  either side counts as fully diverse. (ComiRec's Diversity@N with multi-valued categories.)
- distinct_topics@k = number of distinct topics in R
- embedding_diversity@k = mean over pairs of (1 - cos(v_i, v_j)) (intra-list distance)
"""

from __future__ import annotations

import numpy as np

from lightning_retrieval.data.preparation import sorted_unique
from lightning_retrieval.metrics.base import RankedLists, RetrievalMetric
from lightning_retrieval.registry import register

_CHUNK = 512  # users per chunk for pairwise metrics; fixed, so results never depend on a batch size


def _discounts(k: int) -> np.ndarray:
    return 1.0 / np.log2(np.arange(2, k + 2))


@register("recall")
class Recall(RetrievalMetric):
    """Share of the user's targets found in the top k."""

    def compute(self, lists: RankedLists, k: int) -> np.ndarray:
        return lists.hits[:, :k].sum(1) / np.maximum(lists.num_targets, 1)


@register("precision")
class Precision(RetrievalMetric):
    """Share of the top k that are targets."""

    def compute(self, lists: RankedLists, k: int) -> np.ndarray:
        return lists.hits[:, :k].sum(1) / k


@register("hit_rate")
class HitRate(RetrievalMetric):
    """1 if at least one target is in the top k."""

    def compute(self, lists: RankedLists, k: int) -> np.ndarray:
        return lists.hits[:, :k].any(1).astype(np.float64)


@register("ndcg")
class NDCG(RetrievalMetric):
    """Binary-relevance NDCG; the ideal list puts min(|T|, k) targets first."""

    def compute(self, lists: RankedLists, k: int) -> np.ndarray:
        disc = _discounts(k)
        dcg = (lists.hits[:, :k] * disc).sum(1)
        ideal_cum = np.concatenate([[0.0], np.cumsum(disc)])
        idcg = ideal_cum[np.minimum(lists.num_targets, k)]
        return np.divide(dcg, idcg, out=np.zeros_like(dcg), where=idcg > 0)


@register("mrr")
class MeanReciprocalRank(RetrievalMetric):
    """Reciprocal rank of the first target in the top k (0 if none)."""

    def compute(self, lists: RankedLists, k: int) -> np.ndarray:
        hits = lists.hits[:, :k]
        first = hits.argmax(1)
        return np.where(hits.any(1), 1.0 / (first + 1), 0.0)


@register("coverage")
class Coverage(RetrievalMetric):
    """Share of the (indexed) corpus that appears in at least one user's top k."""

    per_user = False
    accuracy = False

    def compute(self, lists: RankedLists, k: int) -> float:
        items = lists.items[lists.valid, :k]
        corpus = lists.corpus_size or lists.num_items
        return float(sorted_unique(items.reshape(-1)).size) / corpus if items.size else 0.0


def _topic_multi_hot(lists: RankedLists, items: np.ndarray) -> np.ndarray:
    """``[u, k, T]`` multi-hot topics of the listed items."""
    return lists.topic_table()[items]


def _by_chunks(lists: RankedLists, k: int, per_chunk) -> np.ndarray:
    """``[U]`` values of ``per_chunk(items [u, k])`` over fixed-size user chunks (bounded memory, same result
    for any evaluation batch size); padding ids (-1) are read as item 0 and belong to masked users only."""
    out = np.zeros(len(lists.items))
    for s in range(0, len(lists.items), _CHUNK):
        out[s : s + _CHUNK] = per_chunk(np.maximum(lists.items[s : s + _CHUNK, :k], 0))
    return out


def _pair_mean(sim: np.ndarray) -> np.ndarray:
    """Mean over i<j of ``[u, k, k]`` pairwise values -> ``[u]``."""
    k = sim.shape[1]
    iu = np.triu_indices(k, 1)
    return sim[:, iu[0], iu[1]].mean(1) if k > 1 else np.zeros(sim.shape[0])


@register("topic_diversity")
class TopicDiversity(RetrievalMetric):
    """Intra-list topic diversity: mean pairwise Jaccard distance of item topic sets."""

    accuracy = False

    def compute(self, lists: RankedLists, k: int) -> np.ndarray:
        def chunk(items):
            hot = _topic_multi_hot(lists, items)
            inter = np.einsum("ukt,ujt->ukj", hot, hot)
            sizes = hot.sum(2)
            union = sizes[:, :, None] + sizes[:, None, :] - inter
            jaccard = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
            return _pair_mean(1.0 - jaccard)

        return _by_chunks(lists, k, chunk)


@register("distinct_topics")
class DistinctTopics(RetrievalMetric):
    """Number of distinct topics among the top k."""

    accuracy = False

    def compute(self, lists: RankedLists, k: int) -> np.ndarray:
        return _by_chunks(lists, k, lambda items: (_topic_multi_hot(lists, items).max(1) > 0).sum(1))


@register("embedding_diversity")
class EmbeddingDiversity(RetrievalMetric):
    """Intra-list distance in embedding space: mean pairwise (1 - cosine) of the item vectors."""

    accuracy = False

    def compute(self, lists: RankedLists, k: int) -> np.ndarray:
        emb = lists.unit_embeddings()
        return _by_chunks(lists, k, lambda items: _pair_mean(1.0 - np.einsum("ukd,ujd->ukj", emb[items], emb[items])))
