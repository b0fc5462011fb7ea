"""Interaction sources (registry kind ``datasets``): each reads raw tables into :class:`RawInteractions`."""

from __future__ import annotations

from abc import ABC, abstractmethod
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from lightning_retrieval.data.schema import DataValidationError, RawInteractions, require_columns
from lightning_retrieval.registry import component_kind, register


@component_kind("datasets")
class InteractionSource(ABC):
    """Reads a dataset's raw tables. Subclass it and ``@register("name")`` to add a dataset."""

    @abstractmethod
    def load(self) -> RawInteractions:
        """Return the raw tables in canonical column names (validation happens in the datamodule)."""

    def describe(self) -> str:
        return type(self).__name__


def embedded_movielens_path() -> Path:
    """Folder of the MovieLens ml-latest-small copy shipped inside the package."""
    return Path(str(resources.files("lightning_retrieval") / "resources" / "ml-latest-small"))


def split_topics(values: pd.Series, separator: str, empty_markers: tuple[str, ...] = ()) -> pd.Series:
    """``"A|B"`` -> ``["A", "B"]``; missing values and ``empty_markers`` give ``[]``."""
    text = values.fillna("").astype(str)
    out = text.str.split(separator, regex=False)
    return out.map(lambda ts: [t for t in ts if t and t not in empty_markers])


def _topic_lists(values: pd.Series, separator: str) -> pd.Series:
    """A list column as lists of str, or a joined-string column split by ``separator``."""
    if values.map(lambda t: isinstance(t, (list, tuple, np.ndarray))).all():
        return values.map(lambda t: [str(x) for x in t])
    return split_topics(values, separator)


def _read_table(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise DataValidationError(f"file not found: {path}")
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        return pd.read_parquet(path)
    if suffix in (".csv", ".tsv", ".txt"):
        return pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",", engine="pyarrow")
    raise DataValidationError(f"{path}: unsupported file type {suffix!r}; use .csv, .tsv or .parquet")


@register("movielens")
class MovieLensSource(InteractionSource):
    """MovieLens ratings (``ratings.csv`` + ``movies.csv``); genres become item topics.

    Args:
        path: folder with ``ratings.csv`` and ``movies.csv``; default: the embedded ml-latest-small copy.
    """

    def __init__(self, path: str | None = None):
        self.path = path

    def load(self) -> RawInteractions:
        root = Path(self.path) if self.path else embedded_movielens_path()
        ratings = _read_table(root / "ratings.csv")
        movies = _read_table(root / "movies.csv")
        require_columns(ratings, ["userId", "movieId", "rating", "timestamp"], str(root / "ratings.csv"))
        require_columns(movies, ["movieId", "genres"], str(root / "movies.csv"))
        interactions = ratings.rename(columns={"userId": "user_id", "movieId": "item_id"})[
            ["user_id", "item_id", "timestamp", "rating"]
        ]
        items = pd.DataFrame(
            {
                "item_id": movies["movieId"],
                "topics": split_topics(movies["genres"], "|", empty_markers=("(no genres listed)",)),
            }
        )
        return RawInteractions(interactions=interactions, items=items, name=f"movielens:{root.name}")

    def describe(self) -> str:
        return f"MovieLens ({self.path or 'embedded ml-latest-small'})"


@register("interactions_file")
class InteractionsFileSource(InteractionSource):
    """Your own data: an interactions file (CSV/Parquet) plus optional item and user tables.

    Args:
        interactions_path: file with one row per (user, item, time) event.
        items_path: optional file with one row per item: id, optional topics, numeric features.
        users_path: optional file with one row per user: id and numeric features.
        user_column / item_column / timestamp_column / rating_column: column names in your files.
        topics_column: multi-valued topic column in the items file (a list column in Parquet, or a string
            joined by ``topic_separator`` in CSV).
        item_feature_columns / user_feature_columns: numeric feature columns to use (default: none).
        signature_column: item column with a canonical signature (e.g. an image hash) for corpus de-duplication.
        user_topics_column: multi-valued column in the users file with each user's explicitly followed
            topics (list column, or joined by ``topic_separator``); they must be item topics.
    """

    def __init__(
        self,
        interactions_path: str,
        items_path: str | None = None,
        users_path: str | None = None,
        user_column: str = "user_id",
        item_column: str = "item_id",
        timestamp_column: str = "timestamp",
        rating_column: str | None = None,
        topics_column: str | None = None,
        topic_separator: str = "|",
        item_feature_columns: list[str] | None = None,
        user_feature_columns: list[str] | None = None,
        user_topics_column: str | None = None,
        signature_column: str | None = None,
    ):
        self.interactions_path = interactions_path
        self.items_path = items_path
        self.users_path = users_path
        self.user_column = user_column
        self.item_column = item_column
        self.timestamp_column = timestamp_column
        self.rating_column = rating_column
        self.topics_column = topics_column
        self.topic_separator = topic_separator
        self.item_feature_columns = list(item_feature_columns or [])
        self.user_feature_columns = list(user_feature_columns or [])
        self.user_topics_column = user_topics_column
        self.signature_column = signature_column

    def load(self) -> RawInteractions:
        path = Path(self.interactions_path)
        raw = _read_table(path)
        cols = [self.user_column, self.item_column, self.timestamp_column]
        if self.rating_column:
            cols.append(self.rating_column)
        require_columns(raw, cols, str(path))
        rename = {self.user_column: "user_id", self.item_column: "item_id", self.timestamp_column: "timestamp"}
        if self.rating_column:
            rename[self.rating_column] = "rating"
        interactions = raw[cols].rename(columns=rename)

        items = None
        if self.items_path:
            ipath = Path(self.items_path)
            table = _read_table(ipath)
            wanted = (
                [self.item_column] + ([self.topics_column] if self.topics_column else []) + self.item_feature_columns
            )
            wanted += [self.signature_column] if self.signature_column else []
            require_columns(table, wanted, str(ipath))
            items = table[wanted].rename(columns={self.item_column: "item_id"})
            if self.signature_column:
                items = items.rename(columns={self.signature_column: "signature"})
            if self.topics_column:
                items["topics"] = _topic_lists(items.pop(self.topics_column), self.topic_separator)
        elif self.topics_column or self.item_feature_columns or self.signature_column:
            raise DataValidationError("topics_column / item_feature_columns need items_path")

        users = None
        if self.users_path:
            upath = Path(self.users_path)
            table = _read_table(upath)
            wanted = [self.user_column] + self.user_feature_columns
            wanted += [self.user_topics_column] if self.user_topics_column else []
            require_columns(table, wanted, str(upath))
            users = table[wanted].rename(columns={self.user_column: "user_id"})
            if self.user_topics_column:
                users["followed_topics"] = _topic_lists(users.pop(self.user_topics_column), self.topic_separator)
        elif self.user_feature_columns or self.user_topics_column:
            raise DataValidationError("user_feature_columns / user_topics_column need users_path")
        return RawInteractions(interactions=interactions, items=items, users=users, name=path.stem)

    def describe(self) -> str:
        return f"interactions file {self.interactions_path}"
