"""The generated multi-interest dataset ``synthetic_interests``: reproducible, structured as planted, usable."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lightning_retrieval.data import RetrievalDataModule
from lightning_retrieval.data.synthetic import SyntheticInterestsSource
from lightning_retrieval.registry import resolve

SMALL = dict(num_users=300, num_items=1200, num_clusters=30, max_interests=4, min_interactions=15, max_interactions=30)


def _pair_same_cluster_share(interactions: pd.DataFrame, cluster: np.ndarray) -> float:
    """Share of within-user item pairs whose two items are in the same cluster."""
    counts = pd.crosstab(interactions["user_id"], cluster[interactions["item_id"].to_numpy()]).to_numpy()
    same = (counts * (counts - 1) / 2).sum()
    n = counts.sum(1)
    return float(same / (n * (n - 1) / 2).sum())


def test_same_seed_same_data_other_seed_other_data():
    a, b = SyntheticInterestsSource(**SMALL, seed=3), SyntheticInterestsSource(**SMALL, seed=3)
    pd.testing.assert_frame_equal(a.load().interactions, b.load().interactions)
    pd.testing.assert_frame_equal(a.load().items, b.load().items)
    pd.testing.assert_frame_equal(a.user_attributes(), b.user_attributes())
    other = SyntheticInterestsSource(**SMALL, seed=4).load().interactions
    assert not other[["user_id", "item_id"]].equals(a.load().interactions[["user_id", "item_id"]])


def test_planted_clusters_are_recoverable_from_co_occurrence():
    source = SyntheticInterestsSource(**SMALL, seed=0)
    inter, cluster = source.load().interactions, source.item_clusters()
    share = np.bincount(cluster[inter["item_id"]], minlength=30) / len(inter)
    chance = float((share**2).sum())  # two random interactions share a cluster this often (~1/30)
    within = _pair_same_cluster_share(inter, cluster)
    # users with k equal interests: ~1/k of their pairs share a cluster (mean over 1..4: ~0.5)
    assert within > 10 * chance and 0.3 < within < 0.7
    attributes = source.user_attributes().set_index("user_id")
    distinct = pd.Series(cluster[inter["item_id"]]).groupby(inter["user_id"].to_numpy()).nunique()
    assert (attributes.loc[distinct.index, "num_interests"] == distinct).all()
    assert (attributes["num_interests"] <= attributes["planted_interests"]).all()
    assert (attributes["num_interests"] == attributes["planted_interests"]).mean() > 0.95
    assert sorted(attributes["planted_interests"].unique()) == [1, 2, 3, 4]
    # one-interest users only ever touch one cluster
    one = attributes.index[attributes["planted_interests"] == 1]
    assert (distinct.loc[one] == 1).all()


def test_no_item_repeats_within_a_user_and_time_is_ordered():
    inter = SyntheticInterestsSource(**SMALL, seed=1).load().interactions
    assert not inter.duplicated(["user_id", "item_id"]).any()
    assert (inter.groupby("user_id")["timestamp"].diff().dropna() > 0).all()
    sizes = inter.groupby("user_id").size()
    assert sizes.min() >= 15 and sizes.max() <= 30


def test_popularity_skew_and_session_length_act_as_documented():
    def top_share(skew):
        inter = SyntheticInterestsSource(**SMALL, popularity_skew=skew).load().interactions
        counts = np.sort(np.bincount(inter["item_id"], minlength=1200))[::-1]
        return counts[:120].sum() / counts.sum()  # share of the 10% most interacted items

    assert top_share(2.0) > top_share(1.0) > top_share(0.0) + 0.05

    def repeat_rate(session_length):
        source = SyntheticInterestsSource(**SMALL, session_length=session_length)
        inter, cluster = source.load().interactions, source.item_clusters()
        c = cluster[inter["item_id"].to_numpy()]
        same_user = inter["user_id"].to_numpy()[1:] == inter["user_id"].to_numpy()[:-1]
        return float((c[1:] == c[:-1])[same_user].mean())  # consecutive interactions in the same cluster

    assert repeat_rate(8.0) > repeat_rate(1.0) + 0.2


def test_bad_parameters_name_the_problem():
    with pytest.raises(ValueError, match="min_interests <= max_interests"):
        SyntheticInterestsSource(min_interests=3, max_interests=2)
    with pytest.raises(ValueError, match="session_length >= 1"):
        SyntheticInterestsSource(session_length=0.5)
    with pytest.raises(ValueError, match="raise num_items or lower max_interactions"):
        SyntheticInterestsSource(num_users=20, num_items=40, num_clusters=10, min_interactions=30).load()


def test_registered_and_segments_reach_the_datamodule():
    assert resolve("datasets", "synthetic_interests") is SyntheticInterestsSource
    source = SyntheticInterestsSource(**SMALL, seed=2)
    dm = RetrievalDataModule(source=source, max_history=20, batch_size=64, eval_batch_size=64)
    dm.setup("fit")
    assert dm.data.num_users == 300 and dm.data.num_topics == 30  # every cluster is a topic
    segments = dm.user_segments("test")
    users = dm.data.user_ids[dm.evaluation_set("test").users]
    expected = source.user_attributes().set_index("user_id").loc[users, "num_interests"].to_numpy()
    np.testing.assert_array_equal(segments["num_interests"], expected)
    batch = next(iter(dm.train_dataloader()))
    assert batch["history_mask"].any()


def test_next_item_oracle_is_calibrated_on_held_out_last_interactions():
    """The oracle's probabilities are the generator's: over users, the predicted mass of each user's top-10 equals
    the observed share of last interactions that fall in it, and it beats the same ranking without removing seen
    items."""
    source = SyntheticInterestsSource(**{**SMALL, "num_users": 2000}, popularity_skew=1.0, seed=5)
    inter = source.load().interactions.sort_values(["user_id", "timestamp"])
    user, item = inter["user_id"].to_numpy(), inter["item_id"].to_numpy()
    last = np.r_[user[1:] != user[:-1], True]
    users = user[last]
    row = np.searchsorted(users, user[~last])
    probability = source.next_item_probabilities(users, row, item[~last])  # [U, N]
    np.testing.assert_allclose(probability.sum(1), 1.0, atol=1e-9)
    assert (probability[row, item[~last]] == 0).all()  # seen items cannot come next
    top = np.argsort(-probability, 1)[:, :10]
    predicted = np.take_along_axis(probability, top, 1).sum(1).mean()
    observed = (top == item[last][:, None]).any(1).mean()
    se = np.sqrt(observed * (1 - observed) / len(users))
    assert abs(predicted - observed) < 3 * se + 0.01, (predicted, observed)
    # the same planted interests without removing seen items rank visibly worse
    unseen_ignored = source.next_item_probabilities(users, row[:0], item[:0])
    top_wrong = np.argsort(-unseen_ignored, 1)[:, :10]
    assert (top_wrong == item[last][:, None]).any(1).mean() < observed - 5 * se
