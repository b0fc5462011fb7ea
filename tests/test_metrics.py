"""Metrics against hand-computed cases and a brute-force numpy reference; evaluator and index contracts."""

import numpy as np
import pytest

from lightning_retrieval.data.preparation import CSR
from lightning_retrieval.metrics import (
    NDCG,
    Coverage,
    DistinctTopics,
    EmbeddingDiversity,
    HitRate,
    MeanReciprocalRank,
    Precision,
    RankedLists,
    Recall,
    TopicDiversity,
)
from lightning_retrieval.retrieval import (
    ExactIndex,
    HNSWIndex,
    IVFPQIndex,
    RetrievalEvaluator,
    RetrievalIndexError,
    TorchExactIndex,
)


def csr(rows):
    offsets = np.cumsum([0] + [len(r) for r in rows])
    return CSR(offsets.astype(np.int64), np.array([v for r in rows for v in sorted(r)], dtype=np.int64))


# ---------------------------------------------------------------- torchmetrics as a reference
TORCHMETRICS_SAME_DEFINITION = {  # ours -> torchmetrics.functional.retrieval (binary relevance, one query)
    "recall": "retrieval_recall",
    "precision": "retrieval_precision",
    "hit_rate": "retrieval_hit_rate",
    "ndcg": "retrieval_normalized_dcg",
    "mrr": "retrieval_reciprocal_rank",
}


@pytest.mark.parametrize("name", sorted(TORCHMETRICS_SAME_DEFINITION))
@pytest.mark.parametrize("k", [1, 3, 10])
def test_accuracy_metrics_match_torchmetrics(name, k):
    """Ranked lists over the whole catalogue (no seen-item exclusion): our per-user values equal torchmetrics'
    per-query functions on the same scores and targets, users with 1 to 6 targets."""
    import torch
    import torchmetrics.functional.retrieval as reference

    from lightning_retrieval.registry import resolve

    rng = np.random.default_rng(k)
    num_users, num_items = 40, 25
    scores = rng.uniform(0.01, 1.0, size=(num_users, num_items))  # no ties; > 0 (torchmetrics drops scores <= 0)
    relevant = np.zeros((num_users, num_items), dtype=bool)
    for u in range(num_users):
        relevant[u, rng.choice(num_items, size=rng.integers(1, 7), replace=False)] = True
    items = np.argsort(-scores, axis=1)
    lists = RankedLists(
        items, np.take_along_axis(relevant, items, 1), relevant.sum(1), np.ones(num_users, bool), num_items
    )
    ours = resolve("metrics", name)().compute(lists, k)
    function = getattr(reference, TORCHMETRICS_SAME_DEFINITION[name])
    expected = [
        function(torch.from_numpy(scores[u]), torch.from_numpy(relevant[u]), top_k=k).item() for u in range(num_users)
    ]
    np.testing.assert_allclose(ours, expected, rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------- hand-computed
@pytest.fixture
def lists():
    # user 0: list [3, 1, 2, 0], targets {1, 0}; user 1: list [2, 4, 0, 1], targets {4}
    items = np.array([[3, 1, 2, 0], [2, 4, 0, 1]])
    targets = [{1, 0}, {4}]
    hits = np.array([[i in t for i in row] for row, t in zip(items, targets)])
    emb = np.eye(5, dtype=np.float32)
    topics = csr([[0], [0, 1], [], [2], [1]])  # item topics
    return RankedLists(items, hits, np.array([2, 1]), np.array([True, True]), 5, topics.offsets, topics.values, emb)


def test_accuracy_metrics_by_hand(lists):
    np.testing.assert_allclose(Recall().compute(lists, 2), [1 / 2, 1.0])
    np.testing.assert_allclose(Recall().compute(lists, 4), [1.0, 1.0])
    np.testing.assert_allclose(Precision().compute(lists, 2), [1 / 2, 1 / 2])
    np.testing.assert_allclose(HitRate().compute(lists, 1), [0.0, 0.0])
    np.testing.assert_allclose(HitRate().compute(lists, 2), [1.0, 1.0])
    np.testing.assert_allclose(MeanReciprocalRank().compute(lists, 4), [1 / 2, 1 / 2])
    d = 1 / np.log2(np.arange(2, 6))
    np.testing.assert_allclose(NDCG().compute(lists, 4), [(d[1] + d[3]) / (d[0] + d[1]), d[1] / d[0]])
    np.testing.assert_allclose(NDCG().compute(lists, 1), [0.0, 0.0])


def test_hit_rate_is_not_recall():
    items = np.array([[0, 1, 9, 8]])
    hits = np.array([[True, True, False, False]])
    lists = RankedLists(items, hits, np.array([4]), np.array([True]), 10)
    assert Recall().compute(lists, 4)[0] == 0.5 and HitRate().compute(lists, 4)[0] == 1.0


def test_coverage_and_diversity_by_hand(lists):
    assert Coverage().compute(lists, 2) == 4 / 5  # items {3, 1, 2, 4}
    # user 0 top-3 = items 3 {2}, 1 {0,1}, 2 {}: Jaccard distances 1, 1, 1 -> 1.0
    # user 1 top-3 = items 2 {}, 4 {1}, 0 {0}: distances 1, 1, 1 -> 1.0; top-4 adds item 1 {0,1}:
    #   pairs with 1: (2,1)=1, (4,1)=1-1/2, (0,1)=1-1/2 -> mean over 6 pairs = (3 + 1 + .5 + .5) / 6
    np.testing.assert_allclose(TopicDiversity().compute(lists, 3), [1.0, 1.0])
    np.testing.assert_allclose(TopicDiversity().compute(lists, 4)[1], 5 / 6)
    np.testing.assert_allclose(DistinctTopics().compute(lists, 2), [3, 1])
    np.testing.assert_allclose(EmbeddingDiversity().compute(lists, 4), [1.0, 1.0])  # orthogonal items


# ---------------------------------------------------------------- brute force
def _random_problem(seed=0, users=137, items=400, dim=16):
    rng = np.random.default_rng(seed)
    u = rng.normal(size=(users, dim)).astype(np.float32)
    v = rng.normal(size=(items, dim)).astype(np.float32)
    exclude = [set(rng.choice(items, size=rng.integers(0, 30), replace=False).tolist()) for _ in range(users)]
    targets = [
        set(rng.choice(sorted(set(range(items)) - ex), size=rng.integers(1, 6), replace=False).tolist())
        for ex in exclude
    ]
    topics = [rng.choice(5, size=rng.integers(0, 3), replace=False).tolist() for _ in range(items)]
    return u, v, csr(exclude), csr(targets), csr(topics), exclude, targets, topics


def _reference(u, v, exclude, targets, topics, k):
    """Per-user loops in plain numpy: the definitions, written the slow way."""
    scores = u.astype(np.float64) @ v.T.astype(np.float64)
    out = {m: [] for m in ("recall", "ndcg", "hit_rate", "mrr", "topic_diversity", "embedding_diversity")}
    all_items = set()
    for i in range(len(u)):
        s = scores[i].copy()
        s[list(exclude[i])] = -np.inf
        top = np.argsort(-s, kind="stable")[:k]
        all_items |= set(top.tolist())
        h = np.array([t in targets[i] for t in top], dtype=float)
        out["recall"].append(h.sum() / len(targets[i]))
        out["hit_rate"].append(float(h.any()))
        out["mrr"].append(1 / (np.argmax(h) + 1) if h.any() else 0.0)
        dcg = sum(h[r] / np.log2(r + 2) for r in range(k))
        idcg = sum(1 / np.log2(r + 2) for r in range(min(len(targets[i]), k)))
        out["ndcg"].append(dcg / idcg)
        pairs_t, pairs_e = [], []
        for a in range(k):
            for b in range(a + 1, k):
                ta, tb = set(topics[top[a]]), set(topics[top[b]])
                union = len(ta | tb)
                pairs_t.append(1 - (len(ta & tb) / union if union else 0.0))
                va, vb = v[top[a]] / np.linalg.norm(v[top[a]]), v[top[b]] / np.linalg.norm(v[top[b]])
                pairs_e.append(1 - float(va @ vb))
        out["topic_diversity"].append(np.mean(pairs_t))
        out["embedding_diversity"].append(np.mean(pairs_e))
    ref = {f"{m}@{k}": float(np.mean(vals)) for m, vals in out.items()}
    ref[f"coverage@{k}"] = len(all_items) / len(v)
    return ref


@pytest.mark.parametrize("index_cls", [ExactIndex, TorchExactIndex])
def test_exact_index_equals_brute_force_and_metrics_match_reference(index_cls):
    u, v, exclude, targets, topics, ex_sets, t_sets, topic_lists = _random_problem()
    index = index_cls().build(v)
    ev = RetrievalEvaluator(ks=[5, 20], batch_size=32)
    items, _, valid = ev.retrieve(index, u, exclude, 20)
    scores = u @ v.T
    for i in range(len(u)):
        s = scores[i].copy()
        s[list(ex_sets[i])] = -np.inf
        np.testing.assert_array_equal(items[i], np.argsort(-s, kind="stable")[:20])
        assert not set(items[i].tolist()) & ex_sets[i]
    result = ev.evaluate(index, u, targets, exclude, topics, v)
    for k in (5, 20):
        ref = _reference(u, v, ex_sets, t_sets, topic_lists, k)
        for name, value in ref.items():
            assert result.metrics[name] == pytest.approx(value, abs=1e-6), name


@pytest.mark.parametrize("index", [ExactIndex(), TorchExactIndex(query_batch=16)])
def test_metrics_do_not_depend_on_the_evaluation_batch_size(index):
    u, v, exclude, targets, topics, *_ = _random_problem(seed=1)
    index.build(v)
    results = [
        RetrievalEvaluator(ks=[10, 50], batch_size=bs).evaluate(index, u, targets, exclude, topics, v).metrics
        for bs in (1, 7, 64, 10_000)
    ]
    for other in results[1:]:
        assert other == results[0]


def test_zero_user_vectors_are_masked_and_counted():
    u, v, exclude, targets, topics, *_ = _random_problem(seed=2, users=20)
    u[[3, 7]] = 0.0
    result = RetrievalEvaluator(ks=[10]).evaluate(ExactIndex().build(v), u, targets, exclude, topics, v)
    assert result.protocol["masked_users"] == 2
    assert (result.lists.items[[3, 7]] == -1).all() and not result.lists.valid[[3, 7]].any()
    assert result.per_user["recall@10"][[3, 7]].tolist() == [0.0, 0.0]
    # accuracy metrics count masked users as misses; diversity averages over searched users only
    assert result.metrics["recall@10"] == pytest.approx(result.per_user["recall@10"].mean())
    td = TopicDiversity().compute(result.lists, 10)
    assert result.metrics["topic_diversity@10"] == pytest.approx(td[result.lists.valid].mean())


def test_bad_queries_and_k_larger_than_corpus_raise():
    u, v, exclude, targets, topics, *_ = _random_problem(seed=3, users=5, items=40)
    index = ExactIndex().build(v)
    bad = u.copy()
    bad[1, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        RetrievalEvaluator(ks=[5]).evaluate(index, bad, targets, exclude)
    with pytest.raises(RetrievalIndexError, match="larger than the corpus"):
        RetrievalEvaluator(ks=[41]).evaluate(index, u, targets, exclude)
    with pytest.raises(RetrievalIndexError, match="larger than the corpus left after excluding"):
        RetrievalEvaluator(ks=[39]).evaluate(index, u, targets, exclude)
    with pytest.raises(RetrievalIndexError, match="search before build"):
        ExactIndex().search(u, 3)


def test_index_returning_too_few_results_raises_instead_of_padding():
    rng = np.random.default_rng(0)
    v = rng.normal(size=(300, 16)).astype(np.float32)
    index = IVFPQIndex(nlist=256, pq_m=4, nbits=8, nprobe=1).build(v)
    with pytest.raises(RetrievalIndexError, match="fewer than k=200 results"):
        index.search(v[:10], 200)


def test_ivfpq_configuration_errors():
    v = np.random.default_rng(0).normal(size=(100, 16)).astype(np.float32)
    with pytest.raises(RetrievalIndexError, match="needs at least 256 vectors"):
        IVFPQIndex(nlist=16).build(v)
    with pytest.raises(RetrievalIndexError, match="must divide"):
        IVFPQIndex(pq_m=5).build(v)
    with pytest.raises(RetrievalIndexError, match="NaN"):
        ExactIndex().build(np.full((3, 4), np.nan, dtype=np.float32))


def test_ann_indexes_agree_with_exact_search():
    rng = np.random.default_rng(0)
    v = rng.normal(size=(4000, 32)).astype(np.float32)
    q = rng.normal(size=(50, 32)).astype(np.float32)
    _, exact = ExactIndex().build(v).search(q, 10)
    for index, floor in ((HNSWIndex(m=16, ef_search=64), 0.9), (IVFPQIndex(nlist=64, pq_m=8, nprobe=32), 0.3)):
        _, ann = index.build(v).search(q, 10)
        recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(ann, exact)])
        assert recall >= floor, (type(index).__name__, recall)
        assert index.describe()["metric"] == "inner_product" and index.describe()["device"] == "cpu"
