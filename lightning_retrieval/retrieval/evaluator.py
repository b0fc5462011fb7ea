"""Full-corpus retrieval evaluation: search every user, exclude seen items, compute metrics.

Batched and vectorised: users are searched in batches; seen items are masked in the score matrix by an index
that supports it, else dropped from an over-fetch by ``searchsorted`` membership tests on sorted (row, item) keys;
target matching compares the lists with each user's few targets (or searches the keys); metric maths run on whole
``[U, K]`` arrays.
Per-user values are stored in one array and averaged once at the end, so the evaluation batch size cannot
change any metric.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from lightning_retrieval.data.preparation import CSR, take_rows
from lightning_retrieval.data.preparation import sorted_member as _member
from lightning_retrieval.metrics.base import RankedLists, RetrievalMetric
from lightning_retrieval.metrics.union import union_metrics
from lightning_retrieval.registry import resolve
from lightning_retrieval.retrieval.index import IndexBackend, RetrievalIndexError
from lightning_retrieval.retrieval.merging import ResultMerger, RoundRobinMerger

DEFAULT_METRICS = (
    "recall",
    "ndcg",
    "hit_rate",
    "mrr",
    "coverage",
    "topic_diversity",
    "distinct_topics",
    "embedding_diversity",
    "interest_similarity",  # K > 1 models only (skipped, and named in the protocol, for one query per user)
)


@dataclass
class EvaluationResult:
    metrics: dict[str, float]
    per_user: dict[str, np.ndarray]
    lists: RankedLists
    scores: np.ndarray
    protocol: dict = field(default_factory=dict)


def drop_seen(
    rows,
    ids,
    scores,
    exclude_keys,
    n_items: int,
    depth: int,
    allow_short: bool = False,
    extra_drop=None,
    return_scanned: bool = False,
):
    """Remove each row's excluded items (and -1 padding) from ranked ``ids``/``scores`` ``[R, fetch]``, keeping
    rank order; returns the first ``depth`` survivors. Fewer than ``depth`` survivors is an error unless
    ``allow_short`` (filtered search, where a topic may hold fewer items), which pads with -1 / -inf.
    ``extra_drop`` ``[R, fetch]`` marks further entries to drop (a filter). With ``return_scanned``, also returns
    per row how far down the fetched list the ``depth``-th survivor was (the whole fetch if it was not found)."""
    drop = _member(rows[:, None] * n_items + ids, exclude_keys) | (ids < 0)
    if extra_drop is not None:  # e.g. items failing a topic filter
        drop |= extra_drop
    keep = np.argsort(drop, axis=1, kind="stable")[:, :depth]  # survivors first, rank order kept
    short = np.take_along_axis(drop, keep, 1)
    if short.any() and not allow_short:
        raise RetrievalIndexError("the index returned too few unseen items; increase its search breadth")
    scanned = np.where(short[:, -1], ids.shape[1], keep[:, -1] + 1) if keep.shape[1] else np.zeros(len(ids), int)
    out_ids = np.where(short, -1, np.take_along_axis(ids, keep, 1))
    out_scores = np.where(short, -np.inf, np.take_along_axis(scores, keep, 1)).astype(np.float32)
    if out_ids.shape[1] < depth:
        pad = depth - out_ids.shape[1]
        out_ids = np.pad(out_ids, ((0, 0), (0, pad)), constant_values=-1)
        out_scores = np.pad(out_scores, ((0, 0), (0, pad)), constant_values=-np.inf)
        scanned = np.full(len(ids), ids.shape[1])
    return (out_ids, out_scores, scanned) if return_scanned else (out_ids, out_scores)


_BROADCAST_TARGETS = 16  # most targets per user for which hits are found by comparing against each target slot


def listed_targets(items: np.ndarray, targets: CSR, n_items: int) -> np.ndarray:
    """``[U, K]`` True where ``items [U, K]`` (-1: padding, never a hit) is one of its row's ``targets``.

    With at most ``_BROADCAST_TARGETS`` targets per user, one comparison of the lists with each target slot (rows
    padded with -2, which no item equals); otherwise a binary search of (row, item) keys in the sorted target keys.
    """
    if targets.num_rows != len(items):
        raise ValueError(f"targets has {targets.num_rows} rows for {len(items)} ranked lists")
    width = int(targets.lengths.max(initial=0))
    if width > _BROADCAST_TARGETS:
        return _member(np.arange(len(items))[:, None] * n_items + items, targets.keys(n_items)) & (items >= 0)
    slots = np.full((targets.num_rows, width), -2, dtype=np.int64)  # [U, T] each row's targets, then -2
    rows = targets.row_ids()
    slots[rows, np.arange(targets.values.size) - targets.offsets[rows]] = targets.values  # position in its row
    hits = np.zeros(items.shape, dtype=bool)
    for t in range(width):  # at most _BROADCAST_TARGETS vectorised passes
        hits |= items == slots[:, t : t + 1]
    return hits & (items >= 0)  # padding is never a hit, even against a (bad) negative target


def id_space(index: IndexBackend) -> int:
    """Number of item ids the index answers with (the whole catalogue, also for a corpus subset)."""
    return int(getattr(index, "id_space", index.size))


def seen_in_corpus(index: IndexBackend, exclude: CSR) -> np.ndarray:
    """``[U]`` excluded items per row that the index can return (all of them unless it is a corpus subset)."""
    corpus = getattr(index, "item_ids", None)
    if corpus is None:
        return exclude.lengths
    inside = _member(exclude.values, np.sort(corpus))
    return np.bincount(exclude.row_ids()[inside], minlength=exclude.num_rows)


class RetrievalEvaluator:
    """Search, exclude, score.

    Args:
        ks: cut-offs; the lists are retrieved at depth ``max(ks)``.
        metrics: registry names of metrics (``recall``, ``ndcg``, ``hit_rate``, ``mrr``, ``precision``,
            ``coverage``, ``topic_diversity``, ``distinct_topics``, ``embedding_diversity`` or plugins).
        batch_size: users per search batch (memory only: results do not depend on it).
        union_ks: cut-offs of the max-over-embeddings metrics ``union_hit_rate@k`` / ``union_recall@k``
            (:mod:`lightning_retrieval.metrics.union`): every valid query is searched again to depth
            ``max(union_ks)``, so they are opt-in (empty: not computed).
    """

    def __init__(
        self,
        ks: list[int] = (10, 20, 50, 100),
        metrics: list[str] = DEFAULT_METRICS,
        batch_size: int = 1024,
        union_ks: list[int] = (),
    ):
        if not ks or any(k < 1 for k in ks):
            raise ValueError(f"ks must be positive cut-offs, got {ks}")
        if any(k < 1 for k in union_ks):
            raise ValueError(f"union_ks must be positive cut-offs, got {union_ks}")
        self.ks = sorted(set(int(k) for k in ks))
        self.union_ks = sorted(set(int(k) for k in union_ks))
        self.metrics: list[RetrievalMetric] = [resolve("metrics", m)() for m in metrics]
        self.batch_size = batch_size

    @property
    def depth(self) -> int:
        """The deepest list any metric reads (the merged lists' ``max(ks)`` or ``max(union_ks)``)."""
        return max(self.ks + self.union_ks)

    def retrieve(
        self, index: IndexBackend, queries: np.ndarray, exclude: CSR, depth: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Top-``depth`` items per query after removing its excluded items.

        Returns ``(items [U, depth], scores [U, depth], valid [U])``; zero query vectors are masked
        (``valid`` False, items -1) rather than searched. NaN queries raise.
        """
        n_users, n_items = len(queries), id_space(index)
        if exclude.num_rows != n_users:
            raise ValueError(f"exclude has {exclude.num_rows} rows for {n_users} queries")
        queries = np.asarray(queries, dtype=np.float32)
        if not np.isfinite(queries).all():
            bad = np.flatnonzero(~np.isfinite(queries).all(1))
            raise ValueError(f"{len(bad)} user vector(s) contain NaN/inf (first rows {bad[:5].tolist()})")
        valid = np.abs(queries).sum(1) > 0
        seen = seen_in_corpus(index, exclude)
        room = index.size - seen
        if (room[valid] < depth).any():
            worst = int(np.flatnonzero(valid & (room < depth))[0])
            raise RetrievalIndexError(
                f"k={depth} is larger than the corpus left after excluding seen items for "
                f"{int((valid & (room < depth)).sum())} user(s) (corpus {index.size}, user row {worst} has "
                f"{int(seen[worst])} seen items); lower k or disable exclude_seen"
            )
        items = np.full((n_users, depth), -1, dtype=np.int64)
        scores = np.full((n_users, depth), -np.inf, dtype=np.float32)
        rows_valid = np.flatnonzero(valid)
        if index.supports_exclusion:  # the index masks seen items before its top-k: fetch exactly depth
            for s in range(0, len(rows_valid), self.batch_size):
                rows = rows_valid[s : s + self.batch_size]
                if len(rows) == n_users:  # every user in one batch (rows is then 0..U-1): no copies
                    scores[:], items[:] = index.search(queries, depth, exclude=exclude)
                else:
                    scores[rows], items[rows] = index.search(queries[rows], depth, exclude=take_rows(exclude, rows))
            return items, scores, valid
        # one global over-fetch depth, so every user is searched the same way whatever the batch size
        fetch = min(index.size, depth + int(seen[valid].max(initial=0)))
        exclude_keys = exclude.keys(n_items)
        for s in range(0, len(rows_valid), self.batch_size):
            rows = rows_valid[s : s + self.batch_size]
            batch_scores, batch_ids = index.search(queries[rows], fetch)
            items[rows], scores[rows] = drop_seen(rows, batch_ids, batch_scores, exclude_keys, n_items, depth)
        return items, scores, valid

    def retrieve_per_query(
        self, index: IndexBackend, queries: np.ndarray, valid: np.ndarray, exclude: CSR, depth: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One search per valid query ``queries [U, K, D]`` (``valid [U, K]``), each excluding its user's seen
        items. Returns ``(items [U, K, depth], scores [U, K, depth], searched [U, K])``; unsearched slots hold
        -1 / -inf (invalid, or a zero vector)."""
        users, slots = np.nonzero(valid)
        items_q, scores_q, searched = self.retrieve(index, queries[users, slots], take_rows(exclude, users), depth)
        n_users, k = valid.shape
        grid_items = np.full((n_users, k, depth), -1, dtype=np.int64)
        grid_scores = np.full((n_users, k, depth), -np.inf, dtype=np.float32)
        grid_valid = np.zeros((n_users, k), dtype=bool)
        grid_items[users, slots], grid_scores[users, slots] = items_q, scores_q
        grid_valid[users, slots] = searched
        return grid_items, grid_scores, grid_valid

    def retrieve_multi(
        self,
        index: IndexBackend,
        queries: np.ndarray,
        valid: np.ndarray,
        exclude: CSR,
        depth: int,
        merger: ResultMerger,
        weights: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Multi-embedding retrieval: one search per valid embedding ``queries [U, K, D]`` (``valid [U, K]``),
        each excluding its user's seen items, merged per user into ``depth`` items (``weights [U, K]``, e.g. the
        routing mass, go to a merger that uses them).

        Returns ``(items [U, depth], scores [U, depth], user_valid [U])``; a user is valid if at least one of
        their embeddings was searched.
        """
        grid_items, grid_scores, grid_valid = self.retrieve_per_query(index, queries, valid, exclude, depth)
        extra = {"weights": weights} if getattr(merger, "uses_weights", False) else {}
        items, scores = merger.merge(grid_items, grid_scores, grid_valid, depth, **extra)
        return items, scores, grid_valid.any(1)

    def retrieve_queries(
        self,
        index: IndexBackend,
        queries: np.ndarray,
        valid: np.ndarray,
        exclude: CSR,
        depth: int,
        merger: ResultMerger | None = None,
        weights: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Top-``depth`` items per user for ``queries [U, K, D]`` with ``valid [U, K]`` (a ``UserQueries``):
        K = 1 is one search per user, K > 1 one search per valid query merged per user (``merger``, default
        round-robin; ``weights [U, K]`` for a merger that uses them). Returns ``(items [U, depth], scores [U, depth],
        user_valid [U])``."""
        if queries.ndim != 3 or valid.shape != queries.shape[:2]:
            raise ValueError(f"queries must be [U, K, D] with valid [U, K], got {queries.shape} and {valid.shape}")
        if queries.shape[1] == 1:
            # invalid users get a zero vector, which retrieve masks (valid False, items -1)
            return self.retrieve(index, queries[:, 0] * valid[:, :1], exclude, depth)
        return self.retrieve_multi(index, queries, valid, exclude, depth, merger or RoundRobinMerger(), weights)

    def evaluate(
        self,
        index: IndexBackend,
        user_vectors: np.ndarray,
        targets: CSR,
        exclude: CSR,
        item_topics: CSR | None = None,
        item_vectors: np.ndarray | None = None,
        user_valid: np.ndarray | None = None,
        merger: ResultMerger | None = None,
        segments: dict[str, np.ndarray] | None = None,
        segment_metrics: tuple[str, ...] = ("recall", "ndcg", "hit_rate"),
        query_weights: np.ndarray | None = None,
        with_union: bool = True,
    ) -> EvaluationResult:
        """Metrics for user queries ``user_vectors [U, K, D]`` with ``user_valid [U, K]`` (``[U, D]``: one query
        per user) against an index built on the corpus; K > 1 lists are merged by ``merger`` (round-robin), which
        gets ``query_weights [U, K]`` (``UserQueries.weights``) if it uses weights. With ``union_ks``, every
        query's own list also gives the max-over-embeddings ``union_hit_rate@k`` / ``union_recall@k`` (unless
        ``with_union`` is False).

        ``segments`` maps a segment name to a boolean user mask ``[U]``; ``segment_metrics`` are then also
        reported per segment as ``<metric>@<k>/<segment>``. Metrics whose ``needs`` are not available (e.g.
        ``item_topics`` on a dataset without topics) are skipped and listed in the protocol.
        """
        start = time.perf_counter()
        depth = max(self.ks)
        union_ks = self.union_ks if with_union else []
        if max([depth, *union_ks]) > index.size:
            raise RetrievalIndexError(f"k={max([depth, *union_ks])} is larger than the corpus ({index.size} items)")
        if user_vectors.ndim == 2:
            user_vectors = user_vectors[:, None]
        if user_valid is None:
            user_valid = np.ones(user_vectors.shape[:2], dtype=bool)
        num_queries = user_vectors.shape[1]
        merger = (merger or RoundRobinMerger()) if num_queries > 1 else None
        items, scores, valid = self.retrieve_queries(
            index, user_vectors, user_valid, exclude, depth, merger, query_weights
        )
        n_items = id_space(index)
        hits = listed_targets(items, targets, n_items)
        lists = RankedLists(
            items=items,
            hits=hits,
            num_targets=targets.lengths,
            valid=valid,
            num_items=n_items,
            corpus_size=index.size,
            item_topic_offsets=None if item_topics is None or item_topics.values.size == 0 else item_topics.offsets,
            item_topic_values=None if item_topics is None or item_topics.values.size == 0 else item_topics.values,
            item_embeddings=item_vectors,
            user_vectors=user_vectors,
            user_valid=user_valid,
        )
        available = {
            "item_topics": lists.item_topic_offsets is not None,
            "item_embeddings": item_vectors is not None,
            "user_vectors": True,
            "multiple_queries": num_queries > 1,
        }
        skipped = [m.name for m in self.metrics if not all(available.get(need, False) for need in m.needs)]
        metrics: dict[str, float] = {}
        per_user: dict[str, np.ndarray] = {}
        without_users: list[str] = []
        for metric in self.metrics:
            if metric.name in skipped:
                continue  # what it needs is not available (recorded in the protocol)
            for k in self.ks if metric.depends_on_k else [depth]:
                key = f"{metric.name}@{k}" if metric.depends_on_k else metric.name
                value = metric.compute(lists, k)
                if metric.per_user:
                    value = np.where(valid, value, 0.0) if metric.accuracy else np.asarray(value, dtype=np.float64)
                    users = (valid if not metric.accuracy else np.ones_like(valid)) & ~np.isnan(value)
                    if not users.any() and not metric.accuracy:
                        without_users.append(key)  # e.g. nobody served 2 queries: no value (not 0, not NaN)
                        continue
                    per_user[key] = value
                    metrics[key] = float(value[users].mean()) if users.any() else 0.0
                else:
                    metrics[key] = float(value)
        if union_ks:
            query_items, _, searched = self.retrieve_per_query(index, user_vectors, user_valid, exclude, max(union_ks))
            for key, value in union_metrics(query_items, searched, targets, n_items, union_ks).items():
                per_user[key] = value
                metrics[key] = float(value.mean()) if len(value) else 0.0
        for name, members in (segments or {}).items():
            members = np.asarray(members, dtype=bool)
            for key, values in per_user.items():
                counted = members & ~np.isnan(values)
                if key.split("@")[0] in segment_metrics and counted.any():
                    metrics[f"{key}/{name}"] = float(values[counted].mean())
        protocol = {
            "ks": self.ks,
            **({"union_ks": union_ks} if union_ks else {}),
            "embeddings_per_user": int(num_queries),
            "merger": getattr(type(merger), "registry_name", None) if merger is not None else None,
            "evaluated_users": int(len(items)),
            "masked_users": int((~valid).sum()),
            "searched_embeddings": int(user_valid.sum()) if num_queries > 1 else int(valid.sum()),
            "excluded_items_total": int(exclude.values.size),
            "targets_total": int(targets.values.size),
            "seconds": round(time.perf_counter() - start, 4),
            **index.describe(),
        }
        if skipped:
            protocol["skipped_metrics"] = ", ".join(
                f"{m.name} (needs {', '.join(n for n in m.needs if not available.get(n, False))})"
                for m in self.metrics
                if m.name in skipped
            )
        if without_users:
            protocol["metrics_without_users"] = ", ".join(without_users)  # no searched user the metric applies to
        return EvaluationResult(metrics, per_user, lists, scores, protocol)
