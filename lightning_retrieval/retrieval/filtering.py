"""Topic-filtered retrieval: pre-filter, post-filter with over-fetch, and streaming filter.

Every mode returns, per query, up to ``k`` items that carry the query's topic and are not in the user's
excluded (seen) items, best first, plus how many candidates it scanned:

- ``none``: no filter.
- ``prefilter``: search restricted to the topic's items (FAISS ``IDSelectorBatch``; masked scores for
  ``exact_torch``); ``scanned`` = the topic's item count (candidates scored).
- ``postfilter``: fetch ``k * overfetch`` (plus the user's seen count) unfiltered, keep the matching ones;
  may return fewer than ``k`` (counted in ``short``).
- ``streaming``: fetch ``step`` candidates, filter; while a query has fewer than ``k`` matches fetch twice as
  many, until ``budget`` candidates (default: the whole corpus).

For ``none``, ``postfilter`` and ``streaming``, ``scanned`` is how far down the index's ranked stream the k-th
kept item was (the whole fetch when fewer than k were kept): the candidates a streaming filter must read.

Queries are grouped by topic (pre-filter) or by fetch round (streaming); no loop over single queries.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from lightning_retrieval.data.preparation import CSR, sorted_member
from lightning_retrieval.retrieval.evaluator import drop_seen, id_space
from lightning_retrieval.retrieval.index import IndexBackend

FilterMode = Literal["none", "prefilter", "postfilter", "streaming"]
FILTER_MODES = ("none", "prefilter", "postfilter", "streaming")


@dataclass
class FilteredResults:
    items: np.ndarray  # [Q, k], -1 where fewer than k matches were found
    scores: np.ndarray  # [Q, k]
    scanned: np.ndarray  # [Q] candidates scanned per query

    @property
    def short(self) -> np.ndarray:
        return (self.items < 0).any(1)


def topic_items(item_topics: CSR, num_topics: int) -> CSR:
    """Transpose item -> topics into topic -> sorted item ids."""
    items = item_topics.row_ids()
    return CSR.from_pairs_unique(item_topics.values, items, num_topics, max(item_topics.num_rows, 1))


class TopicFilter:
    """Membership of (item, topic) pairs, vectorised."""

    def __init__(self, item_topics: CSR, num_topics: int):
        self.num_topics = max(num_topics, 1)
        self.keys = item_topics.keys(self.num_topics)  # item * T + topic, sorted
        self.by_topic = topic_items(item_topics, self.num_topics)

    def matches(self, ids: np.ndarray, topics: np.ndarray) -> np.ndarray:
        """``[Q, F]`` True where item ``ids[q, f]`` carries topic ``topics[q]``."""
        return sorted_member(np.maximum(ids, 0) * self.num_topics + topics[:, None], self.keys) & (ids >= 0)


def filtered_retrieve(
    index: IndexBackend,
    queries: np.ndarray,
    topics: np.ndarray,
    topic_filter: TopicFilter,
    exclude: CSR,
    k: int,
    mode: FilterMode = "prefilter",
    overfetch: int = 4,
    step: int = 100,
    budget: int | None = None,
) -> FilteredResults:
    """Top-``k`` topic-matching, unseen items for queries ``[Q, D]`` with topics ``[Q]``; see the module doc."""
    if mode not in FILTER_MODES:
        raise ValueError(f"unknown filter mode {mode!r}; choose one of {FILTER_MODES}")
    n_items, n_q = id_space(index), len(queries)
    if exclude.num_rows != n_q or len(topics) != n_q:
        raise ValueError(f"need one exclude row and one topic per query ({n_q}), got {exclude.num_rows}, {len(topics)}")
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    rows = np.arange(n_q)
    ex_keys = exclude.keys(n_items)
    max_seen = int(exclude.lengths.max(initial=0))
    scanned = np.zeros(n_q, dtype=np.int64)
    if mode == "none":
        fetch = min(index.size, k + max_seen)
        scores, ids = index.search(queries, fetch)
        items, out_scores, scanned = drop_seen(rows, ids, scores, ex_keys, n_items, k, True, return_scanned=True)
        return FilteredResults(items, out_scores, scanned)
    if mode == "prefilter":
        items = np.full((n_q, k), -1, dtype=np.int64)
        out_scores = np.full((n_q, k), -np.inf, dtype=np.float32)
        for topic in np.unique(topics):  # one restricted search per topic (topics << queries)
            group = np.flatnonzero(topics == topic)
            allowed = topic_filter.by_topic.row(int(topic)) if 0 <= topic < topic_filter.num_topics else np.zeros(0)
            if len(allowed) == 0:
                continue
            fetch = min(len(allowed), k + int(exclude.lengths[group].max(initial=0)))
            scores, ids, scanned_per_query = index.search_allowed(queries[group], fetch, allowed.astype(np.int64))
            items[group], out_scores[group] = drop_seen(group, ids, scores, ex_keys, n_items, k, allow_short=True)
            scanned[group] = scanned_per_query
        return FilteredResults(items, out_scores, scanned)
    if mode == "postfilter":
        fetch = min(index.size, k * overfetch + max_seen)
        scores, ids = index.search(queries, fetch)
        extra = ~topic_filter.matches(ids, topics)
        items, out_scores, scanned = drop_seen(rows, ids, scores, ex_keys, n_items, k, True, extra, True)
        return FilteredResults(items, out_scores, scanned)
    # streaming: grow the fetch for the queries that still lack k matches
    limit = min(index.size, budget or index.size)
    items = np.full((n_q, k), -1, dtype=np.int64)
    out_scores = np.full((n_q, k), -np.inf, dtype=np.float32)
    pending = rows
    fetch = min(limit, step)
    while len(pending):
        scores, ids = index.search(queries[pending], fetch)
        extra = ~topic_filter.matches(ids, topics[pending])
        got, got_scores, reach = drop_seen(pending, ids, scores, ex_keys, n_items, k, True, extra, True)
        done = (got >= 0).all(1) | (fetch >= limit)
        items[pending[done]], out_scores[pending[done]] = got[done], got_scores[done]
        scanned[pending[done]] = reach[done]
        pending = pending[~done]
        fetch = min(limit, fetch * 2)
    return FilteredResults(items, out_scores, scanned)
