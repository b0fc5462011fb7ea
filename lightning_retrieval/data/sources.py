"""Interaction sources (registry kind ``datasets``): each reads raw tables into :class:`RawInteractions`."""

from __future__ import annotations

from abc import ABC, abstractmethod
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from lightning_retrieval.data.schema import (
    DataValidationError,
    RawInteractions,
    require_columns,
    with_timestamps_in_seconds,
)
from lightning_retrieval.registry import component_kind, register

if TYPE_CHECKING:
    from lightning_retrieval.data.features import RawSideFeatures


@component_kind("datasets")
class InteractionSource(ABC):
    """Reads a dataset's raw tables. Subclass it and ``@register("name")`` to add a dataset."""

    @abstractmethod
    def load(self) -> RawInteractions:
        """Return the raw tables in canonical column names (validation happens in the datamodule)."""

    def describe(self) -> str:
        return type(self).__name__

    def user_attributes(self) -> pd.DataFrame | None:
        """Optional per-user attributes to segment results by (``user_id`` + one column each, e.g. the planted
        ``num_interests`` of a synthetic dataset); not model features. Written beside per-user metrics."""
        return None

    def side_features(self) -> RawSideFeatures | None:
        """Optional categorical / multi-valued user and item columns to embed as model features (each its own
        table and tower field; ``lightning_retrieval.data.features``). Called after :meth:`load`."""
        return None


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
    """A CSV/TSV/Parquet file as a DataFrame; a missing, empty or unreadable file raises an error naming it."""
    if not path.exists():
        raise DataValidationError(f"file not found: {path}")
    suffix = path.suffix.lower()
    if suffix not in (".parquet", ".pq", ".csv", ".tsv", ".txt"):
        raise DataValidationError(f"{path}: unsupported file type {suffix!r}; use .csv, .tsv or .parquet")
    if path.is_file() and path.stat().st_size == 0:
        raise DataValidationError(f"{path}: the file is empty (0 bytes)")
    try:
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(path)
        return pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",", engine="pyarrow")
    except Exception as err:  # noqa: BLE001 - pandas/pyarrow raise many types; re-raised naming the file
        kind = suffix.lstrip(".")
        raise DataValidationError(f"{path}: cannot be read as {kind} (corrupt or truncated?): {err}") from err


@register("movielens")
class MovieLensSource(InteractionSource):
    """MovieLens ratings (``ratings.csv`` + ``movies.csv``); genres become item topics.

    Args:
        path: folder with ``ratings.csv`` and ``movies.csv``; default: the embedded ml-latest-small copy.
        item_side_features: also embed two item side features: ``decade`` (the release year in each title, as a
            decade) and ``tags`` (the distinct lower-cased ``tags.csv`` tags of each movie, a bag; tags seen on
            fewer than ``tag_min_count`` training items share the unknown id). A tag counts only if its user
            applied it inside their training part of the split (before their first validation / test interaction;
            before the validation cut for ``global_time``): ``data.features.training_time_limits``. Tags are
            applied while watching, so later tags would tell the item tower about the evaluation window.
    """

    def __init__(self, path: str | None = None, item_side_features: bool = False, tag_min_count: int = 2):
        self.path = path
        self.item_side_features = item_side_features
        self.tag_min_count = tag_min_count

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
        raw = RawInteractions(interactions=interactions, items=items, name=f"movielens:{root.name}")
        return with_timestamps_in_seconds(raw)

    def side_features(self) -> RawSideFeatures | None:
        """``decade`` (categorical) and ``tags`` (multi-valued) per movie, when ``item_side_features``."""
        if not self.item_side_features:
            return None
        from lightning_retrieval.data.features import RawSideFeatures, SideFeatureSpec

        root = Path(self.path) if self.path else embedded_movielens_path()
        movies = _read_table(root / "movies.csv")
        tags = _read_table(root / "tags.csv")
        require_columns(movies, ["movieId", "title"], str(root / "movies.csv"))
        require_columns(tags, ["userId", "movieId", "tag", "timestamp"], str(root / "tags.csv"))
        year = pd.to_numeric(movies["title"].astype(str).str.extract(r"\((\d{4})\)\s*$")[0])
        decade = ((year // 10 * 10).astype("Int64").astype(str) + "s").where(year.notna())  # "1990s"
        events = pd.DataFrame(
            {
                "item_id": tags["movieId"],
                "user_id": tags["userId"],
                "timestamp": tags["timestamp"].astype(np.float64),
                "value": tags["tag"].astype(str).str.strip().str.lower(),
            }
        )
        items = pd.DataFrame({"item_id": movies["movieId"], "decade": decade})
        specs = [SideFeatureSpec("decade"), SideFeatureSpec("tags", multi_valued=True, min_count=self.tag_min_count)]
        return RawSideFeatures(items=items, item_specs=specs, item_events={"tags": events})

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
        item_categorical_columns / user_categorical_columns: sparse side features, one value per row (e.g.
            language, age bucket): each gets its own embedding table and tower field; unknown and missing values
            share the reserved id 0 (``lightning_retrieval.data.features``).
        item_multi_valued_columns / user_multi_valued_columns: side features with several values per row (a list
            column, or text joined by ``topic_separator``), pooled as a bag.
        hash_buckets: ``{column: buckets}`` for side-feature columns to hash instead of a vocabulary (huge
            cardinalities; the data report gives the collision rate).
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
        item_categorical_columns: list[str] | None = None,
        user_categorical_columns: list[str] | None = None,
        item_multi_valued_columns: list[str] | None = None,
        user_multi_valued_columns: list[str] | None = None,
        hash_buckets: dict[str, int] | None = None,
    ):
        self.side_columns = {
            ("items", False): list(item_categorical_columns or []),
            ("users", False): list(user_categorical_columns or []),
            ("items", True): list(item_multi_valued_columns or []),
            ("users", True): list(user_multi_valued_columns or []),
        }
        self.hash_buckets = dict(hash_buckets or {})
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
        return with_timestamps_in_seconds(
            RawInteractions(interactions=interactions, items=items, users=users, name=path.stem)
        )

    def side_features(self) -> RawSideFeatures | None:
        """The configured categorical / multi-valued columns of the users and items files."""
        if not any(self.side_columns.values()):
            return None
        from lightning_retrieval.data.features import RawSideFeatures, SideFeatureSpec

        named = [c for cols in self.side_columns.values() for c in cols]
        unknown = sorted(set(self.hash_buckets) - set(named))
        if unknown:
            raise DataValidationError(f"hash_buckets names columns {unknown} that are not side-feature columns {named}")
        tables, specs = {}, {"items": [], "users": []}
        files = {"items": (self.items_path, self.item_column), "users": (self.users_path, self.user_column)}
        for table, (path, id_column) in files.items():
            columns = self.side_columns[(table, False)] + self.side_columns[(table, True)]
            if not columns:
                continue
            if not path:
                raise DataValidationError(f"{table} side-feature columns {columns} need {table}_path")
            frame = _read_table(Path(path))
            require_columns(frame, [id_column, *columns], str(path))
            tables[table] = frame[[id_column, *columns]].rename(columns={id_column: table[:-1] + "_id"})
            specs[table] = [
                SideFeatureSpec(c, multi, self.topic_separator, hash_buckets=self.hash_buckets.get(c))
                for multi in (False, True)
                for c in self.side_columns[(table, multi)]
            ]
        return RawSideFeatures(tables.get("users"), tables.get("items"), specs["users"], specs["items"])

    def describe(self) -> str:
        return f"interactions file {self.interactions_path}"
