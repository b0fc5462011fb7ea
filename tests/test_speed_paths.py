"""Fast evaluation paths against the definitions they replace: metric values from per-list counts and prefix sums
equal the dense pairwise computation; the exact torch index masks excluded items before its top-k and returns
what over-fetch-and-drop returns."""

import numpy as np
import pytest

from lightning_retrieval.data.preparation import CSR
from lightning_retrieval.metrics import Coverage, DistinctTopics, EmbeddingDiversity, RankedLists, TopicDiversity
from lightning_retrieval.retrieval import ExactIndex, RetrievalEvaluator, RetrievalIndexError, TorchExactIndex


def csr(rows):
    offsets = np.cumsum([0] + [len(r) for r in rows])
    return CSR(offsets.astype(np.int64), np.array([v for r in rows for v in sorted(r)], dtype=np.int64))


# ---------------------------------------------------------------- the dense definitions (the previous code)
def _dense_topics(offsets, values, n_items):
    table = np.zeros((n_items, int(values.max()) + 1 if values.size else 1))
    table[np.repeat(np.arange(n_items), np.diff(offsets)), values] = 1.0
    return table


def _pair_mean(sim):
    k = sim.shape[1]
    iu = np.triu_indices(k, 1)
    return sim[:, iu[0], iu[1]].mean(1) if k > 1 else np.zeros(sim.shape[0])


def dense_topic_diversity(lists, k):
    hot = _dense_topics(lists.item_topic_offsets, lists.item_topic_values, lists.num_items)[
        np.maximum(lists.items[:, :k], 0)
    ]
    inter = np.einsum("ukt,ujt->ukj", hot, hot)
    sizes = hot.sum(2)
    union = sizes[:, :, None] + sizes[:, None, :] - inter
    return _pair_mean(1.0 - np.divide(inter, union, out=np.zeros_like(inter), where=union > 0))


def dense_distinct_topics(lists, k):
    hot = _dense_topics(lists.item_topic_offsets, lists.item_topic_values, lists.num_items)
    return (hot[np.maximum(lists.items[:, :k], 0)].max(1) > 0).sum(1)


def dense_embedding_diversity(lists, k):
    emb = lists.item_embeddings.astype(np.float64)
    emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    v = emb[np.maximum(lists.items[:, :k], 0)]
    return _pair_mean(1.0 - np.einsum("ukd,ujd->ukj", v, v))


def dense_coverage(lists, k):
    items = lists.items[lists.valid, :k]
    return np.unique(items[items >= 0]).size / (lists.corpus_size or lists.num_items)


def random_lists(seed, users=700, items=300, depth=40, topics=12, max_topics=4, dim=8, duplicates=False):
    """Lists with multi-topic, topic-less and zero-vector items, masked users and (optionally) repeated items."""
    rng = np.random.default_rng(seed)
    topic_rows = [rng.choice(topics, size=rng.integers(0, max_topics + 1), replace=False) for _ in range(items)]
    topic_csr = csr(topic_rows)
    emb = rng.normal(size=(items, dim)).astype(np.float32)
    emb[rng.choice(items, 5, replace=False)] = 0.0
    if duplicates:
        ranked = rng.integers(0, items, size=(users, depth))
    else:
        ranked = np.argsort(rng.random((users, items)), axis=1)[:, :depth]
    valid = rng.random(users) > 0.1
    ranked[~valid] = -1
    hits = rng.random((users, depth)) < 0.05
    return RankedLists(
        ranked, hits, np.full(users, 3), valid, items, topic_csr.offsets, topic_csr.values, emb, corpus_size=items
    )


@pytest.mark.parametrize("seed,duplicates", [(0, False), (1, True), (2, False)])
def test_beyond_accuracy_metrics_equal_the_dense_definitions(seed, duplicates):
    lists = random_lists(seed, duplicates=duplicates)
    for k in (1, 2, 7, 20, 40, 60):  # 60 > depth: the whole list
        np.testing.assert_allclose(TopicDiversity().compute(lists, k), dense_topic_diversity(lists, k), atol=1e-6)
        np.testing.assert_allclose(DistinctTopics().compute(lists, k), dense_distinct_topics(lists, k), atol=1e-6)
        np.testing.assert_allclose(
            EmbeddingDiversity().compute(lists, k), dense_embedding_diversity(lists, k), atol=1e-6
        )
        assert Coverage().compute(lists, k) == pytest.approx(dense_coverage(lists, k), abs=1e-12)


def test_topic_diversity_single_topic_lists():
    # one topic everywhere: every pair shares it (Jaccard 1, diversity 0); no topics anywhere: diversity 1
    items = np.tile(np.arange(30), (3, 1))
    one = csr([[4]] * 30)
    lists = RankedLists(items, items < 0, np.ones(3), np.ones(3, bool), 30, one.offsets, one.values)
    np.testing.assert_allclose(TopicDiversity().compute(lists, 30), 0.0)
    np.testing.assert_allclose(DistinctTopics().compute(lists, 30), 1.0)
    empty = csr([[]] * 29 + [[1]])
    lists = RankedLists(items, items < 0, np.ones(3), np.ones(3, bool), 30, empty.offsets, empty.values)
    np.testing.assert_allclose(TopicDiversity().compute(lists, 10), 1.0)
    np.testing.assert_allclose(DistinctTopics().compute(lists, 30), 1.0)


# ---------------------------------------------------------------- exclusion in the exact torch index
def _problem(seed=0, users=300, items=500, dim=16, max_seen=60):
    rng = np.random.default_rng(seed)
    u = rng.normal(size=(users, dim)).astype(np.float32)
    v = rng.normal(size=(items, dim)).astype(np.float32)
    seen = [rng.choice(items, size=rng.integers(0, max_seen), replace=False) for _ in range(users)]
    seen[0] = np.arange(items - 50)  # a heavy user: 450 of 500 items seen
    return u, v, csr(seen), seen


@pytest.mark.parametrize("query_batch", [None, 7])
def test_torch_exclusion_returns_the_best_unseen_items(query_batch):
    u, v, exclude, seen = _problem()
    index = TorchExactIndex(query_batch=query_batch).build(v)
    scores, ids = index.search(u, 50, exclude=exclude)
    full = u @ v.T
    for row in (0, 1, 99, 299):
        ref = full[row].copy()
        ref[seen[row]] = -np.inf
        best = np.argsort(-ref, kind="stable")[:50]
        assert set(ids[row]) == set(best) and not set(ids[row]) & set(seen[row].tolist())
        np.testing.assert_allclose(scores[row], ref[best], rtol=1e-5)
    assert (np.diff(scores, axis=1) <= 0).all()


def test_evaluator_lists_equal_with_and_without_index_side_exclusion():
    u, v, exclude, _ = _problem(seed=1)
    u[5] = 0.0  # a masked user
    ev = RetrievalEvaluator(ks=[10, 50], metrics=[], batch_size=64)
    torch_items, torch_scores, valid = ev.retrieve(TorchExactIndex().build(v), u, exclude, 50)
    faiss_items, faiss_scores, faiss_valid = ev.retrieve(ExactIndex().build(v), u, exclude, 50)  # over-fetch path
    assert TorchExactIndex.supports_exclusion and not ExactIndex.supports_exclusion
    np.testing.assert_array_equal(valid, faiss_valid)
    assert not valid[5] and (torch_items[5] == -1).all()
    np.testing.assert_array_equal(torch_items[valid], faiss_items[valid])
    np.testing.assert_allclose(torch_scores[valid], faiss_scores[valid], rtol=1e-5)


def test_exclusion_errors_are_clear():
    u, v, exclude, _ = _problem(seed=2)
    with pytest.raises(RetrievalIndexError, match="cannot exclude"):
        ExactIndex().build(v).search(u, 10, exclude=exclude)
    index = TorchExactIndex().build(v)
    with pytest.raises(RetrievalIndexError, match="exceeds the items left"):
        index.search(u, 60, exclude=exclude)  # the heavy user keeps only 50 items
    with pytest.raises(RetrievalIndexError, match="rows for"):
        index.search(u[:3], 10, exclude=exclude)


@pytest.mark.parametrize("topics,max_topics", [(3, 3), (12, 4), (200, 2)])
def test_jaccard_pair_enumeration_equals_dense_matmul(topics, max_topics):
    from lightning_retrieval.metrics.library import _jaccard_prefix_sums

    lists = random_lists(5, users=300, topics=topics, max_topics=max_topics, duplicates=True)
    items = np.maximum(lists.items, 0)
    pairs = _jaccard_prefix_sums(lists, items, "pairs")
    dense = _jaccard_prefix_sums(lists, items, "dense")
    np.testing.assert_allclose(pairs, dense, atol=1e-9)
    np.testing.assert_allclose(_jaccard_prefix_sums(lists, items), pairs, atol=1e-9)
    with pytest.raises(ValueError, match="method must be"):
        _jaccard_prefix_sums(lists, items, "einsum")


# ---------------------------------------------------------------- FAISS index-factory backend
def _clustered(seed=0, clusters=20, per=150, dim=32, queries=100):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim)).astype(np.float32) * 4
    items = (centres[rng.integers(0, clusters, clusters * per)] + rng.normal(size=(clusters * per, dim))).astype(
        np.float32
    )
    users = (centres[rng.integers(0, clusters, queries)] + rng.normal(size=(queries, dim))).astype(np.float32)
    return users, items


def _recall(found, truth):
    return np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(found, truth)])


def test_factory_indexes_find_the_exact_neighbours():
    from lightning_retrieval.retrieval.index import FaissFactoryIndex

    users, items = _clustered()
    truth = ExactIndex().build(items).search(users, 20)[1]
    # every inverted list visited: the IVF index is exhaustive and must agree with the exact index
    ivf = FaissFactoryIndex("IVF16,Flat", search_params="nprobe=16", train_size=1000).build(items)
    assert ivf.index.nprobe == 16 and ivf.describe()["factory"] == "IVF16,Flat"
    assert _recall(ivf.search(users, 20)[1], truth) == 1.0
    hnsw = FaissFactoryIndex("HNSW32,Flat", search_params="efSearch=128").build(items)
    assert _recall(hnsw.search(users, 20)[1], truth) >= 0.95
    one_probe = FaissFactoryIndex("IVF16,Flat", search_params="nprobe=1").build(items)
    assert _recall(one_probe.search(users, 20)[1], truth) < 1.0  # the parameter string is really applied
    flat = FaissFactoryIndex("Flat").build(items)
    assert flat.exact and _recall(flat.search(users, 20)[1], truth) == 1.0


def test_factory_training_sample_is_seeded_and_bounded():
    from lightning_retrieval.retrieval.index import FaissFactoryIndex

    items = np.arange(40, dtype=np.float32).reshape(10, 4)
    index = FaissFactoryIndex("IVF2,Flat", train_size=4, seed=3)
    sample = index._training_sample(items)
    assert sample.shape == (4, 4) and len({tuple(r) for r in sample}) == 4
    np.testing.assert_array_equal(sample, FaissFactoryIndex("IVF2,Flat", train_size=4, seed=3)._training_sample(items))
    assert FaissFactoryIndex("IVF2,Flat", train_size=None)._training_sample(items) is items


def test_factory_errors_are_clear():
    from lightning_retrieval.retrieval.index import FaissFactoryIndex

    _, items = _clustered(per=20)
    with pytest.raises(RetrievalIndexError, match="cannot build 'IVF4,PQ7'.*valid strings"):
        FaissFactoryIndex("IVF4,PQ7").build(items)  # 7 does not divide 32
    with pytest.raises(RetrievalIndexError, match="cannot build 'NotAnIndex42'"):
        FaissFactoryIndex("NotAnIndex42").build(items)
    with pytest.raises(RetrievalIndexError, match="cannot apply search_params 'nprobes=3'"):
        FaissFactoryIndex("IVF4,Flat", search_params="nprobes=3").build(items)
    with pytest.raises(ValueError, match="non-empty FAISS factory string"):
        FaissFactoryIndex("  ")


def test_callbacks_default_to_the_torch_exact_index_on_cpu_and_faiss_on_a_faiss_gpu_host(monkeypatch):
    """No index configured: ``exact_torch`` where FAISS sees no GPU, FAISS ``exact`` where it sees one."""
    from lightning_retrieval.callbacks.conditional_evaluation import ConditionalEvaluation
    from lightning_retrieval.callbacks.prediction_writer import TopKPredictionWriter
    from lightning_retrieval.callbacks.retrieval_evaluation import RetrievalEvaluation
    from lightning_retrieval.retrieval import index as index_module

    def defaults():
        return [type(c.index) for c in (RetrievalEvaluation(), ConditionalEvaluation(), TopKPredictionWriter())]

    monkeypatch.setattr(index_module, "gpu_count", lambda: 0)
    assert defaults() == [TorchExactIndex] * 3
    monkeypatch.setattr(index_module, "gpu_count", lambda: 1)
    assert defaults() == [ExactIndex] * 3
