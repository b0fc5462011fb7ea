"""Beyond-accuracy metric fast paths (issue 18): the same values as the pairwise definitions, whatever the
chunking or the order in which cut-offs are asked for."""

import numpy as np

from lightning_retrieval.data.preparation import CSR
from lightning_retrieval.metrics import library
from lightning_retrieval.metrics.base import RankedLists
from lightning_retrieval.metrics.library import EmbeddingDiversity, _jaccard_prefix_sums


def _lists(seed, users=40, items=60, depth=12, topics=5):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(0, 4, size=items)
    sizes[:6] = 0  # topic-less items
    rows = np.repeat(np.arange(items), sizes)
    values = np.concatenate([rng.choice(topics, size=n, replace=False) for n in sizes]).astype(np.int64)
    topic_csr = CSR.from_pairs_unique(rows, values, items, topics)
    emb = rng.normal(size=(items, 8)).astype(np.float32)
    emb[3] = 0.0  # a zero vector
    ranked = np.argsort(rng.random((users, items)), axis=1)[:, :depth]
    valid = np.ones(users, dtype=bool)
    valid[:3] = False
    ranked[~valid] = -1
    return RankedLists(
        ranked,
        np.zeros_like(ranked, dtype=bool),
        np.ones(users),
        valid,
        items,
        topic_csr.offsets,
        topic_csr.values,
        emb,
    ), topic_csr


def test_dense_jaccard_prefix_sums_equal_the_pairwise_definition_with_topicless_items():
    lists, topic_csr = _lists(0)
    items = np.maximum(lists.items, 0)
    sets = [set(topic_csr.values[topic_csr.offsets[i] : topic_csr.offsets[i + 1]].tolist()) for i in range(60)]
    expected = np.zeros(items.shape)
    for u, row in enumerate(items):
        for j in range(items.shape[1]):
            pair = [
                len(sets[row[i]] & sets[row[j]]) / len(sets[row[i]] | sets[row[j]])
                if sets[row[i]] and sets[row[j]]
                else 0.0
                for i in range(j)
            ]
            expected[u, j] = sum(pair) + (expected[u, j - 1] if j else 0.0)
    for method in ("dense", "pairs"):
        np.testing.assert_allclose(_jaccard_prefix_sums(lists, items, method), expected, rtol=1e-6, atol=1e-9)


def test_embedding_diversity_ignores_chunking_and_the_order_of_cut_offs(monkeypatch):
    lists, _ = _lists(1)
    unit = lists.item_embeddings / np.maximum(np.linalg.norm(lists.item_embeddings, axis=1, keepdims=True), 1e-12)
    items = np.maximum(lists.items, 0)
    metric = EmbeddingDiversity()
    asked = {k: metric.compute(lists, k) for k in (12, 2, 7, 30, 1)}  # 30 > depth: the whole list
    for k, got in asked.items():
        kk = min(k, 12)
        v = unit[items[:, :kk]]
        cos = np.einsum("uid,ujd->uij", v, v)
        upper = np.triu(np.ones((kk, kk), dtype=bool), 1)
        expected = 1.0 - cos[:, upper].mean(1) if kk > 1 else np.zeros(len(items))
        np.testing.assert_allclose(got, expected, atol=1e-6)
    monkeypatch.setattr(library, "_BAG_CHUNK", 7)  # several embedding_bag calls, ragged last chunk
    fresh, _ = _lists(1)
    for k, got in asked.items():
        np.testing.assert_allclose(metric.compute(fresh, k), got, atol=1e-12)
