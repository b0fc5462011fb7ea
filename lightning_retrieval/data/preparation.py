"""Vectorised preparation: id remapping, time ordering, temporal splits, evaluation sets.

Everything is numpy/pandas column arithmetic (sorts, bincounts, searchsorted); there is no per-user
Python loop, so preparation stays linear-ish in the number of interactions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd

from lightning_retrieval.arrays import CSR, sorted_member, sorted_unique, take_rows
from lightning_retrieval.data.schema import DataValidationError, RawInteractions, validate
from lightning_retrieval.data.user_split import user_split_labels

# CSR and the sorted-array helpers live in lightning_retrieval.arrays; re-exported here for existing imports
__all__ = [
    "CSR",
    "STAGE_CODES",
    "TEST",
    "TRAIN",
    "VAL",
    "EvaluationSet",
    "PreparedData",
    "evaluation_set",
    "prepare",
    "serving_set",
    "sorted_member",
    "sorted_unique",
    "take_rows",
]

TRAIN, VAL, TEST = 0, 1, 2
STAGE_CODES = {"val": VAL, "validate": VAL, "test": TEST}
SplitName = Literal["leave_last_out", "global_time", "users"]


@dataclass
class EvaluationSet:
    """Who is evaluated in a stage, on what history, against which targets.

    Row ``e`` is user ``users[e]``; their history is the interactions ``[history_start[e], cutoff[e])`` of
    the time-sorted table (everything before their first target interaction), ``targets`` the distinct
    items they interacted with in the stage, ``exclude`` the distinct items in their history.
    """

    stage: str
    users: np.ndarray
    history_start: np.ndarray
    cutoff: np.ndarray
    targets: CSR
    exclude: CSR
    report: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.users)

    @property
    def history_length(self) -> np.ndarray:
        return self.cutoff - self.history_start


@dataclass
class PreparedData:
    """Interactions sorted by (user, timestamp, input row), with dense ids and split labels."""

    user_ids: np.ndarray  # original ids, [U]
    item_ids: np.ndarray  # original ids, [N]
    topic_names: np.ndarray  # [T]
    item_topics: CSR  # topics of each item, [N] rows
    user_topics: CSR  # explicitly followed topics of each user, [U] rows (empty without such a column)
    item_signature: np.ndarray | None  # [N] canonical signature per item (items table ``signature``), or None
    item_dense: np.ndarray  # [N, Fi] float32
    user_dense: np.ndarray  # [U, Fu] float32
    user: np.ndarray  # [M] int64
    item: np.ndarray  # [M] int64
    timestamp: np.ndarray  # [M] float64
    split: np.ndarray  # [M] int8: 0 train, 1 validation, 2 test, 3 held-out user history (split "users")
    user_offsets: np.ndarray  # [U + 1]
    report: dict

    @property
    def num_users(self) -> int:
        return len(self.user_ids)

    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    @property
    def num_topics(self) -> int:
        return len(self.topic_names)

    def item_counts(self, before_split: int) -> np.ndarray:
        """Interactions per item among those with split < ``before_split``, ``[N]`` (no later data)."""
        mask = self.split < before_split
        return np.bincount(self.item[mask], minlength=self.num_items)

    def train_indices(self) -> np.ndarray:
        return np.flatnonzero(self.split == TRAIN)


def prepare(
    raw: RawInteractions,
    split: SplitName = "leave_last_out",
    val_items: int = 1,
    test_items: int = 1,
    val_time: float = 0.8,
    test_time: float = 0.9,
    min_rating: float | None = None,
    sequence_column: str | None = None,
    val_users: float = 0.1,
    test_users: float = 0.1,
    history_fraction: float = 0.8,
    split_seed: int = 0,
) -> PreparedData:
    """Validate, filter, remap and split raw tables.

    Args:
        split: ``leave_last_out``: each user's last ``test_items`` interactions are the test split and the
            ``val_items`` before them validation. ``global_time``: one time cut for everyone; ``val_time`` and
            ``test_time`` are quantiles of the timestamps if in (0, 1), else absolute timestamps. ``users``
            (ComiRec): ``val_users`` / ``test_users`` shares of users (shuffled with ``split_seed``) are held out;
            their first ``history_fraction`` of interactions is history, the rest targets
            (:mod:`lightning_retrieval.data.user_split`).
        min_rating: implicit-feedback threshold: keep interactions with ``rating >= min_rating``.
    """
    validate(raw, sequence_column=sequence_column)
    report: dict = {"dataset": raw.name, "rows_in": int(len(raw.interactions))}
    inter = _filter_ratings(raw.interactions, min_rating, report)
    item_ids, item_order, item, user_codes, user_ids = _remap_ids(raw, inter)
    user, item, timestamp, user_offsets = _sort_by_user_time(
        user_codes, item, inter["timestamp"].to_numpy(dtype=np.float64), len(user_ids)
    )
    if split == "users":
        split_labels = user_split_labels(
            user, user_offsets, val_users, test_users, history_fraction, split_seed, report
        )
    else:
        split_labels = _split_labels(
            split, user, timestamp, user_offsets, val_items, test_items, val_time, test_time, report
        )
    topic_names, item_topics = _item_topics(raw.items, item_order, len(item_ids))
    item_signature = None
    if raw.items is not None and "signature" in raw.items.columns:
        item_signature = pd.factorize(raw.items["signature"].iloc[item_order].to_numpy())[0].astype(np.int64)
    report.update(
        {
            "split": split,
            "users": len(user_ids),
            "items": len(item_ids),
            "topics": int(len(topic_names)),
            "interactions": int(len(user)),
            "train_interactions": int((split_labels == TRAIN).sum()),
            "validation_interactions": int((split_labels == VAL).sum()),
            "test_interactions": int((split_labels == TEST).sum()),
        }
    )
    return PreparedData(
        user_ids=user_ids,
        item_ids=item_ids,
        topic_names=topic_names,
        item_topics=item_topics,
        user_topics=_user_topics(raw.users, user_ids, topic_names),
        item_signature=item_signature,
        item_dense=_dense_features(raw.items, "item_id", item_ids, {"item_id", "topics", "signature"}),
        user_dense=_dense_features(raw.users, "user_id", user_ids, {"user_id", "followed_topics"}),
        user=user,
        item=item,
        timestamp=timestamp,
        split=split_labels,
        user_offsets=user_offsets,
        report=report,
    )


def _filter_ratings(inter: pd.DataFrame, min_rating: float | None, report: dict) -> pd.DataFrame:
    """Interactions with ``rating >= min_rating`` (all if None); the dropped count goes into ``report``."""
    if min_rating is None:
        return inter
    if "rating" not in inter.columns:
        raise DataValidationError(
            f"min_rating={min_rating} needs a rating column; interactions columns: {list(inter.columns)}"
        )
    keep = inter["rating"].to_numpy() >= min_rating
    report["rows_below_min_rating"] = int((~keep).sum())
    if not keep.any():
        raise DataValidationError(f"no interaction has rating >= {min_rating}")
    return inter[keep]


def _remap_ids(raw: RawInteractions, inter: pd.DataFrame):
    """Dense ids (hash-based, vectorised): ``(item_ids [N], item_order [N], item [M], user_codes [M], user_ids [U])``.

    Items are indexed in sorted original-id order (``item_order`` maps to the items table's rows), users too."""
    item_ids = raw.items["item_id"].to_numpy() if raw.items is not None else pd.unique(inter["item_id"].to_numpy())
    item_order = np.argsort(item_ids, kind="stable")
    item_ids = item_ids[item_order]
    item = pd.Index(item_ids).get_indexer(inter["item_id"].to_numpy())
    if (item < 0).any():  # only possible if validation was bypassed
        raise DataValidationError("interactions reference unknown item ids")
    user_codes, user_ids = pd.factorize(inter["user_id"].to_numpy(), sort=True)
    return item_ids, item_order, item, user_codes, np.asarray(user_ids)


def _sort_by_user_time(user_codes, item, timestamp, num_users: int):
    """Sort by (user, timestamp, input row), ties keep the input order: ``(user, item, timestamp [M],
    user_offsets [U + 1])``."""
    perm = np.lexsort((np.arange(len(user_codes)), timestamp, user_codes))
    user = user_codes[perm].astype(np.int64)
    user_offsets = np.zeros(num_users + 1, dtype=np.int64)
    np.cumsum(np.bincount(user, minlength=num_users), out=user_offsets[1:])
    return user, item[perm].astype(np.int64), timestamp[perm], user_offsets


def _split_labels(
    split: str, user, timestamp, user_offsets, val_items: int, test_items: int, val_time, test_time, report: dict
) -> np.ndarray:
    """``[M]`` int8 split label (TRAIN / VAL / TEST) of every time-sorted interaction."""
    labels = np.zeros(len(user), dtype=np.int8)
    counts = np.diff(user_offsets)
    if split == "leave_last_out":
        if val_items < 0 or test_items < 1:
            raise ValueError(f"leave_last_out needs test_items >= 1 and val_items >= 0, got {test_items}, {val_items}")
        from_end = user_offsets[user + 1] - 1 - np.arange(len(user))
        long_enough = counts[user] > val_items + test_items  # at least one training interaction remains
        labels[long_enough & (from_end < test_items)] = TEST
        labels[long_enough & (from_end >= test_items) & (from_end < test_items + val_items)] = VAL
        report["users_too_short_for_evaluation"] = int((counts <= val_items + test_items).sum())
    elif split == "global_time":
        cuts = []
        for value in (val_time, test_time):
            cuts.append(float(np.quantile(timestamp, value)) if 0.0 < value < 1.0 else float(value))
        if cuts[0] > cuts[1]:
            raise ValueError(f"validation cut {cuts[0]} is after the test cut {cuts[1]}")
        labels[timestamp >= cuts[0]] = VAL
        labels[timestamp >= cuts[1]] = TEST
        report["time_cuts"] = {"validation": cuts[0], "test": cuts[1]}
    else:
        raise ValueError(f"unknown split {split!r}; choose 'leave_last_out', 'global_time' or 'users'")
    return labels


def _item_topics(items: pd.DataFrame | None, item_order: np.ndarray, num_items: int) -> tuple[np.ndarray, CSR]:
    """``(topic_names [T], item_topics CSR [N])`` from the items table's ``topics`` lists (none: empty)."""
    if items is None or "topics" not in items.columns:
        return np.zeros(0, dtype=object), CSR(np.zeros(num_items + 1, dtype=np.int64), np.zeros(0, dtype=np.int64))
    exploded = items["topics"].iloc[item_order].reset_index(drop=True).explode().dropna()
    topic_codes, topic_names = pd.factorize(exploded.to_numpy(dtype=object), sort=True)
    item_topics = CSR.from_pairs_unique(exploded.index.to_numpy(), topic_codes, num_items, max(len(topic_names), 1))
    return np.asarray(topic_names, dtype=object), item_topics


def _user_topics(users: pd.DataFrame | None, user_ids: np.ndarray, topic_names: np.ndarray) -> CSR:
    """Followed topics per user as topic indices (CSR over users); unknown topic names are an error."""
    if users is None or "followed_topics" not in users.columns:
        return CSR(np.zeros(len(user_ids) + 1, dtype=np.int64), np.zeros(0, dtype=np.int64))
    aligned = users.set_index("user_id")["followed_topics"].reindex(user_ids)
    exploded = aligned.map(lambda t: t if isinstance(t, list) else []).explode().dropna()
    codes = pd.Index(topic_names).get_indexer(exploded.to_numpy())
    if (codes < 0).any():
        unknown = sorted(set(exploded.to_numpy()[codes < 0].tolist()))[:5]
        raise DataValidationError(
            f"users: followed topics {unknown} are not item topics; known topics: {list(topic_names)[:20]}"
        )
    rows = pd.Index(user_ids).get_indexer(exploded.index.to_numpy())
    return CSR.from_pairs_unique(rows, codes, len(user_ids), max(len(topic_names), 1))


def _dense_features(table: pd.DataFrame | None, id_col: str, ids: np.ndarray, skip: set[str]) -> np.ndarray:
    """Numeric columns aligned to ``ids`` and standardised (z-score), ``[len(ids), F]`` float32."""
    if table is None:
        return np.zeros((len(ids), 0), dtype=np.float32)
    cols = [c for c in table.columns if c not in skip]
    if not cols:
        return np.zeros((len(ids), 0), dtype=np.float32)
    aligned = table.set_index(id_col).reindex(ids)[cols].to_numpy(dtype=np.float32)
    mean, std = aligned.mean(0), aligned.std(0)
    return (aligned - mean) / np.where(std > 0, std, 1.0)


def evaluation_set(data: PreparedData, stage: str, exclude_seen: bool = True) -> EvaluationSet:
    """Users with interactions in ``stage`` ('val' or 'test') and at least one interaction before them."""
    code = STAGE_CODES[stage]
    in_stage = np.flatnonzero(data.split == code)
    if len(in_stage) == 0:
        raise DataValidationError(f"the {stage} split is empty; check the split settings")
    stage_users, first = np.unique(data.user[in_stage], return_index=True)
    cutoff = in_stage[first]  # first stage interaction of each user (rows are time-sorted per user)
    start = data.user_offsets[stage_users]
    has_history = cutoff > start
    report = {
        "stage": stage,
        "users_in_split": int(len(stage_users)),
        "users_without_history": int((~has_history).sum()),
    }
    users, start, cutoff = stage_users[has_history], start[has_history], cutoff[has_history]
    num_eval, num_items = len(users), data.num_items

    row_of_user = np.full(data.num_users, -1, dtype=np.int64)
    row_of_user[users] = np.arange(num_eval)
    # targets: distinct stage items of each evaluated user
    t_rows = row_of_user[data.user[in_stage]]
    keep = t_rows >= 0
    targets = CSR.from_pairs_unique(t_rows[keep], data.item[in_stage][keep], num_eval, num_items)
    # history (to exclude from retrieval): interactions before the cutoff of evaluated users
    rows_all = row_of_user[data.user]
    idx = np.arange(len(data.user))
    in_history = (rows_all >= 0) & (idx < np.where(rows_all >= 0, cutoff[np.maximum(rows_all, 0)], 0))
    exclude = CSR.from_pairs_unique(rows_all[in_history], data.item[in_history], num_eval, num_items)
    if not exclude_seen:
        exclude = CSR(np.zeros(num_eval + 1, dtype=np.int64), np.zeros(0, dtype=np.int64))
    else:
        # a target already in the history cannot be retrieved once seen items are excluded: drop it, say so
        seen_target = sorted_member(targets.keys(num_items), exclude.keys(num_items))
        report["targets_already_in_history"] = int(seen_target.sum())
        if seen_target.any():
            t_keys = targets.keys(num_items)[~seen_target]
            targets = CSR.from_sorted_pairs(t_keys // num_items, t_keys % num_items, num_eval)
    without_targets = targets.lengths == 0
    if without_targets.any():
        report["users_without_new_targets"] = int(without_targets.sum())
        keep_rows = np.flatnonzero(~without_targets)
        users, start, cutoff = users[keep_rows], start[keep_rows], cutoff[keep_rows]
        targets, exclude = take_rows(targets, keep_rows), take_rows(exclude, keep_rows)
    report["evaluated_users"] = int(len(users))
    return EvaluationSet(stage, users, start, cutoff, targets, exclude, report)


def serving_set(data: PreparedData) -> EvaluationSet:
    """Every user with their full history (for ``predict``): no targets, all seen items excluded."""
    users = np.arange(data.num_users)
    start, cutoff = data.user_offsets[:-1], data.user_offsets[1:]
    exclude = CSR.from_pairs_unique(data.user, data.item, data.num_users, data.num_items)
    empty = CSR(np.zeros(data.num_users + 1, dtype=np.int64), np.zeros(0, dtype=np.int64))
    return EvaluationSet(
        "predict", users, start, cutoff, empty, exclude, {"stage": "predict", "users": int(len(users))}
    )
