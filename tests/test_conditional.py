"""Conditional retrieval: condition extraction, early fusion, filtered ANN modes, scan counts, INDEX, queries."""

import numpy as np
import pytest
import torch

from lightning_retrieval.callbacks.conditional_evaluation import condition_queries
from lightning_retrieval.data.preparation import CSR
from lightning_retrieval.models.conditions import UniformTopicCondition
from lightning_retrieval.models.interests import DifferentiableClusteringModule
from lightning_retrieval.queries import CombinedQueries, ConditionTable, TopicConditionQueries
from lightning_retrieval.retrieval import ExactIndex, TorchExactIndex
from lightning_retrieval.retrieval.filtering import FILTER_MODES, TopicFilter, filtered_retrieve
from lightning_retrieval.tasks import RetrievalTask


def test_uniform_topic_extraction_is_uniform_and_deterministic():
    ex = UniformTopicCondition()
    values = torch.tensor([3, 5, 7, 9, 4])  # item 0: {3, 5, 7}; item 1: {}; item 2: {9, 4}
    lengths = torch.tensor([3, 0, 2])
    reps = 6000
    v = values.repeat(reps)
    lens = lengths.repeat(reps)
    draws = ex.training_conditions(v, lens, torch.Generator().manual_seed(1)).view(reps, 3)
    assert (draws[:, 1] == -1).all()
    for col, topics in ((0, [3, 5, 7]), (2, [9, 4])):
        counts = torch.stack([(draws[:, col] == t).sum() for t in topics]).float() / reps
        assert set(draws[:, col].unique().tolist()) == set(topics)
        assert torch.allclose(counts, torch.full_like(counts, 1 / len(topics)), atol=0.03)
    again = ex.training_conditions(v, lens, torch.Generator().manual_seed(1)).view(reps, 3)
    assert torch.equal(draws, again)


def test_serving_conditions_are_the_top_history_topics():
    counts = torch.tensor([[0.0, 5, 1, 3], [0, 0, 0, 0]])
    topics, weights = UniformTopicCondition(num_serving=2).serving_conditions({"history_topic_counts": counts})
    assert topics[0].tolist() == [1, 3] and weights[0].tolist() == pytest.approx([5 / 9, 3 / 9])
    assert (weights[1] == 0).all() and (topics[1] == -1).all()


@pytest.fixture(scope="module")
def cr(movielens_dm):
    torch.manual_seed(0)
    return RetrievalTask(feature_spec=movielens_dm.feature_spec, embedding_dim=16, queries=TopicConditionQueries).eval()


def test_early_fusion_changes_the_user_embedding_with_the_condition(movielens_dm, cr):
    batch = next(iter(movielens_dm.val_dataloader()))
    with torch.no_grad():
        a = cr.topic_queries(batch, torch.zeros_like(batch["user"])).as_single()
        b = cr.topic_queries(batch, torch.full_like(batch["user"], 7)).as_single()
        none = cr.topic_queries(batch, torch.full_like(batch["user"], -1)).as_single()
        served = cr.embed_users(batch)
    assert (a - b).norm(dim=1).min() > 1e-4 and (a - none).norm(dim=1).min() > 1e-4
    assert served.vectors.shape[1] == 5 and served.valid.any(1).all()


def test_condition_table_rejects_out_of_range_topics():
    table = ConditionTable(4, 8)
    assert torch.equal(table(torch.tensor([-1]))[0], torch.zeros(8))
    with pytest.raises(IndexError, match=r"topic ids in \[0, 4\) or -1"):
        table(torch.tensor([4]))
    with pytest.raises(ValueError, match="need item topics"):
        ConditionTable(0, 8)


def test_conditional_and_synergised_models_train(movielens_dm, cr):
    batch = next(iter(movielens_dm.train_dataloader()))
    cr.train()
    cr.compute_loss(batch).backward()
    assert cr.queries.conditions.table.weight.grad.abs().sum() > 0
    syn = RetrievalTask(
        feature_spec=movielens_dm.feature_spec,
        embedding_dim=16,
        queries=lambda d, spec: CombinedQueries(d, spec, lambda d: DifferentiableClusteringModule(d, num_interests=3)),
    )
    syn.compute_loss(batch).backward()
    queries = syn.queries
    assert queries.explicit.conditions.table.weight.grad.abs().sum() > 0
    assert queries.implicit.interests.S.weight.grad is not None
    served = syn.embed_users(batch)
    assert served.vectors.shape[1] == 3 + 5 and served.valid[:, :3].any(1).all()


# ---------------------------------------------------------------- filtered ANN
def _problem(seed=0, n=400, topics=5, queries=40):
    rng = np.random.default_rng(seed)
    item_topics = CSR.from_pairs_unique(
        rng.integers(0, n, int(n * 1.5)), rng.integers(0, topics, int(n * 1.5)), n, topics
    )
    v = rng.normal(size=(n, 8)).astype(np.float32)
    q = rng.normal(size=(queries, 8)).astype(np.float32)
    qt = rng.integers(0, topics, queries)
    exclude = CSR.from_pairs_unique(np.repeat(np.arange(queries), 6), rng.integers(0, n, queries * 6), queries, n)
    return item_topics, v, q, qt, exclude


def _brute_force(v, q, qt, item_topics, exclude, k):
    topic_sets = [set(item_topics.row(i).tolist()) for i in range(len(v))]
    out = []
    for i in range(len(q)):
        scores = v @ q[i]
        order = np.argsort(-scores, kind="stable")
        seen = set(exclude.row(i).tolist())
        keep = [j for j in order if qt[i] in topic_sets[j] and j not in seen][:k]
        out.append(keep + [-1] * (k - len(keep)))
    return np.array(out)


@pytest.mark.parametrize("index_cls", [ExactIndex, TorchExactIndex])
@pytest.mark.parametrize("mode", ["prefilter", "postfilter", "streaming"])
def test_filter_modes_return_only_matching_items_equal_to_brute_force(index_cls, mode):
    item_topics, v, q, qt, exclude = _problem()
    tf = TopicFilter(item_topics, 5)
    index = index_cls().build(v)
    k = 10
    res = filtered_retrieve(index, q, qt, tf, exclude, k, mode, overfetch=100, step=16)
    valid = res.items >= 0
    assert tf.matches(res.items, qt)[valid].all(), "a returned item lacks the query topic"
    np.testing.assert_array_equal(res.items, _brute_force(v, q, qt, item_topics, exclude, k))


def test_scan_counts_by_mode():
    item_topics, v, q, qt, exclude = _problem(seed=1)
    tf = TopicFilter(item_topics, 5)
    index = ExactIndex().build(v)
    k = 5
    pre = filtered_retrieve(index, q, qt, tf, exclude, k, "prefilter")
    assert (pre.scanned == tf.by_topic.lengths[qt]).all()  # a pre-filter scores the topic's items
    stream = filtered_retrieve(index, q, qt, tf, exclude, k, "streaming", step=8)
    # the streaming count is how deep in the full ranking the k-th kept item sits
    topic_sets = [set(item_topics.row(i).tolist()) for i in range(len(v))]
    for i in range(len(q)):
        order = np.argsort(-(v @ q[i]), kind="stable")
        seen = set(exclude.row(i).tolist())
        kept = np.flatnonzero([qt[i] in topic_sets[j] and j not in seen for j in order])
        assert stream.scanned[i] == kept[k - 1] + 1
    none = filtered_retrieve(index, q, qt, tf, exclude, k, "none")
    assert (none.scanned >= k).all() and (none.scanned <= k + exclude.lengths).all()
    tight = filtered_retrieve(index, q, qt, tf, exclude, k, "postfilter", overfetch=1)
    assert tight.short.any()  # an over-fetch of k cannot always find k matches: reported, not hidden
    with pytest.raises(ValueError, match="unknown filter mode"):
        filtered_retrieve(index, q, qt, tf, exclude, k, "sideways")
    assert set(FILTER_MODES) == {"none", "prefilter", "postfilter", "streaming"}


def test_index_baseline_is_the_topics_most_popular_items():
    item_topics, _, _, _, _ = _problem(seed=2)
    counts = np.random.default_rng(2).integers(0, 100, 400).astype(np.float32)
    index = ExactIndex().build(np.log1p(counts)[:, None])  # the popularity model's item vectors
    tf = TopicFilter(item_topics, 5)
    empty = CSR(np.zeros(4, dtype=np.int64), np.zeros(0, dtype=np.int64))
    res = filtered_retrieve(index, np.ones((3, 1), np.float32), np.array([0, 1, 2]), tf, empty, 5, "prefilter")
    for row, topic in enumerate([0, 1, 2]):
        members = tf.by_topic.row(topic)
        expected = members[np.argsort(-counts[members], kind="stable")][:5]
        assert sorted(counts[res.items[row]].tolist()) == sorted(counts[expected].tolist())


def test_condition_queries_pair_each_user_with_their_targets_topics():
    targets = CSR(np.array([0, 2, 3]), np.array([0, 1, 2]))  # user 0: items 0, 1; user 1: item 2
    item_topics = CSR(np.array([0, 2, 3, 3]), np.array([4, 6, 4]))  # item 0: {4, 6}; item 1: {4}; item 2: {}
    rows, topics, q_targets = condition_queries(targets, item_topics, 8)
    assert list(zip(rows.tolist(), topics.tolist())) == [(0, 4), (0, 6)]
    assert [q_targets.row(i).tolist() for i in range(2)] == [[0, 1], [0]]


def test_conditional_metrics_by_hand(movielens_dm):
    """cond_recall / cond_ndcg / match_rate on a model whose ranking is known: popularity under a pre-filter."""
    import lightning.pytorch as pl

    from lightning_retrieval.callbacks.conditional_evaluation import ConditionalEvaluation
    from lightning_retrieval.tasks import PopularityRetrieval

    cb = ConditionalEvaluation(ks=[10, 50], filter="prefilter", result_card=False)
    pl.Trainer(logger=False, callbacks=[cb], enable_progress_bar=False, enable_model_summary=False).test(
        PopularityRetrieval(), datamodule=movielens_dm
    )
    m = cb.last_metrics
    assert m["match_rate@10"] == m["match_rate@50"] == 1.0
    assert 0 < m["cond_recall@10"] <= m["cond_recall@50"] <= 1
    assert 0 < m["cond_ndcg@10"] <= m["cond_recall@10"] + 1e-9  # one target per query: NDCG <= recall


def test_followed_topics_are_served_and_users_without_follows_fall_back_to_inferred():
    from lightning_retrieval.models.conditions import FollowedTopicsCondition

    batch = {
        "followed_topics": torch.tensor([[0.0, 1, 0, 1], [0, 0, 0, 0]]),
        "history_topic_counts": torch.tensor([[9.0, 0, 0, 0], [0, 2, 6, 0]]),
    }
    topics, weights = FollowedTopicsCondition(num_serving=3).serving_conditions(batch)
    assert topics[0].tolist() == [1, 3, -1] and weights[0].tolist() == pytest.approx([0.5, 0.5, 0.0])
    assert topics[1].tolist() == [2, 1, -1] and weights[1].tolist() == pytest.approx([0.75, 0.25, 0.0])
    with pytest.raises(KeyError, match="no followed-topics column"):
        FollowedTopicsCondition().serving_conditions({"history_topic_counts": torch.zeros(1, 4)})


def test_followed_topics_column_flows_from_the_users_file(tmp_path):
    import pandas as pd

    from lightning_retrieval.data import DataValidationError, InteractionsFileSource, RetrievalDataModule

    pd.DataFrame(
        {"user_id": [1, 1, 1, 2, 2, 2], "item_id": [10, 11, 12, 10, 12, 11], "timestamp": [1, 2, 3, 4, 5, 6]}
    ).to_csv(tmp_path / "i.csv", index=False)
    pd.DataFrame({"item_id": [10, 11, 12], "topics": ["a|b", "b", "c"]}).to_csv(tmp_path / "items.csv", index=False)
    pd.DataFrame({"user_id": [1, 2], "follows": ["c", ""]}).to_csv(tmp_path / "users.csv", index=False)
    src = InteractionsFileSource(
        str(tmp_path / "i.csv"),
        items_path=str(tmp_path / "items.csv"),
        users_path=str(tmp_path / "users.csv"),
        topics_column="topics",
        user_topics_column="follows",
    )
    dm = RetrievalDataModule(source=src, max_history=2, batch_size=2)
    batch = next(iter(dm.val_dataloader()))
    assert batch["followed_topics"].tolist() == [[0.0, 0.0, 1.0], [0.0, 0.0, 0.0]]
    pd.DataFrame({"user_id": [1, 2], "follows": ["zebra", ""]}).to_csv(tmp_path / "users.csv", index=False)
    with pytest.raises(DataValidationError, match=r"followed topics \['zebra'\] are not item topics"):
        RetrievalDataModule(source=src).data  # noqa: B018


def test_conditional_evaluation_reads_topic_queries_and_refuses_several_per_topic(movielens_dm, tmp_path):
    import lightning.pytorch as pl

    from lightning_retrieval.callbacks.conditional_evaluation import ConditionalEvaluation
    from lightning_retrieval.queries import InterestQueries

    def validate(model, callback):
        trainer = pl.Trainer(
            logger=False,
            callbacks=[callback],
            enable_progress_bar=False,
            enable_model_summary=False,
            default_root_dir=tmp_path,
        )
        trainer.validate(model, datamodule=movielens_dm, verbose=False)
        return callback.last_metrics

    torch.manual_seed(0)
    cr = RetrievalTask(feature_spec=movielens_dm.feature_spec, embedding_dim=16, queries=TopicConditionQueries)
    metrics = validate(cr, ConditionalEvaluation(ks=[10], filter="prefilter", result_card=False))
    assert {"cond_recall@10", "cond_ndcg@10", "match_rate@10"} <= set(metrics)
    assert metrics["match_rate@10"] == pytest.approx(1.0) and 0 < metrics["cond_recall@10"] <= 1
    multi = RetrievalTask(
        feature_spec=movielens_dm.feature_spec,
        embedding_dim=16,
        queries=lambda d, spec: InterestQueries(d, spec, lambda d: DifferentiableClusteringModule(d, num_interests=3)),
    )
    with pytest.raises(ValueError, match=r"one query per \(user, topic\).*gives 3 \(interest\)"):
        validate(multi, ConditionalEvaluation(ks=[10], result_card=False))
