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

from dataclasses import dataclass

import numpy as np
import torch

from lightning_retrieval.arrays import CSR
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


def _metric_cache(lists: RankedLists) -> dict:
    """The per-lists-object cache the metrics share (full-depth quantities, running sums)."""
    return lists.__dict__.setdefault("_metric_cache", {})


def _cached(lists: RankedLists, name: str, build):
    """``build()`` once per lists object: every cut-off k reads the same full-depth quantities."""
    cache = _metric_cache(lists)
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
    if len(items) * num_topics <= 1 << 16:  # every key fits 16 bits: numpy's stable sort is then a radix sort
        order = np.argsort(group.astype(np.uint16), kind="stable")  # positions stay ascending within a group
    else:
        order = np.argsort(group, kind="stable")
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
    diversity and distinct topics are computed together). With few distinct topic sets in the corpus (see
    :func:`_topic_sets`) both come from the per-corpus set table instead."""
    sets = _topic_sets(lists)
    if sets is not None:
        return _topic_prefix_stats_by_set(lists, sets)
    out = np.zeros((2, *lists.items.shape))
    num_topics = int(lists.item_topic_values.max()) + 1 if lists.item_topic_values.size else 1
    chunk = max(_CHUNK // 4, min(_CHUNK, (1 << 16) // num_topics))  # (user, topic) keys < 2^16 when it can
    for s in range(0, len(lists.items), chunk):
        items = _list_items(lists, slice(s, s + chunk))
        entries = _topic_entries(lists, items)
        out[0, s : s + chunk] = _jaccard_prefix_sums(lists, items, entries=entries)
        out[1, s : s + chunk] = _distinct_topic_counts(*entries, items.shape)
    return out


@dataclass(frozen=True)
class TopicSets:
    """The corpus's distinct item topic sets, built once per topic table (cached by content).

    set_of_item: ``[N]`` int32 id of each item's topic set (ids by decreasing number of items, so the table rows
    most lists read are close together in memory). masks: ``[S, W]`` the sets as bit masks (topic t is bit
    ``t % 64`` of word ``t // 64``). jaccard: ``[S, S]`` float32 Jaccard similarity of every two sets (0 where
    either set is empty: such a pair counts as fully diverse).
    """

    set_of_item: np.ndarray
    masks: np.ndarray
    jaccard: np.ndarray


_SET_TABLE_MAX = 2048  # most distinct topic sets for which the [S, S] table is built (16 MiB)
_SET_CACHE: list[tuple[np.ndarray, np.ndarray, tuple, TopicSets | None]] = []  # recent tables, most recent first
_SET_CACHE_SIZE = 4


def _topic_sets(lists: RankedLists) -> TopicSets | None:
    """The :class:`TopicSets` of the lists' topic table, or None where it would not pay (:func:`_set_table_pays`:
    too many topics or distinct sets, or items that rarely share a topic; the per-list path is then used). Built
    once per table content (a few recent tables are kept with a copy of their arrays, compared on lookup), so
    repeated evaluations (every validation epoch) pay for it once."""
    offsets, values = lists.item_topic_offsets, lists.item_topic_values
    if offsets is None:
        raise ValueError("topic metrics need item topics; this dataset has none (drop the topic metrics)")
    settings = (_SET_TABLE_MAX, _SET_MAX_WORDS, _SET_MIN_SHARE)  # what decides the path (tests change them)
    for n, (known_offsets, known_values, known_settings, sets) in enumerate(_SET_CACHE):
        if (
            known_settings == settings
            and known_offsets.shape == offsets.shape
            and known_values.shape == values.shape
            and np.array_equal(known_offsets, offsets)
            and np.array_equal(known_values, values)
        ):
            _SET_CACHE.insert(0, _SET_CACHE.pop(n))
            return sets
    sets = _build_topic_sets(offsets, values) if _set_table_pays(offsets, values) else None
    _SET_CACHE.insert(0, (offsets.copy(), values.copy(), settings, sets))
    del _SET_CACHE[_SET_CACHE_SIZE:]
    return sets


def _popcount(words: np.ndarray) -> np.ndarray:
    """Set bits of each uint64 in ``words`` (int64, same shape)."""
    if hasattr(np, "bitwise_count"):  # numpy >= 2
        return np.bitwise_count(words).astype(np.int64)
    return _BYTE_BITS[words.view(np.uint8)].reshape(*words.shape, 8).sum(-1)


_BYTE_BITS = np.array([bin(b).count("1") for b in range(256)], dtype=np.int64)
_ROW_MIX = np.array([0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0xD6E8FEB86659FD93], np.uint64)


_SET_MAX_WORDS = 4  # set-table path up to 256 topics: its per-list masks are [u, K, W] words
_SET_MIN_SHARE = 0.05  # and only where two items often share a topic (else the per-list path has few pairs)


def _set_table_pays(offsets: np.ndarray, values: np.ndarray) -> bool:
    """Whether the set-table path is worth building, judged from the CSR alone (no per-item masks): at most
    ``64 * _SET_MAX_WORDS`` topics; ``sum_t p_t^2 >= _SET_MIN_SHARE`` for the share ``p_t`` of items with topic
    t (about how often two items share a topic: the per-list path's pairs; the set path visits every pair);
    at most ``_SET_TABLE_MAX`` distinct sets, counted by an order-free 64-bit hash of each item's topics (a
    collision can only undercount; the build then counts exactly)."""
    num_rows = len(offsets) - 1
    if num_rows <= 0 or not values.size:
        return False
    num_topics = int(values.max()) + 1
    if num_topics > 64 * _SET_MAX_WORDS:
        return False
    pairs = np.unique(CSR(offsets, values).row_ids() * num_topics + values)  # distinct (item, topic)
    item, topic = pairs // num_topics, pairs % num_topics
    if float(((np.bincount(topic, minlength=num_topics) / num_rows) ** 2).sum()) < _SET_MIN_SHARE:
        return False
    weight = np.random.default_rng(0).integers(0, 2**64, size=num_topics, dtype=np.uint64, endpoint=False)
    key = np.zeros(num_rows, dtype=np.uint64)
    np.add.at(key, item, weight[topic])  # wraps modulo 2^64
    return len(np.unique(key)) <= _SET_TABLE_MAX


def _build_topic_sets(offsets: np.ndarray, values: np.ndarray) -> TopicSets | None:
    num_rows = len(offsets) - 1
    words = (int(values.max()) + 1 + 63) // 64 if values.size else 1
    masks = np.zeros((num_rows, words), dtype=np.uint64)
    rows = CSR(offsets, values).row_ids()
    np.bitwise_or.at(masks, (rows, values // 64), np.left_shift(np.uint64(1), (values % 64).astype(np.uint64)))
    # distinct rows through one uint64 key per row (a 1-d sort; many-word rows are mixed, then checked)
    key = masks[:, 0] if words == 1 else (masks * _ROW_MIX[np.arange(words) % len(_ROW_MIX)]).sum(1, dtype=np.uint64)
    _, first, set_of_item, count = np.unique(key, return_index=True, return_inverse=True, return_counts=True)
    if len(first) > _SET_TABLE_MAX:  # equal rows have equal keys: at least as many distinct rows
        return None
    unique = masks[first]
    if not np.array_equal(unique[set_of_item.reshape(-1)], masks):  # two sets mixed to one key (never seen)
        unique, set_of_item, count = np.unique(masks, axis=0, return_inverse=True, return_counts=True)
    num_sets = len(unique)
    if num_sets > _SET_TABLE_MAX:
        return None
    order = np.argsort(-count, kind="stable")  # most frequent sets first
    rank = np.empty(num_sets, dtype=np.int32)
    rank[order] = np.arange(num_sets, dtype=np.int32)
    unique, set_of_item = unique[order], rank[set_of_item.reshape(-1)]
    sizes = _popcount(unique).sum(1)
    inter = np.empty((num_sets, num_sets), dtype=np.int64)
    step = max(1, (1 << 22) // (num_sets * words))  # bounded temporary [step, S, W]
    for s in range(0, num_sets, step):
        inter[s : s + step] = _popcount(unique[s : s + step, None, :] & unique[None, :, :]).sum(2)
    union = sizes[:, None] + sizes[None, :] - inter
    jaccard = np.divide(inter, union, out=np.zeros(union.shape), where=union > 0)  # empty with empty: 0
    return TopicSets(set_of_item, unique, jaccard.astype(np.float32))


def _topic_prefix_stats_by_set(lists: RankedLists, sets: TopicSets) -> np.ndarray:
    """:func:`_topic_prefix_stats` from the per-corpus :class:`TopicSets`: each pair's Jaccard similarity is one
    lookup in the set table; distinct topics are the set bits of the running OR of the listed sets' masks.

    The pairs are visited one later position j at a time (a loop over list positions, ``K`` steps), each step
    vectorised over the users and the earlier positions: ``[j, u]`` lookups with users contiguous, no pair index
    arrays.
    """
    out = np.zeros((2, *lists.items.shape))
    depth = lists.depth
    for s in range(0, len(lists.items), _SET_CHUNK):
        ids = sets.set_of_item[_list_items(lists, slice(s, s + _SET_CHUNK))]  # [u, K]
        # where these lists hold at most half of the sets: a table of those only (fewer rows, so the lookups
        # stay in cache; same values); otherwise the corpus table as it is (no [S, S] copy per chunk)
        present = np.flatnonzero(np.bincount(ids.reshape(-1), minlength=len(sets.masks)))
        if 2 * len(present) <= len(sets.masks):
            local = np.empty(len(sets.masks), dtype=np.intp)
            local[present] = np.arange(len(present))
            num_sets, table = len(present), sets.jaccard[np.ix_(present, present)].reshape(-1)
            by_position = np.ascontiguousarray(local[ids.T])  # [K, u] row of each listed set in the chunk's table
        else:
            num_sets, table = len(sets.masks), sets.jaccard.reshape(-1)
            by_position = np.ascontiguousarray(ids.T, dtype=np.intp)  # [K, u]
        rows = by_position * num_sets  # table row of each listed set
        per_later = np.zeros(by_position.shape, dtype=np.float32)  # [K, u] Jaccard sum over i < j, per j
        index, similarity = np.empty_like(by_position), np.empty(by_position.shape, dtype=np.float32)
        for j in range(1, depth):
            np.add(by_position[:j], rows[j], out=index[:j])  # pairs (i < j, j) of every user
            # < K terms each, summed straight into the output row (no temporary per position)
            np.add.reduce(table.take(index[:j], out=similarity[:j], mode="wrap"), axis=0, out=per_later[j])
        out[0, s : s + _SET_CHUNK] = per_later.cumsum(0, dtype=np.float64).T
        seen = np.bitwise_or.accumulate(sets.masks[ids], axis=1)  # [u, K, W] topics of the first p + 1 items
        out[1, s : s + _SET_CHUNK] = _popcount(seen).sum(2)
    return out


_SET_CHUNK = 1024  # users per chunk of the set-table path (bounded [K, u] buffers)


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
        key = np.sort(key.astype(np.uint32) if items.size * depth <= 1 << 32 else key)  # 32-bit sorts faster
        starts = np.flatnonzero(_group_starts(key))
        pair, inter = key[starts].astype(np.int64), np.diff(np.append(starts, key.size))
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
    emb = np.ascontiguousarray(lists.item_embeddings, dtype=np.float32)
    emb = torch.from_numpy(emb if emb.flags.writeable else emb.copy())  # torch warns on read-only arrays
    norm = torch.linalg.vector_norm(emb, dim=1, dtype=torch.float64)  # float64 sums of squares
    unit = emb / norm.clamp_min(1e-12).float()[:, None]
    norm = norm.numpy()
    return unit, np.where(norm > 1e-12, 1.0, (norm / 1e-12) ** 2)


def _cosine_pair_sums(lists: RankedLists, k: int) -> np.ndarray:
    """``[U]``: sum of cosine similarities over the pairs i < j < k of each list, as ``(|sum v|^2 - sum |v|^2) / 2``
    of the unit item vectors: ``embedding_bag`` sums per list (no ``[U, k, D]`` copy), so linear in k. The sum of
    the last cut-off asked for is kept, so cut-offs asked in increasing order sum each list position once."""
    unit, unit_sq = _cached(lists, "unit_embeddings", lambda: _unit_embeddings(lists))
    cache = _metric_cache(lists)
    # [U, D] sum and [U] summed squared norms of the first `done` unit vectors of each list
    done, total, squares = cache.get("unit_prefix_sum", (0, None, None))
    if done > k or total is None:
        done, total, squares = 0, np.zeros((len(lists.items), unit.shape[1])), np.zeros(len(lists.items))
    if k > done:
        new = np.maximum(lists.items[:, done:k], 0)  # padding ids (-1) are read as item 0 (masked users)
        total, squares = total + _bag_sums(unit, new), squares + unit_sq[new].sum(1)
    cache["unit_prefix_sum"] = (k, total, squares)
    return (np.einsum("ud,ud->u", total, total) - squares) / 2


def _bag_sums(unit: torch.Tensor, items: np.ndarray) -> np.ndarray:
    """``[U, D]`` sum of the ``unit [N, D]`` rows of each row of ``items [U, k]`` (k >= 1)."""
    total = np.empty((len(items), unit.shape[1]))
    for s in range(0, len(items), _BAG_CHUNK):  # bounded memory for any number of users
        flat = torch.from_numpy(np.ascontiguousarray(items[s : s + _BAG_CHUNK]).reshape(-1))
        offsets = torch.arange(0, flat.numel(), items.shape[1])
        with torch.no_grad():
            total[s : s + _BAG_CHUNK] = torch.nn.functional.embedding_bag(flat, unit, offsets, mode="sum").numpy()
    return total


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
