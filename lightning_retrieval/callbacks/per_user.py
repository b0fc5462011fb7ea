"""Per-user (or per-query) metric values of an evaluation, written as ``per_user_<stage>.parquet``.

One row per evaluated user (per (user, topic) query for the conditional evaluation): the original ``user_id``,
``history_length`` and its ``history_bucket`` (the labels of the logged ``<metric>@<k>/history_<lo>-<hi>``
segments), the data source's per-user attributes (``RetrievalDataModule.user_segments``, e.g.
``num_interests``), then one float column per per-user metric. NaN marks a row the logged mean does not
count (e.g. diversity of a masked user), so every metric column's mean over its non-NaN rows *is* the logged
metric. ``compare`` reads these files for intervals and paired tests (:mod:`lightning_retrieval.statistics`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

PER_USER_PREFIX = "per_user_"


def history_bucket(history_length: np.ndarray, edges) -> np.ndarray:
    """``[U]`` labels ``history_<lo>-<hi>`` / ``history_<lo>+`` for bucket edges, e.g. [10, 50] ->
    ``history_1-9``, ``history_10-49``, ``history_50+`` (``history_0`` for an empty history)."""
    bounds = [1, *sorted(edges)]
    names = ["history_0"] + [f"history_{lo}-{hi - 1}" for lo, hi in zip(bounds[:-1], bounds[1:])]
    names.append(f"history_{bounds[-1]}+")
    return np.asarray(names, dtype=object)[np.searchsorted(bounds, np.asarray(history_length), side="right")]


def counted_mask(result, metrics) -> dict[str, np.ndarray]:
    """Per metric key, the users its logged mean counts: all users for accuracy metrics (masked users count as
    0), searched users only for the others (the evaluator's rule)."""
    valid = np.asarray(result.lists.valid, dtype=bool)
    uncounted_when_masked = {m.name for m in metrics if m.per_user and not m.accuracy}
    return {key: valid for key in result.per_user if key.split("@")[0] in uncounted_when_masked}


def per_user_table(
    datamodule,
    stage: str,
    rows: np.ndarray,
    values: dict[str, np.ndarray],
    counted: dict[str, np.ndarray] | None = None,
    edges=(10, 50, 200),
    keys: dict[str, np.ndarray] | None = None,
) -> pd.DataFrame:
    """One row per entry of ``rows`` (evaluation-set rows of ``stage``, one per user or per query).

    ``values``: metric name -> ``[R]``; ``counted``: metric name -> bool ``[R]`` (False: NaN, not in the mean);
    ``keys``: further identifying columns ``[R]`` placed after ``user_id`` (e.g. a query's ``topic``).
    """
    rows = np.asarray(rows, dtype=np.int64)
    eval_set = datamodule.evaluation_set(stage)
    history = eval_set.history_length[rows]
    table = {
        "user_id": datamodule.user_ids[eval_set.users[rows]],
        **{name: np.asarray(column) for name, column in (keys or {}).items()},
        "history_length": history,
        "history_bucket": history_bucket(history, edges),
    }
    for name, column in datamodule.user_segments(stage).items():
        table[name] = np.asarray(column)[rows]
    for name, column in values.items():
        column = np.asarray(column, dtype=np.float64)
        if len(column) != len(rows):
            raise ValueError(f"per-user metric {name!r} has {len(column)} values for {len(rows)} rows")
        mask = (counted or {}).get(name)
        table[name] = column if mask is None else np.where(mask, column, np.nan)
    return pd.DataFrame(table)


def write_per_user(directory: Path, stage: str, table: pd.DataFrame) -> Path:
    """``<directory>/per_user_<stage>.parquet`` (overwritten by each evaluation of the stage)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{PER_USER_PREFIX}{stage}.parquet"
    frame = table.copy()
    if frame["user_id"].dtype == object:  # mixed/str ids: Parquet needs one type per column
        frame["user_id"] = frame["user_id"].astype(str)
    frame.to_parquet(path, index=False)
    return path


def write_evaluation_per_user(directory: Path, stage: str, datamodule, rows, result, metrics, edges) -> Path:
    """The retrieval evaluation's per-user file: every per-user metric of ``result`` (an EvaluationResult)."""
    table = per_user_table(datamodule, stage, rows, result.per_user, counted_mask(result, metrics), edges)
    return write_per_user(directory, stage, table)


def read_per_user(path: Path) -> pd.DataFrame:
    return pd.read_parquet(path)
