"""The multi-interest literature's split (ComiRec, Cen et al. 2020, and its successors): by users, not by time.

Users are shuffled and split ``1 - val_users - test_users : val_users : test_users`` (8:1:1 by default) into
training, validation and test users. Training users' interactions are all training examples; a held-out user is
never trained on: the first ``history_fraction`` (80%) of their time-ordered interactions is their history (fed
to the user tower, labelled :data:`HISTORY_ONLY`) and the rest are their targets (labelled VAL or TEST). So no
learned user-ID row can memorise an evaluated user's tastes.
"""

from __future__ import annotations

import numpy as np

# split labels, the same codes as lightning_retrieval.data.preparation (not imported from there: it imports this)
TRAIN, VAL, TEST = 0, 1, 2
HISTORY_ONLY = 3  # history of a held-out user (never a training example, never a target)


def user_split_labels(
    user: np.ndarray,
    user_offsets: np.ndarray,
    val_users: float = 0.1,
    test_users: float = 0.1,
    history_fraction: float = 0.8,
    seed: int = 0,
    report: dict | None = None,
) -> np.ndarray:
    """``[M]`` int8 split label of every interaction of a table sorted by (user, time).

    Args:
        user: ``[M]`` user index of each interaction (sorted, so each user's rows are contiguous, oldest first).
        user_offsets: ``[U + 1]`` first row of each user.
        val_users / test_users: shares of users held out for validation / test.
        history_fraction: share of a held-out user's interactions that is history (at least 1, and at least one
            target remains); users with a single interaction cannot be evaluated and are history only.
        seed: seeds the user shuffle (the split does not move with the training seed).
    Returns:
        TRAIN (0) for training users, HISTORY_ONLY (3) / VAL (1) / TEST (2) for held-out users' history / targets.
    """
    if not (0 <= val_users and 0 <= test_users and val_users + test_users < 1):
        raise ValueError(
            f"need val_users >= 0, test_users >= 0 and val_users + test_users < 1, got {val_users}, {test_users}"
        )
    if not 0 < history_fraction < 1:
        raise ValueError(f"history_fraction must be in (0, 1), got {history_fraction}")
    num_users = len(user_offsets) - 1
    counts = np.diff(user_offsets)
    n_val, n_test = int(round(num_users * val_users)), int(round(num_users * test_users))
    group = np.full(num_users, TRAIN, dtype=np.int8)
    shuffled = np.random.default_rng(seed).permutation(num_users)
    group[shuffled[:n_val]] = VAL
    group[shuffled[n_val : n_val + n_test]] = TEST
    n_history = np.clip(np.floor(history_fraction * counts).astype(np.int64), 1, np.maximum(counts - 1, 1))
    position = np.arange(len(user)) - user_offsets[user]
    held_out = group[user] != TRAIN
    is_history = held_out & ((position < n_history[user]) | (counts[user] < 2))
    labels = group[user].copy()
    labels[is_history] = HISTORY_ONLY
    if report is not None:
        report["user_split"] = {
            "train_users": int((group == TRAIN).sum()),
            "validation_users": int((group == VAL).sum()),
            "test_users": int((group == TEST).sum()),
            "history_fraction": history_fraction,
            "seed": seed,
            "held_out_users_too_short": int(((group != TRAIN) & (counts < 2)).sum()),
        }
    return labels
