"""``Retriever``: a loaded retriever folder that answers batches of users with original item ids and scores.

Search is the evaluation's own code: :meth:`RetrievalEvaluator.retrieve_queries` (seen-item exclusion, one search
per valid query, the configured merger for several queries per user) and, with topics,
:func:`~lightning_retrieval.retrieval.filtering.filtered_retrieve` with the configured filter mode (from the
config's ``conditional_evaluation`` callback; ``prefilter`` when it has none), merged per user by the same merger.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from lightning_retrieval.data.features import FeatureCoding
from lightning_retrieval.data.preparation import CSR, take_rows
from lightning_retrieval.data.schema import DataValidationError
from lightning_retrieval.registry import resolve
from lightning_retrieval.retrieval.evaluator import RetrievalEvaluator
from lightning_retrieval.retrieval.filtering import FILTER_MODES, TopicFilter, filtered_retrieve
from lightning_retrieval.retrieval.merging import ResultMerger
from lightning_retrieval.serving.index_io import load_index
from lightning_retrieval.serving.manifest import (
    ITEMS_FILE,
    USERS_FILE,
    ArtefactError,
    ServingRequestError,
    read_manifest,
)
from lightning_retrieval.serving.user_side import (
    ItemInputs,
    UserSide,
    load_user_model,
    reads_history_items,
    user_table_key,
)


@dataclass
class Recommendations:
    """Top-k per user, best first. ``item_ids [B, k]`` original ids; ``scores [B, k]`` inner products;
    ``found [B, k]`` False where fewer than k items qualified (a topic with few items, or a user with no valid
    query): there ``scores`` is -inf and ``item_ids`` holds -1 (numeric ids) or None. ``anonymous [B]`` marks the
    users served as the anonymous user."""

    item_ids: np.ndarray
    scores: np.ndarray
    found: np.ndarray
    item_rows: np.ndarray  # [B, k] rows of items.parquet (-1 where not found)
    anonymous: np.ndarray  # [B] served as the anonymous user (no user_id, or one unknown to the model)


def _read_parquet(path: Path, columns: list[str]) -> pd.DataFrame:
    if not path.is_file():
        raise ArtefactError(f"{path} is missing")
    try:
        table = pq.read_table(path)
    except Exception as err:  # pyarrow raises several types for a damaged file
        raise ArtefactError(f"{path} is not a readable Parquet file: {err}") from err
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise ArtefactError(f"{path} lacks column(s) {missing}; has {table.column_names}")
    return table


def _dense_column(table: pa.Table, column: str, rows: int) -> np.ndarray:
    """A list<float32> column of ``rows`` equally long rows -> ``[rows, F]`` float32."""
    values = table.column(column).combine_chunks()
    width = len(values[0]) if len(values) else 0
    return np.asarray(values.flatten().to_numpy(zero_copy_only=False), dtype=np.float32).reshape(rows, width)


def _bags_column(table: pa.Table, column: str) -> CSR:
    """A list<int64> column -> CSR of its id bags."""
    bags = table.column(column).combine_chunks()
    offsets = np.asarray(bags.offsets, dtype=np.int64)
    return CSR(offsets - offsets[0], bags.flatten().to_numpy(zero_copy_only=False).astype(np.int64))


def _side_columns(table: pa.Table, sizes: dict, path: Path, field: str) -> dict[str, tuple[CSR, int]]:
    """``{name: (id bags, table rows)}`` from the ``feature_<name>`` columns the manifest ``field`` names."""
    out = {}
    for name, size in (sizes or {}).items():
        column = f"feature_{name}"
        if column not in table.column_names:
            raise ArtefactError(f"{path} lacks column {column!r} (manifest {field!r})")
        out[name] = (_bags_column(table, column), int(size))
    return out


def _names_to_csr(lists, names: pd.Index, what: str, error: type[Exception] = ArtefactError) -> CSR:
    """Lists of topic names (Python lists, or a pyarrow list column) -> CSR of topic indices; an unknown name is
    an error listing the known ones."""
    if isinstance(lists, (pa.ListArray, pa.LargeListArray)):
        offsets = np.asarray(lists.offsets, dtype=np.int64)
        offsets = offsets - offsets[0]
        flat = lists.flatten().to_numpy(zero_copy_only=False)
    else:
        lengths = np.fromiter((0 if v is None else len(v) for v in lists), dtype=np.int64, count=len(lists))
        offsets = np.zeros(len(lists) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        flat = np.asarray([t for v in lists if v is not None for t in v], dtype=object)
    codes = names.get_indexer(flat) if len(flat) else np.zeros(0, dtype=np.int64)
    if (codes < 0).any():
        unknown = sorted({str(t) for t in flat[codes < 0]})[:5]
        raise error(f"{what}: unknown topic(s) {unknown}; known topics: {list(names)[:30]}")
    return CSR(offsets, codes.astype(np.int64))


class Retriever:
    """A loaded retriever folder (see ``lightning_retrieval.serving``). Build it with :meth:`load`."""

    def __init__(self, folder: Path, manifest: dict, use_gpu: bool = False):
        self.folder, self.manifest = folder, manifest
        items = _read_parquet(folder / ITEMS_FILE, ["item_id", "vector", "topics"])
        self.item_ids = items.column("item_id").to_numpy()
        vectors = items.column("vector").combine_chunks()
        dim = manifest["embedding_dim"]
        self.item_vectors = np.asarray(vectors.flatten().to_numpy(zero_copy_only=False), dtype=np.float32)
        if self.item_vectors.size != len(self.item_ids) * dim:
            raise ArtefactError(f"{folder / ITEMS_FILE}: vectors are not {dim} wide (manifest 'embedding_dim')")
        self.item_vectors = self.item_vectors.reshape(len(self.item_ids), dim)
        if len(self.item_ids) != manifest["catalogue_size"]:
            raise ArtefactError(
                f"{folder / ITEMS_FILE} has {len(self.item_ids)} items, manifest 'catalogue_size' says "
                f"{manifest['catalogue_size']}"
            )
        self.topic_names = pd.Index(manifest["topic_names"])
        self.item_topics = _names_to_csr(
            items.column("topics").combine_chunks(), self.topic_names, str(folder / ITEMS_FILE)
        )
        self.item_index = pd.Index(self.item_ids)
        self.index = load_index(folder, manifest["index"], self.item_vectors, use_gpu)
        if self.index.size != manifest["corpus_size"]:
            raise ArtefactError(
                f"the index holds {self.index.size} items, manifest 'corpus_size' says {manifest['corpus_size']}"
            )
        self.merger: ResultMerger = resolve("mergers", manifest["merger"]["type"])(**manifest["merger"]["init_args"])
        self.topic_filter_config = dict(manifest["topic_filter"])
        if self.topic_filter_config.get("mode") not in FILTER_MODES:
            raise ArtefactError(f"manifest field 'topic_filter.mode' must be one of {FILTER_MODES}")
        self.topic_filter = TopicFilter(self.item_topics, len(self.topic_names))
        users = _read_parquet(folder / USERS_FILE, ["user_id", "dense", "followed_topics"])
        self.user_ids = users.column("user_id").to_numpy()
        self.user_index = pd.Index(self.user_ids)
        user_dense = _dense_column(users, "dense", len(self.user_ids))
        followed = users.column("followed_topics").combine_chunks()
        side = _side_columns(users, manifest.get("user_side_features"), folder / USERS_FILE, "user_side_features")
        history_items = None  # folders written before history_space: items was served have no such field
        if manifest.get("history_item_features", False):
            if "dense" not in items.column_names:
                raise ArtefactError(f"{folder / ITEMS_FILE} lacks column 'dense' (manifest 'history_item_features')")
            history_items = ItemInputs(
                _dense_column(items, "dense", len(self.item_ids)),
                _side_columns(items, manifest.get("item_side_features"), folder / ITEMS_FILE, "item_side_features"),
            )
        self.side_coding = {
            name: FeatureCoding.from_json(name, entry)
            for name, entry in (manifest.get("user_side_feature_coding") or {}).items()
        }
        model = load_user_model(folder)
        if reads_history_items(model) and history_items is None:
            raise ArtefactError(
                f"{folder}: the model embeds the history with its item tower (history_space: items) but the folder "
                "holds no item inputs for it (manifest 'history_item_features'; exported before such models were "
                "served): export it again"
            )
        self.has_user_table = user_table_key(model.state_dict()) is not None
        self.user_side = UserSide(
            model,
            manifest["max_history"],
            self.item_topics,
            len(self.topic_names),
            user_dense,
            _names_to_csr(followed, self.topic_names, str(folder / USERS_FILE)),
            bool(manifest.get("has_followed_topics", False)),
            len(self.user_ids) if self.has_user_table else None,
            side,
            history_items,
        )
        self.evaluator = RetrievalEvaluator(ks=[1], metrics=[], batch_size=1024)

    @classmethod
    def load(cls, folder: str | Path, use_gpu: bool = False) -> Retriever:
        """Check the manifest, then load the items, the index and the user side (CPU unless ``use_gpu``)."""
        folder = Path(folder)
        return cls(folder, read_manifest(folder), use_gpu)

    # ---- id mapping ----
    def item_rows(self, ids) -> np.ndarray:
        """Rows of original item ids; unknown ids are an error that names them."""
        ids = np.asarray(ids, dtype=self.item_ids.dtype) if len(ids) else np.zeros(0, dtype=self.item_ids.dtype)
        rows = self.item_index.get_indexer(ids)
        if (rows < 0).any():
            unknown = pd.unique(ids[rows < 0])[:10].tolist()
            count = int((rows < 0).sum())
            raise ServingRequestError(f"unknown item id(s) {unknown} ({count} in all): not in the exported catalogue")
        return rows.astype(np.int64)

    def user_rows(self, ids) -> np.ndarray:
        """User-table rows of original user ids; None (or an id unknown to the model) -> the anonymous user."""
        anonymous = len(self.user_ids)
        if not self.has_user_table:
            return np.zeros(len(ids), dtype=np.int64)
        known = np.array([i is not None for i in ids], dtype=bool)
        rows = np.full(len(ids), anonymous, dtype=np.int64)
        if known.any():
            given = np.asarray([i for i in ids if i is not None], dtype=self.user_ids.dtype)
            found = self.user_index.get_indexer(given)
            rows[known] = np.where(found >= 0, found, anonymous)
        return rows

    def parse_item_ids(self, texts: list[str]) -> list:
        """Command-line strings -> ids of the catalogue's type."""
        return [t.strip() for t in texts] if self.item_ids.dtype == object else [int(t) for t in texts]

    # ---- serving ----
    def user_batch(self, histories, user_features: dict | None = None) -> dict:
        """The model batch for ``histories`` (lists of original item ids, oldest first) and ``user_features``:
        ``user_id`` (original ids, None = anonymous), ``user_dense [B, Fu]`` (standardised as in training),
        ``followed_topics`` (lists of topic names), and one entry per user side feature of the model (its name
        in :attr:`user_side_features`): ``B`` raw values as in the training table (a value; for a multi-valued
        feature a list or joined text; None = missing), encoded with the training vocabulary or hashing, so an
        unseen value gets the reserved unknown id as in training. A side feature left out keeps the stored
        values of known users (the unknown id for the others)."""
        user_features = dict(user_features or {})
        allowed = ["user_id", "user_dense", "followed_topics", *self.user_side.side_features]
        unknown = set(user_features) - set(allowed)
        if unknown:
            raise ServingRequestError(f"unknown user_features {sorted(unknown)}; use {', '.join(allowed)}")
        b = len(histories)
        for name, values in user_features.items():
            if len(values) != b:
                raise ServingRequestError(f"user_features[{name!r}] has {len(values)} rows for {b} histories")
        rows = [self.item_rows(list(h)) for h in histories]
        users = self.user_rows(list(user_features.get("user_id", [None] * b)))
        dense = user_features.get("user_dense")
        if dense is not None:
            dense = np.asarray(dense, dtype=np.float32).reshape(b, -1)
            if dense.shape[1] != self.user_side.user_dense.shape[1]:
                raise ServingRequestError(
                    f"user_dense must be [{b}, {self.user_side.user_dense.shape[1]}], got {dense.shape}"
                )
        followed = user_features.get("followed_topics")
        if followed is not None:
            followed = _names_to_csr(followed, self.topic_names, "followed_topics", ServingRequestError)
        side = {}
        for name in set(user_features) & set(self.user_side.side_features):
            if name not in self.side_coding:
                raise ServingRequestError(
                    f"user_features[{name!r}]: this retriever folder has no coding for the feature (exported "
                    "before requests could carry side features); export it again"
                )
            try:
                side[name] = self.side_coding[name].encode(user_features[name])
            except DataValidationError as err:
                raise ServingRequestError(f"user_features[{name!r}]: {err}") from err
        return self.user_side.batch(rows, users, dense, followed, side), rows

    @property
    def user_side_features(self) -> list[str]:
        """Names of the model's user side features (keys a request's ``user_features`` may give)."""
        return list(self.user_side.side_features)

    def recommend(
        self,
        histories,
        k: int = 10,
        topics=None,
        exclude_seen: bool = True,
        user_features: dict | None = None,
        topic_filter: str | None = None,
    ) -> Recommendations:
        """Top-``k`` items for each of ``B`` users.

        Args:
            histories: ``B`` sequences of original item ids, oldest first (the user's whole history: its length
                sets the serving rule, its last ``max_history`` items are the model's input).
            k: list length.
            topics: None, one topic name for every user, or ``B`` topic names: the model's topic queries (if it
                has topic conditions) searched with the configured topic filter (``topic_filter`` overrides it).
            exclude_seen: leave out each user's history items (as the evaluation does).
            user_features: see :meth:`user_batch`.
        """
        if k < 1:
            raise ServingRequestError(f"k must be >= 1, got {k}")
        b = len(histories)
        batch, rows = self.user_batch(histories, user_features)
        num_items = len(self.item_ids)
        if exclude_seen:
            user_of = np.repeat(np.arange(b), [len(r) for r in rows])
            flat = np.concatenate(rows) if b else np.zeros(0, dtype=np.int64)
            exclude = CSR.from_pairs_unique(user_of, flat, b, num_items)
        else:
            exclude = CSR(np.zeros(b + 1, dtype=np.int64), np.zeros(0, dtype=np.int64))
        if topics is None:
            vectors, valid, weights = self.user_side.queries(batch)
            items, scores, _ = self.evaluator.retrieve_queries(
                self.index, vectors, valid, exclude, k, self.merger, weights
            )
        else:
            items, scores = self._topic_search(batch, topics, b, exclude, k, topic_filter)
        found = items >= 0
        ids = self.item_ids[np.maximum(items, 0)]
        if ids.dtype == object:
            ids = np.where(found, ids, None)
        else:
            ids = np.where(found, ids, -1)
        user_ids = list((user_features or {}).get("user_id", [None] * b))
        anonymous = self.user_rows(user_ids) == len(self.user_ids) if self.has_user_table else np.ones(b, dtype=bool)
        return Recommendations(ids, np.where(found, scores, -np.inf).astype(np.float32), found, items, anonymous)

    def _topic_search(self, batch, topics, b: int, exclude: CSR, k: int, mode: str | None):
        names = [topics] * b if isinstance(topics, str) else list(topics)
        if len(names) != b or any(t is None for t in names):
            raise ServingRequestError(f"topics must be one topic name, or one per user ({b}), got {topics!r}")
        topic_ids = _names_to_csr([[t] for t in names], self.topic_names, "topics", ServingRequestError).values
        cfg = self.topic_filter_config
        mode = mode or cfg["mode"]
        if mode not in FILTER_MODES:
            raise ServingRequestError(f"unknown topic filter {mode!r}; choose one of {FILTER_MODES}")
        vectors, valid, weights = self.user_side.queries(batch, topic_ids)
        users, slots = np.nonzero(valid)
        res = filtered_retrieve(
            self.index,
            vectors[users, slots],
            topic_ids[users],
            self.topic_filter,
            take_rows(exclude, users),
            k,
            mode,
            cfg.get("overfetch", 4),
            cfg.get("streaming_step", 100),
            cfg.get("streaming_budget"),
        )
        n_slots = valid.shape[1]
        grid_items = np.full((b, n_slots, k), -1, dtype=np.int64)
        grid_scores = np.full((b, n_slots, k), -np.inf, dtype=np.float32)
        grid_items[users, slots], grid_scores[users, slots] = res.items, res.scores
        extra = {"weights": weights} if getattr(self.merger, "uses_weights", False) else {}
        return self.merger.merge(grid_items, grid_scores, valid, k, **extra)

    def describe(self) -> dict:
        m = self.manifest
        return {
            "folder": str(self.folder),
            "model": m["model"],
            "index": {**m["index"], **self.index.describe()},
            "corpus_size": m["corpus_size"],
            "serving_rule": m["serving_rule"],
            "merger": m["merger"]["type"],
            "topic_filter": m["topic_filter"],
        }
