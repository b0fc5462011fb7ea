"""Per-user metric files: every evaluation writes them, and their values average to the logged metrics exactly."""

from __future__ import annotations

import lightning.pytorch as pl
import numpy as np
import pandas as pd
import pytest
from lightning.pytorch.loggers import CSVLogger

from lightning_retrieval.callbacks import RetrievalEvaluation
from lightning_retrieval.callbacks.conditional_evaluation import ConditionalEvaluation
from lightning_retrieval.callbacks.per_user import history_bucket, write_evaluation_per_user
from lightning_retrieval.compare import per_user_values
from lightning_retrieval.retrieval.evaluator import RetrievalEvaluator
from lightning_retrieval.retrieval.index import ExactIndex
from lightning_retrieval.statistics import bootstrap_mean
from lightning_retrieval.tasks import PopularityRetrieval, RetrievalTask

from conftest import quiet_trainer


def _column_means(frame: pd.DataFrame, names) -> dict[str, float]:
    """The mean over each column's counted (non-NaN) rows, computed the way the evaluator averages."""
    out = {}
    for name in names:
        values = frame[name].to_numpy(dtype=np.float64)
        out[name] = float(values[~np.isnan(values)].mean())
    return out


def test_history_bucket_labels_match_the_logged_segment_names():
    labels = history_bucket(np.array([0, 1, 9, 10, 49, 50, 199, 200, 5000]), [10, 50, 200])
    assert labels.tolist() == [
        "history_0",
        "history_1-9",
        "history_1-9",
        "history_10-49",
        "history_10-49",
        "history_50-199",
        "history_50-199",
        "history_200+",
        "history_200+",
    ]


def test_masked_users_count_as_zero_for_accuracy_and_not_at_all_for_diversity(movielens_dm, tmp_path):
    """Zero user vectors are masked: the file must give 0 recall but NaN diversity for them, so that both kinds of
    column average to the evaluator's value."""
    dm, rng = movielens_dm, np.random.default_rng(0)
    eval_set = dm.evaluation_set("val")
    item_vectors = rng.normal(size=(dm.data.num_items, 8)).astype(np.float32)
    users = rng.normal(size=(len(eval_set), 8)).astype(np.float32)
    users[::7] = 0.0  # masked
    evaluator = RetrievalEvaluator(ks=[10, 50])
    index = ExactIndex().build(item_vectors)
    result = evaluator.evaluate(index, users, eval_set.targets, eval_set.exclude, dm.item_topics(), item_vectors)
    assert result.protocol["masked_users"] == len(users[::7])
    rows = np.arange(len(eval_set))
    path = write_evaluation_per_user(tmp_path, "val", dm, rows, result, evaluator.metrics, [10, 50, 200])
    frame = pd.read_parquet(path)
    assert len(frame) == len(eval_set)
    assert frame["user_id"].tolist() == dm.data.user_ids[eval_set.users].tolist()
    assert (frame["history_length"].to_numpy() == eval_set.history_length).all()
    assert frame["recall@50"].iloc[::7].eq(0).all() and frame["embedding_diversity@50"].iloc[::7].isna().all()
    assert frame["embedding_diversity@50"].notna().sum() == len(frame) - len(users[::7])
    per_user_keys = sorted(result.per_user)
    assert set(per_user_keys) <= set(frame.columns)
    assert _column_means(frame, per_user_keys) == {k: result.metrics[k] for k in per_user_keys}  # exact
    for bucket, members in frame.groupby("history_bucket"):
        key = f"recall@50/{bucket}"
        if key in result.metrics:
            assert members["recall@50"].mean() == pytest.approx(result.metrics[key], abs=1e-12)


def _trainer(tmp_path, callback, **kw):
    return quiet_trainer(tmp_path, callback, CSVLogger(tmp_path, name="csv"), **kw)


def test_fit_writes_the_last_validation_and_test_writes_its_own(movielens_dm, tmp_path):
    pl.seed_everything(0)
    callback = RetrievalEvaluation(ks=[10, 50])
    model = RetrievalTask(feature_spec=movielens_dm.feature_spec, embedding_dim=16)
    trainer = _trainer(tmp_path, callback, max_epochs=2, limit_train_batches=3)
    trainer.fit(model, datamodule=movielens_dm)
    val = pd.read_parquet(next(tmp_path.rglob("per_user_val.parquet")))
    logged = pd.read_csv(next(tmp_path.rglob("metrics.csv")))["val/recall@50"].dropna()
    assert len(logged) == 2  # two validations; the file holds the last one
    assert val["recall@50"].mean() == pytest.approx(logged.iloc[-1], rel=1e-6)  # CSV stores float32
    assert _column_means(val, ["recall@50"])["recall@50"] == callback.last_result.metrics["recall@50"]

    _trainer(tmp_path, callback).test(model, datamodule=movielens_dm)
    test = pd.read_parquet(next(tmp_path.rglob("per_user_test.parquet")))
    metrics = callback.last_result.metrics
    assert _column_means(test, sorted(callback.last_result.per_user)) == {
        k: metrics[k] for k in sorted(callback.last_result.per_user)
    }
    assert len(test) == len(movielens_dm.evaluation_set("test"))


def test_conditional_evaluation_writes_one_row_per_query(movielens_dm, tmp_path):
    callback = ConditionalEvaluation(ks=[10, 50], filter="postfilter")
    _trainer(tmp_path, callback).test(PopularityRetrieval(feature_spec=movielens_dm.feature_spec), movielens_dm)
    frame = pd.read_parquet(next(tmp_path.rglob("per_user_test_conditional.parquet")))
    card_metrics = callback.last_metrics
    assert len(frame) == len(frame.drop_duplicates(["user_id", "topic"]))  # (user, topic) queries
    assert frame["user_id"].nunique() == len(movielens_dm.evaluation_set("test"))
    assert _column_means(frame, card_metrics) == card_metrics  # exact, NaN match rates (nothing returned) excluded
    # compare averages the queries per user, weighted by the user's counted queries: the same mean over queries
    values, weights = per_user_values(tmp_path)
    assert len(values) == frame["user_id"].nunique()
    for name in ("cond_recall@50", "match_rate@50", "scanned_per_query"):
        estimate = bootstrap_mean(values[name].to_numpy(), weights[name].to_numpy(), n_resamples=10).estimate
        assert estimate == pytest.approx(card_metrics[name], rel=1e-12)


def test_user_segments_come_from_the_source_attribute_table(movielens_dm, monkeypatch):
    users = movielens_dm.data.user_ids
    table = pd.DataFrame({"user_id": users[::2], "num_interests": np.arange(len(users[::2])) % 5})
    monkeypatch.setattr(movielens_dm.source, "user_attributes", lambda: table)
    segments = movielens_dm.user_segments("test")
    eval_users = users[movielens_dm.evaluation_set("test").users]
    expected = table.set_index("user_id")["num_interests"].reindex(eval_users).to_numpy()
    np.testing.assert_array_equal(segments["num_interests"], expected)
    assert np.isnan(segments["num_interests"]).sum() == (~np.isin(eval_users, users[::2])).sum() > 0
    monkeypatch.undo()
    assert movielens_dm.user_segments("test") == {}
