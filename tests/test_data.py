"""Data: schema validation errors, splits, leakage, determinism, batch construction, file sources."""

import numpy as np
import pandas as pd
import pytest
import torch

from lightning_retrieval.data import DataValidationError, InteractionsFileSource, RetrievalDataModule
from lightning_retrieval.data.batches import BatchBuilder
from lightning_retrieval.data.preparation import TEST, TRAIN, VAL, evaluation_set, prepare
from lightning_retrieval.data.schema import RawInteractions

from conftest import make_raw


# ---------------------------------------------------------------- validation errors
def test_missing_column_names_it_and_the_available_ones():
    raw = make_raw()
    raw.interactions = raw.interactions.drop(columns=["timestamp"])
    with pytest.raises(DataValidationError, match=r"missing column\(s\) \['timestamp'\].*available"):
        prepare(raw)


@pytest.mark.parametrize(
    "column,expected", [("user_id", "NaN user_id"), ("item_id", "NaN item_id"), ("timestamp", "missing timestamps")]
)
def test_nan_ids_and_missing_timestamps_are_errors(column, expected):
    raw = make_raw()
    raw.interactions[column] = raw.interactions[column].astype(object)
    raw.interactions.loc[3, column] = None
    with pytest.raises(DataValidationError, match=f"1 row\\(s\\) with {expected}.*\\[3\\]"):
        prepare(raw)


def test_non_monotonic_timestamps_in_sequence_order_are_an_error():
    raw = make_raw()
    inter = raw.interactions.sort_values(["user_id", "timestamp"]).reset_index(drop=True)
    inter["position"] = inter.groupby("user_id").cumcount()
    inter.loc[(inter.user_id == "u2") & (inter.position == 3), "position"] = 99  # moves an old event last
    raw.interactions = inter
    with pytest.raises(DataValidationError, match="not monotonic in 'position' order"):
        prepare(raw, sequence_column="position")


def test_users_without_interactions_and_unknown_ids_are_errors():
    raw = make_raw()
    raw.users = pd.DataFrame({"user_id": ["u0", "u1", "u2", "u3", "u4", "u5", "ghost"], "age": np.arange(7.0)})
    with pytest.raises(DataValidationError, match=r"1 user\(s\) have no interactions.*ghost"):
        prepare(raw)
    raw = make_raw()
    raw.items = raw.items[raw.items.item_id != int(raw.interactions.item_id.iloc[0])]
    with pytest.raises(DataValidationError, match="absent from the items table"):
        prepare(raw)


def test_non_numeric_or_nan_features_are_errors():
    raw = make_raw()
    raw.items["price"] = ["cheap"] * len(raw.items)
    with pytest.raises(DataValidationError, match="feature column 'price' is not numeric"):
        prepare(raw)
    raw.items["price"] = np.nan
    with pytest.raises(DataValidationError, match="NaN/inf in feature column 'price'"):
        prepare(raw)


def test_min_rating_filters_and_needs_a_rating_column():
    raw = make_raw()
    data = prepare(raw, min_rating=4)
    kept = int((raw.interactions.rating >= 4).sum())
    assert len(data.user) == kept and data.report["rows_below_min_rating"] == len(raw.interactions) - kept
    raw.interactions = raw.interactions.drop(columns=["rating"])
    with pytest.raises(DataValidationError, match="min_rating=4 needs a rating column"):
        prepare(raw, min_rating=4)


# ---------------------------------------------------------------- splits and leakage
def test_leave_last_out_holds_out_each_users_last_items():
    data = prepare(make_raw(per_user=8), split="leave_last_out", val_items=1, test_items=2)
    for u in range(data.num_users):
        s = data.split[data.user_offsets[u] : data.user_offsets[u + 1]]
        assert s.tolist() == [TRAIN] * 5 + [VAL] + [TEST] * 2
        ts = data.timestamp[data.user_offsets[u] : data.user_offsets[u + 1]]
        assert np.all(np.diff(ts) >= 0)


def test_global_time_split_uses_one_cut_for_everyone():
    data = prepare(make_raw(n_users=20, per_user=10), split="global_time", val_time=0.7, test_time=0.85)
    cuts = data.report["time_cuts"]
    assert (data.timestamp[data.split == TRAIN] < cuts["validation"]).all()
    assert (data.timestamp[data.split == VAL] >= cuts["validation"]).all()
    assert (data.timestamp[data.split == TEST] >= cuts["test"]).all()


@pytest.mark.parametrize("split", ["leave_last_out", "global_time"])
def test_no_evaluation_interaction_reaches_the_inputs_that_score_it(movielens_dm, split):
    """For every evaluated user: history inputs, excluded items and popularity counts predate the targets."""
    dm = RetrievalDataModule(source=movielens_dm.source, split=split, max_history=30)
    data = dm.data
    for stage, code in (("val", VAL), ("test", TEST)):
        es = dm.evaluation_set(stage)
        target_time = data.timestamp[es.cutoff]
        # the user-tower batch: every history position is strictly before the user's first target
        batch = dm._users_loader(stage).dataset.__getitems__(list(range(len(es))))
        builder = dm.builder_for(stage)
        positions = torch.from_numpy(es.cutoff)[:, None] - builder.max_history + torch.arange(builder.max_history)
        used = positions[batch["history_mask"]].numpy()
        rows = np.repeat(np.arange(len(es)), batch["history_mask"].sum(1).numpy())
        assert (used < es.cutoff[rows]).all()
        assert (data.split[used] < code).all(), "an interaction of the evaluated period is in the history"
        assert (data.timestamp[used] <= target_time[rows]).all()
        assert (data.user[used] == es.users[rows]).all()
        np.testing.assert_array_equal(batch["history"][batch["history_mask"]].numpy(), data.item[used])
        # targets are interactions of this stage only
        t_rows = es.targets.row_ids()
        stage_pairs = set(zip(data.user[data.split == code].tolist(), data.item[data.split == code].tolist()))
        assert set(zip(es.users[t_rows].tolist(), es.targets.values.tolist())) <= stage_pairs
        # popularity / logQ counts for the stage see nothing from the stage or later
        counts = builder.item_counts
        assert counts.sum() == (data.split < code).sum()
        assert (counts == np.bincount(data.item[data.split < code], minlength=data.num_items)).all()
    # training histories only contain training interactions
    train = dm.train_dataloader().dataset
    idx = train.indices[:5000]
    b = train.__getitems__(list(range(5000)))
    pos = idx[:, None] - dm.max_history + torch.arange(dm.max_history)
    assert (data.split[pos[b["history_mask"]].numpy()] == TRAIN).all()


def test_excluded_items_are_the_users_history(movielens_dm):
    data, es = movielens_dm.data, movielens_dm.evaluation_set("test")
    for row in (0, 17, len(es) - 1):
        history = data.item[es.history_start[row] : es.cutoff[row]]
        np.testing.assert_array_equal(es.exclude.row(row), np.unique(history))


def test_history_gather_matches_a_naive_reference():
    data = prepare(make_raw(n_users=5, per_user=9))
    builder = BatchBuilder(data, max_history=4, item_counts=data.item_counts(1))
    idx = torch.arange(len(data.user))
    hist, mask = builder.history(torch.from_numpy(data.user), idx)
    for g in range(len(data.user)):
        start = data.user_offsets[data.user[g]]
        expected = data.item[max(start, g - 4) : g]
        got = hist[g][mask[g]].numpy()
        np.testing.assert_array_equal(got, expected)
        assert mask[g].sum() == len(expected) and (not mask[g].any() or mask[g][-1])  # right-aligned


def test_preparation_and_loading_are_deterministic(movielens_dm):
    a, b = prepare(movielens_dm.source.load()), prepare(movielens_dm.source.load())
    for name in ("user", "item", "timestamp", "split", "user_ids", "item_ids"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    first = [
        next(iter(RetrievalDataModule(source=movielens_dm.source, seed=3).train_dataloader()))["item"] for _ in range(2)
    ]
    assert torch.equal(first[0], first[1])


def test_ties_in_timestamps_keep_input_order():
    inter = pd.DataFrame({"user_id": [1, 1, 1, 1], "item_id": [10, 11, 12, 13], "timestamp": [5, 5, 5, 6]})
    data = prepare(RawInteractions(inter), split="leave_last_out")
    assert data.item_ids[data.item].tolist() == [10, 11, 12, 13]


def test_evaluation_reports_users_without_history_instead_of_dropping_silently():
    inter = pd.DataFrame(
        {"user_id": [1, 1, 1, 2, 3, 3], "item_id": [1, 2, 3, 1, 2, 3], "timestamp": [1, 2, 9, 8, 3, 4]}
    )
    data = prepare(RawInteractions(inter), split="global_time", val_time=5, test_time=7)
    es = evaluation_set(data, "test")
    assert es.report["users_without_history"] == 1  # user 2's only interaction is in the test period
    assert es.report["evaluated_users"] == 1


# ---------------------------------------------------------------- file sources
def test_csv_source_with_joined_topics(tmp_path):
    inter = pd.DataFrame({"uid": ["a", "a", "a", "b", "b", "b"], "iid": [1, 2, 3, 1, 3, 2], "ts": [1, 2, 3, 1, 2, 3]})
    items = pd.DataFrame({"iid": [1, 2, 3], "cats": ["x|y", "y", ""], "price": [1.0, 2.0, 3.0]})
    inter.to_csv(tmp_path / "inter.csv", index=False)
    items.to_csv(tmp_path / "items.csv", index=False)
    src = InteractionsFileSource(
        str(tmp_path / "inter.csv"),
        items_path=str(tmp_path / "items.csv"),
        user_column="uid",
        item_column="iid",
        timestamp_column="ts",
        topics_column="cats",
        item_feature_columns=["price"],
    )
    data = prepare(src.load())
    assert data.topic_names.tolist() == ["x", "y"]
    assert [data.item_topics.row(i).tolist() for i in range(3)] == [[0, 1], [1], []]
    assert data.item_dense.shape == (3, 1) and abs(data.item_dense.mean()) < 1e-6


def test_parquet_source_with_list_topics_and_user_features(tmp_path):
    inter = pd.DataFrame(
        {"user_id": [7, 7, 7, 8, 8, 8], "item_id": ["p", "q", "r", "q", "p", "r"], "timestamp": [1.0, 2, 3, 4, 5, 6]}
    )
    items = pd.DataFrame({"item_id": ["p", "q", "r"], "topics": [["a"], ["a", "b"], []]})
    users = pd.DataFrame({"user_id": [7, 8], "age": [30.0, 40.0]})
    inter.to_parquet(tmp_path / "i.parquet")
    items.to_parquet(tmp_path / "items.parquet")
    users.to_parquet(tmp_path / "users.parquet")
    src = InteractionsFileSource(
        str(tmp_path / "i.parquet"),
        items_path=str(tmp_path / "items.parquet"),
        users_path=str(tmp_path / "users.parquet"),
        topics_column="topics",
        user_feature_columns=["age"],
    )
    dm = RetrievalDataModule(source=src, max_history=2, batch_size=2)
    assert dm.feature_spec == {
        "num_users": 2,
        "num_items": 3,
        "num_topics": 2,
        "user_dense_dim": 1,
        "item_dense_dim": 0,
    }
    batch = next(iter(dm.train_dataloader()))
    assert batch["user_dense"].shape == (2, 1)


def test_missing_file_and_bad_extension_are_clear(tmp_path):
    with pytest.raises(DataValidationError, match="file not found"):
        InteractionsFileSource(str(tmp_path / "nope.csv")).load()
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(DataValidationError, match="unsupported file type"):
        InteractionsFileSource(str(tmp_path / "x.json")).load()
