"""Multi-interest evaluation: max-over-embeddings (union) metrics and the collapse metric in the evaluation path."""

from __future__ import annotations

from functools import partial

import numpy as np
import pandas as pd
import pytest
import torch

from lightning_retrieval.arrays import CSR, take_rows
from lightning_retrieval.callbacks import RetrievalEvaluation
from lightning_retrieval.callbacks.per_user import write_evaluation_per_user
from lightning_retrieval.metrics.union import union_metrics
from lightning_retrieval.retrieval.evaluator import RetrievalEvaluator
from lightning_retrieval.retrieval.index import ExactIndex, HNSWIndex

from conftest import quiet_trainer


def _random_case(seed=0, users=60, slots=3, dim=8, items=400, seen=6, targets=10):
    rng = np.random.default_rng(seed)
    queries = rng.normal(size=(users, slots, dim)).astype(np.float32)
    item_vectors = rng.normal(size=(items, dim)).astype(np.float32)
    valid = rng.random((users, slots)) > 0.3
    valid[:, 0] = True
    valid[-3:] = False  # users with no searched query
    exclude = CSR.from_pairs_unique(
        np.repeat(np.arange(users), seen), rng.integers(0, items, users * seen), users, items
    )
    target = CSR.from_pairs_unique(
        np.repeat(np.arange(users), targets), rng.integers(0, items, users * targets), users, items
    )
    return queries, valid, item_vectors, exclude, target


def _brute_force_union(queries, valid, item_vectors, exclude, targets, k):
    """Per user: the targets found in any valid query's own top-k among the items the user has not seen."""
    hit_rate, recall = [], []
    for u in range(len(queries)):
        seen = set(exclude.values[exclude.offsets[u] : exclude.offsets[u + 1]].tolist())
        wanted = set(targets.values[targets.offsets[u] : targets.offsets[u + 1]].tolist())
        found = set()
        for e in np.flatnonzero(valid[u]):
            scores = item_vectors @ queries[u, e]
            ranked = [int(i) for i in np.argsort(-scores, kind="stable") if int(i) not in seen][:k]
            found |= set(ranked) & wanted
        hit_rate.append(float(bool(found)))
        recall.append(len(found) / max(len(wanted), 1))
    return np.array(hit_rate), np.array(recall)


def test_union_metrics_equal_a_brute_force_union_of_per_query_lists_with_seen_items_excluded():
    queries, valid, item_vectors, exclude, targets = _random_case()
    evaluator = RetrievalEvaluator(ks=[10], metrics=["recall"], union_ks=[20, 100])
    result = evaluator.evaluate(ExactIndex().build(item_vectors), queries, targets, exclude, user_valid=valid)
    for k in (20, 100):
        hit_rate, recall = _brute_force_union(queries, valid, item_vectors, exclude, targets, k)
        np.testing.assert_allclose(result.per_user[f"union_hit_rate@{k}"], hit_rate)
        np.testing.assert_allclose(result.per_user[f"union_recall@{k}"], recall)
        assert result.metrics[f"union_recall@{k}"] == pytest.approx(recall.mean())  # masked users count as 0
    assert result.metrics["union_hit_rate@100"] > result.metrics["union_hit_rate@20"]
    assert result.protocol["union_ks"] == [20, 100]


def test_union_counts_a_target_found_by_two_queries_once_and_merged_lists_cannot_beat_it():
    queries, valid, item_vectors, exclude, targets = _random_case(seed=1)
    queries[:, 1] = queries[:, 0]  # the second query duplicates the first: its list adds nothing
    valid[:, 2] = False
    valid[:, :2] = True
    evaluator = RetrievalEvaluator(ks=[50], metrics=["recall", "hit_rate"], union_ks=[50])
    result = evaluator.evaluate(ExactIndex().build(item_vectors), queries, targets, exclude, user_valid=valid)
    single = evaluator.evaluate(ExactIndex().build(item_vectors), queries[:, :1], targets, exclude)
    np.testing.assert_allclose(result.per_user["union_recall@50"], single.per_user["recall@50"])
    # any merged top-50 is a subset of the union of the per-query top-50s
    queries, valid, item_vectors, exclude, targets = _random_case(seed=2)
    result = evaluator.evaluate(ExactIndex().build(item_vectors), queries, targets, exclude, user_valid=valid)
    assert (result.per_user["union_recall@50"] >= result.per_user["recall@50"] - 1e-12).all()
    assert result.metrics["union_recall@50"] > result.metrics["recall@50"]


@pytest.mark.parametrize("index_cls", [ExactIndex, HNSWIndex])
def test_union_metrics_equal_the_plain_ones_for_one_query_per_user(index_cls):
    queries, _, item_vectors, exclude, targets = _random_case(seed=3)
    single = queries[:, 0].copy()
    single[::9] = 0.0  # masked users
    evaluator = RetrievalEvaluator(ks=[10, 100], metrics=["recall", "hit_rate"], union_ks=[10, 100])
    result = evaluator.evaluate(index_cls().build(item_vectors), single, targets, exclude)
    for k in (10, 100):
        np.testing.assert_array_equal(result.per_user[f"union_recall@{k}"], result.per_user[f"recall@{k}"])
        np.testing.assert_array_equal(result.per_user[f"union_hit_rate@{k}"], result.per_user[f"hit_rate@{k}"])
        assert result.metrics[f"union_recall@{k}"] == result.metrics[f"recall@{k}"]


def test_union_metrics_are_opt_in_and_checked():
    queries, valid, item_vectors, exclude, targets = _random_case()
    result = RetrievalEvaluator(ks=[10]).evaluate(
        ExactIndex().build(item_vectors), queries, targets, exclude, user_valid=valid
    )
    assert not any(k.startswith("union_") for k in result.metrics) and "union_ks" not in result.protocol
    with pytest.raises(ValueError, match="union_ks must be positive"):
        RetrievalEvaluator(ks=[10], union_ks=[0])
    with pytest.raises(Exception, match="larger than the corpus"):
        RetrievalEvaluator(ks=[10], union_ks=[1000]).evaluate(
            ExactIndex().build(item_vectors), queries, targets, exclude, user_valid=valid
        )
    with pytest.raises(ValueError, match="deeper than the retrieved lists"):
        union_metrics(np.zeros((2, 1, 5), dtype=np.int64), np.ones((2, 1), bool), targets_of(2), 10, [10])


def targets_of(users: int) -> CSR:
    return CSR.from_pairs_unique(np.arange(users), np.arange(users), users, 10)


def test_interest_similarity_is_logged_for_multi_embedding_users_only_and_flags_collapse():
    queries, valid, item_vectors, exclude, targets = _random_case(seed=4)
    index = ExactIndex().build(item_vectors)
    evaluator = RetrievalEvaluator(ks=[10, 50])  # the default metric list
    collapsed = np.repeat(queries[:, :1] * 2.0, 3, axis=1)  # K copies of one direction (norms differ)
    result = evaluator.evaluate(index, collapsed, targets, exclude, user_valid=valid)
    pairs = valid.sum(1) >= 2
    assert "interest_similarity" in result.metrics and "interest_similarity@10" not in result.metrics
    assert result.metrics["interest_similarity"] == pytest.approx(1.0)
    assert np.isnan(result.per_user["interest_similarity"][~pairs]).all()  # no pair: no value, not 0 or 1
    distinct = evaluator.evaluate(index, queries, targets, exclude, user_valid=valid)
    assert distinct.metrics["interest_similarity"] < 0.3  # random directions in 8-d
    one = evaluator.evaluate(index, queries[:, 0], targets, exclude)  # K = 1: not applicable, not logged
    assert not any(k.startswith("interest_similarity") for k in one.metrics)
    assert "interest_similarity (needs multiple_queries)" in one.protocol["skipped_metrics"]
    nobody = evaluator.evaluate(index, queries, targets, exclude, user_valid=np.eye(3, dtype=bool)[np.zeros(60, int)])
    assert "interest_similarity" not in nobody.metrics  # K > 1 but nobody served two: no value, not a fake one
    assert nobody.protocol["metrics_without_users"] == "interest_similarity"


def test_collapse_and_union_metrics_reach_the_per_user_file_and_average_to_the_logged_values(movielens_dm, tmp_path):
    dm, rng = movielens_dm, np.random.default_rng(0)
    eval_set, rows = dm.evaluation_set("val"), np.arange(100)  # the first 100 users (fast)
    targets, exclude = take_rows(eval_set.targets, rows), take_rows(eval_set.exclude, rows)
    item_vectors = rng.normal(size=(dm.data.num_items, 8)).astype(np.float32)
    queries = rng.normal(size=(len(rows), 3, 8)).astype(np.float32)
    queries[::4, 1] = queries[::4, 0]  # partly collapsed users
    valid = np.ones((len(rows), 3), dtype=bool)
    valid[::5, 1:] = False  # one served interest: no pair
    evaluator = RetrievalEvaluator(ks=[10, 50], union_ks=[100, 1000])
    result = evaluator.evaluate(ExactIndex().build(item_vectors), queries, targets, exclude, None, item_vectors, valid)
    path = write_evaluation_per_user(tmp_path, "val", dm, rows, result, evaluator.metrics, [10])
    frame = pd.read_parquet(path)
    for key in ("interest_similarity", "union_hit_rate@100", "union_recall@1000"):
        column = frame[key].to_numpy()
        assert float(column[~np.isnan(column)].mean()) == result.metrics[key]  # exact
    assert frame["interest_similarity"].isna().sum() == len(frame[::5])
    assert result.metrics["union_recall@1000"] > result.metrics["union_recall@100"] > result.metrics["recall@50"]


def test_the_evaluation_callback_logs_both_for_a_multi_interest_model(movielens_dm, tmp_path):
    from lightning_retrieval.models.interests.self_attention import SelfAttentiveInterests
    from lightning_retrieval.queries.interests import InterestQueries
    from lightning_retrieval.tasks import RetrievalTask

    torch.manual_seed(0)
    interests = partial(SelfAttentiveInterests, num_interests=3)
    queries = partial(InterestQueries, interests=interests, serving_rule="all")
    model = RetrievalTask(movielens_dm.feature_spec, 16, queries=queries)
    callback = RetrievalEvaluation(ks=[10, 50], union_ks=[100])
    quiet_trainer(tmp_path, callback, limit_val_batches=1).validate(model, datamodule=movielens_dm)
    assert "interest_similarity" in callback.last_result.metrics
    assert not any(k.startswith("union_") for k in callback.last_result.metrics)  # union_stages: test only
    quiet_trainer(tmp_path, callback, limit_test_batches=1).test(model, datamodule=movielens_dm)
    metrics = callback.last_result.metrics
    assert 0.0 < metrics["interest_similarity"] < 1.0
    assert metrics["union_recall@100"] >= metrics["recall@50"]
    frame = pd.read_parquet(next(tmp_path.rglob("per_user_test.parquet")))
    assert {"interest_similarity", "union_hit_rate@100", "union_recall@100"} <= set(frame.columns)


def test_union_stages_are_checked():
    with pytest.raises(Exception, match="union_stages: choose from 'val' and 'test'"):
        RetrievalEvaluation(union_ks=[100], union_stages=["fit"])
