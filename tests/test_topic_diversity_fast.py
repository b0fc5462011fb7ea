"""Topic diversity / distinct topics from the per-corpus topic-set table (issue 18): the same values as the
textbook pairwise definitions, on both paths (set table and per-list entries), whatever the topic table."""

from __future__ import annotations

import numpy as np
import pytest

from lightning_retrieval.data.preparation import CSR
from lightning_retrieval.metrics import library
from lightning_retrieval.metrics.base import RankedLists
from lightning_retrieval.metrics.library import DistinctTopics, TopicDiversity


def _topic_table(rng, items: int, topics: int, max_size: int) -> CSR:
    """Random item topic sets with topic-less items and many items sharing one set."""
    sizes = rng.integers(0, max_size + 1, size=items)
    rows = np.repeat(np.arange(items), sizes)
    values = np.concatenate([rng.choice(topics, size=n, replace=False) for n in sizes]).astype(np.int64)
    table = CSR.from_pairs_unique(rows, values, items, topics)
    shared = rng.choice(items, size=items // 4, replace=False)  # a quarter of the items: one of 3 sets
    sets = [np.zeros(0, dtype=np.int64), np.array([0, topics - 1]), np.array([1])]
    per_item = [table.values[table.offsets[i] : table.offsets[i + 1]] for i in range(items)]
    for n, item in enumerate(shared):
        per_item[item] = sets[n % 3]
    rows = np.repeat(np.arange(items), [len(s) for s in per_item])
    return CSR.from_pairs_unique(rows, np.concatenate(per_item), items, topics)


def _lists(topic_table: CSR, rng, users: int = 23, depth: int = 13) -> RankedLists:
    items = topic_table.num_rows
    ranked = np.argsort(rng.random((users, items)), axis=1)[:, :depth]
    valid = np.ones(users, dtype=bool)
    valid[[0, 5]] = False
    ranked[~valid] = -1  # masked users: padding ids
    return RankedLists(
        ranked,
        np.zeros(ranked.shape, dtype=bool),
        np.ones(users),
        valid,
        items,
        topic_table.offsets,
        topic_table.values,
    )


def _textbook(lists: RankedLists, topic_table: CSR) -> tuple[np.ndarray, np.ndarray]:
    """``[U, K]`` sum of Jaccard similarities over the pairs i < j <= p (a pair with an empty set: 0) and the number
    of distinct topics among the first p + 1 items, by the definitions."""
    sets = [
        set(topic_table.values[topic_table.offsets[i] : topic_table.offsets[i + 1]].tolist())
        for i in range(topic_table.num_rows)
    ]
    pair_sums, distinct = np.zeros(lists.items.shape), np.zeros(lists.items.shape)
    for u, row in enumerate(np.maximum(lists.items, 0)):
        for p in range(len(row)):
            listed = [sets[i] for i in row[: p + 1]]
            distinct[u, p] = len(set().union(*listed))
            pair_sums[u, p] = sum(
                len(a & b) / len(a | b) if a and b else 0.0 for j, b in enumerate(listed) for a in listed[:j]
            )
    return pair_sums, distinct


# one, three and ten 64-bit words per set; 150 users x 600 topics: (user, topic) keys above 16 bits in a chunk
@pytest.mark.parametrize("topics, max_size, users", [(7, 3, 23), (150, 4, 23), (600, 3, 150)])
def test_both_paths_equal_the_pairwise_definitions(topics, max_size, users, monkeypatch):
    monkeypatch.setattr(library, "_SET_MAX_WORDS", 16)  # the set path at every size here (not only where it pays)
    monkeypatch.setattr(library, "_SET_MIN_SHARE", 0.0)
    monkeypatch.setattr(library, "_SET_CACHE", [])
    rng = np.random.default_rng(topics)
    table = _topic_table(rng, 80, topics, max_size)
    lists = _lists(table, rng, users=users)
    assert library._topic_sets(lists) is not None  # the set-table path
    pair_sums, distinct = _textbook(lists, table)
    fast = library._topic_prefix_stats(lists)
    np.testing.assert_allclose(fast[0], pair_sums, rtol=1e-6, atol=1e-9)
    np.testing.assert_array_equal(fast[1], distinct)
    monkeypatch.setattr(library, "_SET_TABLE_MAX", 3)  # too many distinct sets: the per-list path
    assert library._topic_sets(lists) is None
    generic = library._topic_prefix_stats(lists)
    np.testing.assert_allclose(generic[0], fast[0], rtol=1e-6, atol=1e-9)
    np.testing.assert_array_equal(generic[1], fast[1])


def test_metrics_at_cut_offs_equal_the_definitions_and_ignore_the_chunking(monkeypatch):
    rng = np.random.default_rng(3)
    table = _topic_table(rng, 60, 9, 3)
    lists = _lists(table, rng, users=150, depth=11)
    pair_sums, distinct = _textbook(lists, table)
    monkeypatch.setattr(library, "_SET_CHUNK", 7)  # several chunks, ragged last one
    for k in (1, 2, 7, 11, 30):  # 30 > depth: the whole list
        kk = min(k, 11)
        expected = 1.0 - pair_sums[:, kk - 1] / (kk * (kk - 1) / 2) if kk > 1 else np.zeros(150)
        np.testing.assert_allclose(TopicDiversity().compute(lists, k), expected, rtol=1e-6, atol=1e-9)
        np.testing.assert_array_equal(DistinctTopics().compute(lists, k), distinct[:, kk - 1])


def test_the_set_table_follows_the_topic_table_content(monkeypatch):
    """Cached by content: an equal table from new arrays is built once; a changed table is rebuilt (no stale
    similarities)."""
    built = []
    build = library._build_topic_sets
    monkeypatch.setattr(library, "_build_topic_sets", lambda *a: built.append(1) or build(*a))
    monkeypatch.setattr(library, "_SET_CACHE", [])
    rng = np.random.default_rng(5)
    table = _topic_table(rng, 50, 6, 2)
    first = _lists(table, np.random.default_rng(0))
    library._topic_prefix_stats(first)
    copy = CSR(table.offsets.copy(), table.values.copy())
    library._topic_prefix_stats(_lists(copy, np.random.default_rng(0)))
    assert len(built) == 1
    changed = CSR(table.offsets.copy(), (table.values + 1) % 6)
    lists = _lists(changed, np.random.default_rng(0))
    stats = library._topic_prefix_stats(lists)
    assert len(built) == 2
    pair_sums, distinct = _textbook(lists, changed)
    np.testing.assert_allclose(stats[0], pair_sums, rtol=1e-6, atol=1e-9)
    np.testing.assert_array_equal(stats[1], distinct)


def test_sets_mixed_to_one_key_are_told_apart(monkeypatch):
    """Many-word sets are found through one mixed key per item; keys that collide are caught and split."""
    rng = np.random.default_rng(9)
    table = _topic_table(rng, 70, 150, 3)
    monkeypatch.setattr(library, "_ROW_MIX", np.zeros(4, dtype=np.uint64))  # every set mixes to key 0
    monkeypatch.setattr(library, "_SET_CACHE", [])
    lists = _lists(table, rng)
    assert len(library._topic_sets(lists).masks) > 1
    pair_sums, distinct = _textbook(lists, table)
    stats = library._topic_prefix_stats(lists)
    np.testing.assert_allclose(stats[0], pair_sums, rtol=1e-6, atol=1e-9)
    np.testing.assert_array_equal(stats[1], distinct)


def _spy_builds(monkeypatch) -> list:
    built = []
    build = library._build_topic_sets
    monkeypatch.setattr(library, "_build_topic_sets", lambda *a: built.append(1) or build(*a))
    monkeypatch.setattr(library, "_SET_CACHE", [])
    return built


@pytest.mark.parametrize("topics", [2_000, 9_439])
def test_no_set_table_where_items_rarely_share_a_topic_or_topics_are_many(topics, monkeypatch):
    """One topic per item over thousands of topics (like a product-category vocabulary): the per-list path, and
    no per-item mask table is ever built (the set path would cost an [items, topics / 64] table and visit every
    pair of every list where few pairs share a topic)."""
    built = _spy_builds(monkeypatch)
    rng = np.random.default_rng(1)
    items = 3_000
    table = CSR.from_pairs_unique(np.arange(items), rng.integers(0, topics, items), items, topics)
    lists = _lists(table, rng, users=12, depth=9)
    assert library._topic_sets(lists) is None
    assert built == []
    pair_sums, distinct = _textbook(lists, table)
    stats = library._topic_prefix_stats(lists)
    np.testing.assert_allclose(stats[0], pair_sums, atol=1e-6)
    np.testing.assert_array_equal(stats[1], distinct)


def test_the_set_table_is_built_where_items_often_share_topics(monkeypatch):
    """Few topics shared by many items (like film genres): the set-table path."""
    built = _spy_builds(monkeypatch)
    rng = np.random.default_rng(2)
    items = 400
    sizes = rng.integers(1, 4, items)
    rows = np.repeat(np.arange(items), sizes)
    values = np.concatenate([rng.choice(19, n, replace=False) for n in sizes])
    table = CSR.from_pairs_unique(rows, values, items, 19)
    assert library._topic_sets(_lists(table, rng)) is not None
    assert built == [1]
