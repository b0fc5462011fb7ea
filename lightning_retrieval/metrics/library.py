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
import torch

from lightning_retrieval.metrics.base import RankedLists, RetrievalMetric
from lightning_retrieval.registry import register

_CHUNK = 512  # users per chunk for list metrics; fixed, so results never depend on a batch size
_BAG_CHUNK = 65_536  # users per embedding_bag call of embedding diversity (each list summed on its own)


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
        corpus = lists.corpus_size or lists.num_items
        first = _cached(lists, "first_rank", lambda: _first_rank(lists))
        return float((first < k).sum()) / corpus if lists.valid.any() and k > 0 else 0.0


def _cached(lists: RankedLists, name: str, build):
    """``build()`` once per lists object: every cut-off k reads the same full-depth quantities."""
    cache = lists.__dict__.setdefault("_metric_cache", {})
    if name not in cache:
        cache[name] = build()
    return cache[name]


def _first_rank(lists: RankedLists) -> np.ndarray:
    """``[N]`` best rank at which each item appears in any searched user's list (``depth`` if never)."""
    items = lists.items[lists.valid]
    first = np.full(lists.num_items, lists.depth, dtype=np.int64)
    keep = items >= 0
    np.minimum.at(first, items[keep], np.broadcast_to(np.arange(lists.depth), items.shape)[keep])
    return first


def _list_items(lists: RankedLists, rows: slice) -> np.ndarray:
    """``[u, K]`` listed items of the users in ``rows``; padding ids (-1) are read as item 0 (masked users)."""
    return np.maximum(lists.items[rows], 0)


def _topic_entries(lists: RankedLists, items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The (list position, topic) pairs of ``items [u, K]``: flat positions ``u * K + p`` and ``(user, topic)``
    group keys, sorted by (user, topic, position), duplicates removed."""
    offsets, values = lists.item_topic_offsets, lists.item_topic_values
    if offsets is None:
        raise ValueError("topic metrics need item topics; this dataset has none (drop the topic metrics)")
    flat = items.reshape(-1)
    lengths = offsets[flat + 1] - offsets[flat]
    position = np.repeat(np.arange(flat.size, dtype=np.int64), lengths)
    starts = np.cumsum(lengths) - lengths
    topic = values[np.repeat(offsets[flat] - starts, lengths) + np.arange(position.size)].astype(np.int64)
    num_topics = int(values.max()) + 1 if values.size else 1
    group = position // items.shape[1] * num_topics + topic  # (user, topic)
    order = np.argsort(group, kind="stable")  # positions stay ascending within a group
    position, group = position[order], group[order]
    keep = np.ones(position.size, dtype=bool)
    keep[1:] = (group[1:] != group[:-1]) | (position[1:] != position[:-1])
    return position[keep], group[keep]


def _group_starts(group: np.ndarray) -> np.ndarray:
    """Boolean ``[E]``: True where a new run of equal sorted ``group`` values starts."""
    start = np.ones(group.size, dtype=bool)
    start[1:] = group[1:] != group[:-1]
    return start


def _distinct_topic_counts(position: np.ndarray, group: np.ndarray, shape: tuple) -> np.ndarray:
    """``[u, K]``: number of distinct topics among the first ``p + 1`` items of each list, from the sorted
    entries of :func:`_topic_entries`."""
    first = np.bincount(position[_group_starts(group)], minlength=shape[0] * shape[1])  # a topic's first position
    return first.reshape(shape).cumsum(1)


def _topic_prefix_stats(lists: RankedLists) -> np.ndarray:
    """``[2, U, K]``: Jaccard prefix sums and distinct-topic counts, from one pass over the topic entries (topic
    diversity and distinct topics are computed together)."""
    out = np.zeros((2, *lists.items.shape))
    for s in range(0, len(lists.items), _CHUNK):
        items = _list_items(lists, slice(s, s + _CHUNK))
        entries = _topic_entries(lists, items)
        out[0, s : s + _CHUNK] = _jaccard_prefix_sums(lists, items, entries=entries)
        out[1, s : s + _CHUNK] = _distinct_topic_counts(*entries, items.shape)
    return out


def _jaccard_prefix_sums(lists: RankedLists, items: np.ndarray, method: str = "auto", entries=None) -> np.ndarray:
    """``[u, K]``: sum of the topic Jaccard similarity over the pairs i < j <= p of each list.

    Only pairs that share a topic have a non-zero similarity. ``pairs`` enumerates them from the per-(user, topic)
    runs of list positions (``sum_t c_t^2`` pairs for per-list topic counts ``c_t``); ``dense`` computes the
    ``[u, K, K]`` intersection counts as one batched float32 matmul of multi-hot rows, cheaper when few topics
    make most pairs share one. ``auto`` picks the cheaper by a cost estimate (both give the same values).
    """
    if method not in ("auto", "pairs", "dense"):
        raise ValueError(f"method must be 'auto', 'pairs' or 'dense', got {method!r}")
    position, group = _topic_entries(lists, items) if entries is None else entries
    num_topics = int(lists.item_topic_values.max()) + 1 if lists.item_topic_values.size else 1
    run_start = np.flatnonzero(_group_starts(group))
    run_len = np.diff(np.append(run_start, group.size))
    num_pairs = int((run_len * (run_len - 1) // 2).sum())
    dense_slots = items.size * items.shape[1] // 2
    # measured on 2 CPU cores: ~50 ns per shared-topic pair vs ~(4 + 0.1 T) ns per dense pair slot
    if method == "dense" or (method == "auto" and 50 * num_pairs > dense_slots * (4 + 0.1 * num_topics)):
        return _jaccard_prefix_sums_dense(position, group % num_topics, items.shape, num_topics)
    sizes = np.bincount(position, minlength=items.size)  # topics per listed item
    rank = np.arange(group.size) - np.repeat(run_start, run_len)  # rank of an entry within its run
    later = np.repeat(run_len, run_len) - 1 - rank  # entries after it in the same run
    first = np.repeat(np.arange(group.size), later)
    second = first + 1 + np.arange(first.size) - np.repeat(np.cumsum(later) - later, later)
    depth = items.shape[1]
    # shared-topic counts per (earlier flat position, later position in the list)
    key = position[first] * depth + position[second] % depth
    if key.size * 16 < items.size * depth:  # few pairs: sort them rather than scan u * K * K bins
        key = np.sort(key)
        starts = np.flatnonzero(_group_starts(key))
        pair, inter = key[starts], np.diff(np.append(starts, key.size))
    else:
        inter = np.bincount(key, minlength=items.size * depth)
        pair = np.flatnonzero(inter)
        inter = inter[pair]
    a = pair // depth
    b = a - a % depth + pair % depth
    jaccard = inter / (sizes[a] + sizes[b] - inter)
    return np.bincount(b, weights=jaccard, minlength=items.size).reshape(items.shape).cumsum(1)


def _jaccard_prefix_sums_dense(position: np.ndarray, topic: np.ndarray, shape: tuple, num_topics: int) -> np.ndarray:
    hot = np.zeros((shape[0] * shape[1], num_topics), dtype=np.float32)
    hot[position, topic] = 1.0
    hot = hot.reshape(*shape, num_topics)  # [u, K, T]
    inter = hot @ hot.transpose(0, 2, 1)  # [u, K, K] shared topics (exact small integers in float32)
    sizes = hot.sum(2)
    sizes[sizes == 0] = 0.5  # a topic-less item: union >= 0.5 where inter is 0, so its pairs read 0 (no 0 / 0)
    union = sizes[:, :, None] + sizes[:, None, :]
    union -= inter
    np.divide(inter, union, out=inter)  # Jaccard, in place
    inter *= _strict_upper(shape[1])  # pairs i < j
    return inter.sum(1, dtype=np.float64).cumsum(1)


def _strict_upper(k: int) -> np.ndarray:
    """``[k, k]`` float32 mask of the pairs i < j (row i, column j)."""
    return np.triu(np.ones((k, k), dtype=np.float32), 1)


def _unit_embeddings(lists: RankedLists) -> tuple[torch.Tensor, np.ndarray]:
    """``[N, D]`` float32 L2-normalised item vectors and ``[N]`` their squared norms (1, or tiny for ~0 vectors)."""
    if lists.item_embeddings is None:
        raise ValueError("embedding_diversity needs item embeddings")
    emb = lists.item_embeddings.astype(np.float32, copy=False)
    norm = np.sqrt(np.einsum("nd,nd->n", emb, emb, dtype=np.float64))
    unit = emb / np.maximum(norm, 1e-12)[:, None].astype(np.float32)
    return torch.from_numpy(unit), np.where(norm > 1e-12, 1.0, (norm / 1e-12) ** 2)


def _cosine_pair_sums(lists: RankedLists, k: int) -> np.ndarray:
    """``[U]``: sum of cosine similarities over the pairs i < j < k of each list, as ``(|sum v|^2 - sum |v|^2) / 2``
    of the unit item vectors: one ``embedding_bag`` sum per list (no ``[U, k, D]`` copy), so linear in k."""
    unit, unit_sq = _cached(lists, "unit_embeddings", lambda: _unit_embeddings(lists))
    items = np.maximum(lists.items[:, :k], 0)  # padding ids (-1) are read as item 0 (masked users)
    total = np.empty((len(items), unit.shape[1]))
    for s in range(0, len(items), _BAG_CHUNK):  # bounded memory for any number of users
        flat = torch.from_numpy(np.ascontiguousarray(items[s : s + _BAG_CHUNK]).reshape(-1))
        offsets = torch.arange(0, flat.numel(), k)  # k >= 2 here (see _mean_pair_distance)
        with torch.no_grad():
            total[s : s + _BAG_CHUNK] = torch.nn.functional.embedding_bag(flat, unit, offsets, mode="sum").numpy()
    return (np.einsum("ud,ud->u", total, total) - unit_sq[items].sum(1)) / 2


def _pair_distance_mean(similarity_sums: np.ndarray, k: int) -> np.ndarray:
    """``[U]`` mean of ``1 - similarity`` over the pairs of the top ``k`` from prefix sums ``[U, K]``."""
    k = min(k, similarity_sums.shape[1])
    if k < 2:
        return np.zeros(len(similarity_sums))
    return 1.0 - similarity_sums[:, k - 1] / (k * (k - 1) / 2)


def _mean_pair_distance(lists: RankedLists, k: int, pair_similarity_sums) -> np.ndarray:
    """``[U]`` mean of ``1 - similarity`` over the pairs of the top ``min(k, depth)``, from
    ``pair_similarity_sums(lists, k) -> [U]`` (cached per k)."""
    k = min(k, lists.depth)
    if k < 2:
        return np.zeros(len(lists.items))
    sums = _cached(lists, f"{pair_similarity_sums.__name__}@{k}", lambda: pair_similarity_sums(lists, k))
    return 1.0 - sums / (k * (k - 1) / 2)


@register("topic_diversity")
class TopicDiversity(RetrievalMetric):
    """Intra-list topic diversity: mean pairwise Jaccard distance of item topic sets."""

    accuracy = False
    needs = ("item_topics",)

    def compute(self, lists: RankedLists, k: int) -> np.ndarray:
        return _pair_distance_mean(_cached(lists, "topics", lambda: _topic_prefix_stats(lists))[0], k)


@register("distinct_topics")
class DistinctTopics(RetrievalMetric):
    """Number of distinct topics among the top k."""

    accuracy = False
    needs = ("item_topics",)

    def compute(self, lists: RankedLists, k: int) -> np.ndarray:
        counts = _cached(lists, "topics", lambda: _topic_prefix_stats(lists))[1]
        return counts[:, min(k, lists.depth) - 1] if k > 0 and lists.depth else np.zeros(len(lists.items))


@register("embedding_diversity")
class EmbeddingDiversity(RetrievalMetric):
    """Intra-list distance in embedding space: mean pairwise (1 - cosine) of the item vectors."""

    accuracy = False
    needs = ("item_embeddings",)

    def compute(self, lists: RankedLists, k: int) -> np.ndarray:
        return _mean_pair_distance(lists, k, _cosine_pair_sums)
