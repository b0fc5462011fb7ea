"""The user split (ComiRec's protocol): held-out users are never trained on; 80% history, 20% targets."""

from __future__ import annotations

import numpy as np
import pytest

from lightning_retrieval.data import RetrievalDataModule, preparation
from lightning_retrieval.data.synthetic import SyntheticInterestsSource
from lightning_retrieval.data.user_split import HISTORY_ONLY, TEST, TRAIN, VAL, user_split_labels

SMALL = dict(num_users=400, num_items=1200, num_clusters=20)


def _offsets(counts):
    offsets = np.concatenate([[0], np.cumsum(counts)])
    return np.repeat(np.arange(len(counts)), counts), offsets


def test_labels_hold_out_whole_users_with_80_percent_history():
    assert (TRAIN, VAL, TEST) == (preparation.TRAIN, preparation.VAL, preparation.TEST)
    assert HISTORY_ONLY not in (TRAIN, VAL, TEST)
    counts = np.random.default_rng(0).integers(1, 40, 1000)
    user, offsets = _offsets(counts)
    report = {}
    labels = user_split_labels(user, offsets, report=report)
    per_user = [set(labels[offsets[u] : offsets[u + 1]].tolist()) for u in range(1000)]
    trained = [u for u in range(1000) if per_user[u] == {TRAIN}]
    assert 750 < len(trained) < 850 and report["user_split"]["validation_users"] == 100
    for u in range(1000):
        row = labels[offsets[u] : offsets[u + 1]]
        if TRAIN in per_user[u]:
            assert per_user[u] == {TRAIN}, "a user is either trained on or held out, never both"
            continue
        n = counts[u]
        if n < 2:
            assert per_user[u] == {HISTORY_ONLY}
            continue
        n_hist = min(max(int(np.floor(0.8 * n)), 1), n - 1)
        assert (row[:n_hist] == HISTORY_ONLY).all() and np.isin(row[n_hist:], [VAL, TEST]).all()
        assert len(set(row[n_hist:].tolist())) == 1  # one stage per held-out user
    np.testing.assert_array_equal(labels, user_split_labels(user, offsets))  # seeded
    assert not np.array_equal(labels, user_split_labels(user, offsets, seed=1))


def test_bad_shares_are_rejected():
    user, offsets = _offsets(np.array([3, 4]))
    with pytest.raises(ValueError, match="val_users \\+ test_users < 1"):
        user_split_labels(user, offsets, val_users=0.5, test_users=0.5)
    with pytest.raises(ValueError, match="history_fraction must be in"):
        user_split_labels(user, offsets, history_fraction=1.0)
    with pytest.raises(ValueError, match="'users'"):
        _ = RetrievalDataModule(source=SyntheticInterestsSource(**SMALL), split="time").data


def test_no_evaluated_user_or_target_reaches_training():
    dm = RetrievalDataModule(
        source=SyntheticInterestsSource(**SMALL, seed=5),
        split="users",
        max_history=20,
        batch_size=64,
        eval_batch_size=64,
    )
    dm.setup("fit")
    data = dm.data
    trained_users = np.unique(data.user[dm.training_indices()])
    for stage in ("val", "test"):
        ev = dm.evaluation_set(stage)
        assert len(ev) > 30
        assert not np.isin(ev.users, trained_users).any(), f"{stage} users are trained on"
        # history = the user's first 80% (all of it before the cutoff), targets = the rest
        n = data.user_offsets[ev.users + 1] - data.user_offsets[ev.users]
        np.testing.assert_array_equal(ev.history_start, data.user_offsets[ev.users])
        np.testing.assert_array_equal(ev.history_length, np.clip(np.floor(0.8 * n).astype(int), 1, n - 1))
        assert (ev.targets.lengths == n - ev.history_length).all()  # no repeats in this data, so all are new
    assert not np.intersect1d(dm.evaluation_set("val").users, dm.evaluation_set("test").users).size
    # training batches only ever show training users, as targets and in histories
    batch = next(iter(dm.train_dataloader()))
    assert np.isin(batch["user"].numpy(), trained_users).all()
    assert data.report["user_split"]["train_users"] == len(trained_users)
