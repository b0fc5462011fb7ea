"""The canonical raw tables every source produces, and their validation."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from lightning_retrieval.errors import DataError


class DataValidationError(DataError):
    """Input data that cannot be used as given; the message names the problem and where it is."""


@dataclass
class RawInteractions:
    """Raw tables in canonical column names.

    interactions: ``user_id``, ``item_id``, ``timestamp`` (numeric, e.g. Unix seconds), optional ``rating``.
    items: optional; ``item_id``, optional ``topics`` (list of str per item), numeric feature columns.
    users: optional; ``user_id`` and numeric feature columns.
    """

    interactions: pd.DataFrame
    items: pd.DataFrame | None = None
    users: pd.DataFrame | None = None
    name: str = "interactions"


_EPOCH = pd.Timestamp("1970-01-01")


def timestamps_to_seconds(values: pd.Series, table: str = "interactions") -> pd.Series:
    """Unix seconds (float64) of a timestamp column: numeric columns are returned unchanged, ``datetime64``
    columns of any unit (and tz-aware ones) and ISO-8601 strings are converted; naive times count as UTC.

    Missing values stay missing (NaN) so validation reports them; unparseable strings raise
    :class:`DataValidationError` naming the column and an example.
    """
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        return values
    if isinstance(values.dtype, pd.DatetimeTZDtype):
        return (values - _EPOCH.tz_localize("UTC")) / pd.Timedelta(seconds=1)
    if pd.api.types.is_datetime64_dtype(values):
        return (values - _EPOCH) / pd.Timedelta(seconds=1)
    if pd.api.types.is_object_dtype(values) or pd.api.types.is_string_dtype(values):
        try:
            parsed = pd.to_datetime(values, utc=True, format="ISO8601")
        except (ValueError, TypeError) as err:
            raise DataValidationError(
                f"{table}: column 'timestamp' (dtype {values.dtype}) is neither numeric (e.g. Unix seconds), "
                f"datetime nor ISO-8601 text ({err}); example values: {values.head(3).tolist()}"
            ) from err
        return (parsed - _EPOCH.tz_localize("UTC")) / pd.Timedelta(seconds=1)
    raise DataValidationError(
        f"{table}: column 'timestamp' must be numeric (e.g. Unix seconds), datetime or ISO-8601 text, got dtype "
        f"{values.dtype}"
    )


def with_timestamps_in_seconds(raw: RawInteractions) -> RawInteractions:
    """``raw`` with its interactions' ``timestamp`` column in Unix seconds (see :func:`timestamps_to_seconds`)."""
    inter = raw.interactions
    if "timestamp" not in inter.columns or pd.api.types.is_numeric_dtype(inter["timestamp"]):
        return raw
    inter = inter.assign(timestamp=timestamps_to_seconds(inter["timestamp"]))
    return RawInteractions(interactions=inter, items=raw.items, users=raw.users, name=raw.name)


def duplicate_rows(interactions: pd.DataFrame) -> np.ndarray:
    """``[M]`` bool: rows that repeat an earlier row exactly (every column equal; the first copy is False)."""
    return interactions.duplicated(keep="first").to_numpy()


def require_columns(df: pd.DataFrame, columns: list[str], table: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DataValidationError(f"{table}: missing column(s) {missing}; available columns: {list(df.columns)}")


def _first_rows(mask: np.ndarray, df: pd.DataFrame, n: int = 3) -> list:
    return df.index[np.flatnonzero(mask)[:n]].tolist()


def validate(raw: RawInteractions, sequence_column: str | None = None) -> None:
    """Check ids, timestamps, feature values and the relations between the tables.

    Raises :class:`DataValidationError` naming the table, the column and example rows.
    """
    inter = raw.interactions
    require_columns(inter, ["user_id", "item_id", "timestamp"], "interactions")
    if len(inter) == 0:
        raise DataValidationError("interactions: the table is empty")
    for col in ("user_id", "item_id", "timestamp"):
        bad = inter[col].isna().to_numpy()
        if bad.any():
            kind = "missing timestamps" if col == "timestamp" else f"NaN {col}"
            raise DataValidationError(
                f"interactions: {int(bad.sum())} row(s) with {kind} (first rows: {_first_rows(bad, inter)})"
            )
    if not pd.api.types.is_numeric_dtype(inter["timestamp"]):
        raise DataValidationError(
            f"interactions: column 'timestamp' must be numeric (e.g. Unix seconds), got dtype "
            f"{inter['timestamp'].dtype}; convert it with `lightning_retrieval.data.schema.with_timestamps_in_seconds`"
            " (datetimes of any unit and ISO-8601 text; the datamodule does this for you)"
        )
    if not np.isfinite(inter["timestamp"].to_numpy(dtype=np.float64)).all():
        bad = ~np.isfinite(inter["timestamp"].to_numpy(dtype=np.float64))
        raise DataValidationError(f"interactions: non-finite timestamps in rows {_first_rows(bad, inter)}")
    if "rating" in inter.columns and inter["rating"].isna().any():
        bad = inter["rating"].isna().to_numpy()
        raise DataValidationError(f"interactions: NaN rating in rows {_first_rows(bad, inter)}")
    if sequence_column is not None:
        require_columns(inter, [sequence_column], "interactions")
        ordered = inter.sort_values(["user_id", sequence_column], kind="stable")
        same_user = ordered["user_id"].to_numpy()[1:] == ordered["user_id"].to_numpy()[:-1]
        going_back = np.diff(ordered["timestamp"].to_numpy()) < 0
        bad = same_user & going_back
        if bad.any():
            rows = ordered.index[1:][bad][:3].tolist()
            raise DataValidationError(
                f"interactions: timestamps are not monotonic in '{sequence_column}' order within a user "
                f"({int(bad.sum())} decreasing step(s), first rows: {rows})"
            )

    if raw.items is not None:
        items = raw.items
        require_columns(items, ["item_id"], "items")
        if items["item_id"].isna().any():
            raise DataValidationError(
                f"items: NaN item_id in rows {_first_rows(items['item_id'].isna().to_numpy(), items)}"
            )
        dup = items["item_id"].duplicated().to_numpy()
        if dup.any():
            raise DataValidationError(f"items: duplicated item_id values {items['item_id'][dup].head(3).tolist()}")
        unknown = ~inter["item_id"].isin(items["item_id"]).to_numpy()
        if unknown.any():
            raise DataValidationError(
                f"interactions: {int(unknown.sum())} row(s) reference item ids absent from the items table "
                f"(e.g. {inter['item_id'][unknown].head(3).tolist()}); add them to the items table"
            )
        _validate_numeric_features(items, "items", exclude={"item_id", "topics", "signature"})
        if "signature" in items.columns and items["signature"].isna().any():
            raise DataValidationError(
                f"items: missing signature in rows {_first_rows(items['signature'].isna().to_numpy(), items)}"
            )
        if "topics" in items.columns:
            bad = ~items["topics"].map(lambda t: isinstance(t, (list, tuple, np.ndarray))).to_numpy()
            if bad.any():
                raise DataValidationError(
                    f"items: 'topics' must hold a list of topics per item; rows {_first_rows(bad, items)} do not"
                )

    if raw.users is not None:
        users = raw.users
        require_columns(users, ["user_id"], "users")
        dup = users["user_id"].duplicated().to_numpy()
        if dup.any():
            raise DataValidationError(f"users: duplicated user_id values {users['user_id'][dup].head(3).tolist()}")
        empty = ~users["user_id"].isin(inter["user_id"]).to_numpy()
        if empty.any():
            raise DataValidationError(
                f"users: {int(empty.sum())} user(s) have no interactions (e.g. "
                f"{users['user_id'][empty].head(3).tolist()}); remove them from the users table"
            )
        unknown = ~inter["user_id"].isin(users["user_id"]).to_numpy()
        if unknown.any():
            raise DataValidationError(
                f"interactions: {int(unknown.sum())} row(s) reference user ids absent from the users table "
                f"(e.g. {inter['user_id'][unknown].head(3).tolist()})"
            )
        _validate_numeric_features(users, "users", exclude={"user_id", "followed_topics"})


def _validate_numeric_features(df: pd.DataFrame, table: str, exclude: set[str]) -> None:
    for col in df.columns:
        if col in exclude:
            continue
        if not pd.api.types.is_numeric_dtype(df[col]):
            raise DataValidationError(
                f"{table}: feature column '{col}' is not numeric (dtype {df[col].dtype}); "
                "numeric features only (encode categories first, or drop the column)"
            )
        bad = ~np.isfinite(df[col].to_numpy(dtype=np.float64))
        if bad.any():
            raise DataValidationError(f"{table}: NaN/inf in feature column '{col}' (rows {_first_rows(bad, df)})")
