"""Sparse side features: categorical and multi-valued user/item columns as ids of their own embedding tables.

A column becomes one feature. A categorical column gives one id per row; a multi-valued column (a list column, or
text joined by a separator, e.g. tags) gives a bag of ids, mean-pooled by its table. Id 0 of every table is
reserved for unknown and missing values: a value outside the vocabulary, NaN, an empty string or an empty list all
map to it (the row keeps a one-id bag), and the data report counts them. Nothing is an error and nothing is dropped.

Vocabularies are built from the *training rows* (users / items with a training interaction), so a value seen only
in validation or test maps to the reserved id, as it would in serving. A very large cardinality can use
``hash_buckets`` instead: id ``1 + stable_hash(text) % buckets``, with pandas' SipHash under a fixed key (the same
in every process, unlike Python's salted ``hash()``); the report gives the share of distinct values that share a
bucket with another value (the collision rate).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from lightning_retrieval.arrays import CSR
from lightning_retrieval.data.preparation import TEST, TRAIN, VAL, PreparedData
from lightning_retrieval.data.schema import DataValidationError
from lightning_retrieval.errors import ConfigError

UNKNOWN = 0  # id of unknown and missing values in every side-feature table


@dataclass(frozen=True)
class SideFeatureSpec:
    """How one column of the users or items table becomes a feature.

    Args:
        column: the column's name in its table.
        multi_valued: each row holds several values (a list, or text joined by ``separator``), pooled as a bag.
        separator: separator of a multi-valued text column.
        hash_buckets: hash values into this many buckets instead of building a vocabulary (huge cardinalities).
        min_count: vocabulary values need at least this many training occurrences; rarer ones map to id 0.
        name: feature name (default: the column): letters, digits and underscores.
    """

    column: str
    multi_valued: bool = False
    separator: str = "|"
    hash_buckets: int | None = None
    min_count: int = 1
    name: str | None = None

    def __post_init__(self):
        where = f"side feature column {self.column!r}"
        if not self.feature_name.isidentifier():
            raise ConfigError(f"{where}: feature name {self.feature_name!r} must be letters, digits and underscores")
        if self.hash_buckets is not None and (isinstance(self.hash_buckets, bool) or int(self.hash_buckets) < 1):
            raise ConfigError(f"{where}: hash_buckets must be a positive integer or None, got {self.hash_buckets!r}")
        if isinstance(self.min_count, bool) or int(self.min_count) < 1:
            raise ConfigError(f"{where}: min_count must be a positive integer, got {self.min_count!r}")
        if self.multi_valued and not self.separator:
            raise ConfigError(f"{where}: a multi-valued column needs a non-empty separator")

    @property
    def feature_name(self) -> str:
        return self.name or self.column

    @property
    def kind(self) -> str:
        return "multi_valued" if self.multi_valued else "categorical"


@dataclass
class RawSideFeatures:
    """Side-feature columns a source offers: tables keyed by the original ``user_id`` / ``item_id`` and the specs
    of the columns to encode (returned by ``InteractionSource.side_features()``).

    ``item_events`` holds multi-valued item columns that users *applied* at known times (e.g. MovieLens tags):
    ``{column: events}`` with one row per ``(item_id, user_id, timestamp [s], value)``. Only the events in the
    training part of the split become the column (:func:`training_time_limits`); the items table must not hold
    the column itself.
    """

    users: pd.DataFrame | None = None
    items: pd.DataFrame | None = None
    user_specs: list[SideFeatureSpec] = field(default_factory=list)
    item_specs: list[SideFeatureSpec] = field(default_factory=list)
    item_events: dict[str, pd.DataFrame] = field(default_factory=dict)


@dataclass
class FeatureCoding:
    """How raw values of one feature become ids: the vocabulary (id ``v`` is ``vocabulary[v - 1]``) or the hash
    buckets of ``spec``; id 0 (:data:`UNKNOWN`) for anything else. Kept with an exported retriever so serving
    requests encode their values exactly as the training data was (:meth:`encode`)."""

    spec: SideFeatureSpec
    vocabulary: np.ndarray | None  # [V] object, sorted; None when hashed
    num_embeddings: int

    def codes(self, text: np.ndarray) -> np.ndarray:
        """``[n]`` int64 ids of ``[n]`` value texts (unknown values: ``UNKNOWN``)."""
        if self.spec.hash_buckets:
            return _hashed(text, int(self.spec.hash_buckets))
        return (pd.Index(self.vocabulary, dtype=object).get_indexer(text) + 1).astype(np.int64)  # -1 -> UNKNOWN

    def encode(self, values, table_name: str = "users") -> CSR:
        """Bags of ``R`` raw values, one per row as in the source table: a scalar, or for a multi-valued feature a
        list or text joined by the separator; None, NaN, blank text and empty lists give ``[UNKNOWN]``."""
        values = list(values)
        column = pd.Series(values, dtype=object if any(map(_is_list, values)) else None)
        rows, text = _tokens(column, self.spec, table_name)
        return _bags(rows, self.codes(text), len(values), self.num_embeddings)[0]

    def to_json(self) -> dict:
        s = self.spec
        return {
            "column": s.column,
            "multi_valued": s.multi_valued,
            "separator": s.separator,
            "hash_buckets": s.hash_buckets,
            "num_embeddings": int(self.num_embeddings),
            "vocabulary": None if self.vocabulary is None else [str(v) for v in self.vocabulary],
        }

    @classmethod
    def from_json(cls, name: str, entry: dict) -> FeatureCoding:
        spec = SideFeatureSpec(
            entry["column"], bool(entry["multi_valued"]), entry["separator"], entry["hash_buckets"], name=name
        )
        vocabulary = None if entry["vocabulary"] is None else np.asarray(entry["vocabulary"], dtype=object)
        return cls(spec, vocabulary, int(entry["num_embeddings"]))


@dataclass
class SideFeature:
    """One encoded feature: ``ids`` holds a bag per user (or item) index, values in ``[0, num_embeddings)``.

    ``vocabulary[v - 1]`` is the value of id ``v`` (None when hashed); ``report`` is the data-report entry.
    """

    name: str
    table: str
    ids: CSR
    num_embeddings: int
    vocabulary: np.ndarray | None
    report: dict = field(default_factory=dict)
    coding: FeatureCoding | None = None  # how request values are encoded (None: not encodable, e.g. rebuilt bags)

    def report_line(self) -> str:
        """One line for the data report, e.g. ``items.tags: multi-valued, vocabulary of 541 values from ...``."""
        r = self.report
        kind = r["kind"].replace("_", "-")
        if r["hash_buckets"]:
            coding = (
                f"{r['distinct_values']} distinct values hashed into {r['hash_buckets']} buckets, collision rate "
                f"{r['collision_rate']:.3f}"
            )
        else:
            coding = f"vocabulary of {r['vocabulary_size']} values from the training rows"
        column = "" if r["column"] == self.name else f" (column {r['column']})"
        events = ""
        if "events_kept" in r:
            events = (
                f"; from {r['events_kept']} events in the training part ({r['events_after_training']} later and "
                f"{r['events_of_unknown_users']} by users without interactions left out)"
            )
        return (
            f"{self.table}.{self.name}{column}: {kind}, {coding}; {r['values_per_row']:.2f} values per row; "
            f"id 0 for {r['rows_missing']} row(s) without a value and {r['values_unknown']} unknown value(s){events}"
        )


def stable_hash(values: np.ndarray) -> np.ndarray:
    """``[n]`` uint64 hashes of the text of ``values``: SipHash under pandas' fixed default key, identical in
    every process and run (no ``PYTHONHASHSEED`` salt)."""
    return pd.util.hash_array(np.asarray(values, dtype=object), categorize=True)


def _as_text(values: pd.Series) -> pd.Series:
    """Non-missing scalars as text; integral floats (an int column with NaN) lose their ``.0``."""
    if pd.api.types.is_float_dtype(values):
        finite = values.to_numpy(dtype=np.float64)
        if np.all(np.isnan(finite) | (finite == np.round(finite))):
            return pd.Series(finite.astype(np.int64).astype(str), index=values.index)
    return values.map(str)


def _is_list(value) -> bool:
    return isinstance(value, (list, tuple, np.ndarray))


def _tokens(aligned: pd.Series, spec: SideFeatureSpec, table: str) -> tuple[np.ndarray, np.ndarray]:
    """``(rows [n], text [n])``: every value of every row (rows ascending); missing values give no token."""
    is_list = aligned.map(_is_list).to_numpy(dtype=bool)
    if not spec.multi_valued:
        if is_list.any():
            example = aligned[is_list].iloc[0]
            raise DataValidationError(
                f"{table}: side feature column {spec.column!r} holds lists (e.g. {list(example)[:5]}); declare it "
                "multi-valued"
            )
        present = aligned.notna().to_numpy()
        text = _as_text(aligned[present]).str.strip()
        keep = (text != "").to_numpy()
        return np.flatnonzero(present)[keep], text.to_numpy(dtype=object)[keep]
    lists = aligned.where(pd.Series(is_list, index=aligned.index))
    scalars = aligned[~is_list & aligned.notna().to_numpy()]
    split = _as_text(scalars).str.split(spec.separator, regex=False)
    parts = pd.concat([lists.dropna(), split]).explode().dropna()
    text = parts.map(str).str.strip()
    keep = (text != "").to_numpy()
    rows = parts.index.to_numpy()[keep]
    order = np.argsort(rows, kind="stable")
    return rows[order].astype(np.int64), text.to_numpy(dtype=object)[keep][order]


def encode_side_feature(
    table: pd.DataFrame,
    id_column: str,
    ids: np.ndarray,
    spec: SideFeatureSpec,
    fit_rows: np.ndarray | None = None,
    table_name: str = "items",
) -> SideFeature:
    """Encode ``spec.column`` of ``table`` for the entities ``ids`` (``[R]`` original ids, row ``r`` = index ``r``).

    Args:
        table: one row per entity, with ``id_column``; entities absent from it get id 0 (counted as missing).
        fit_rows: ``[R]`` bool, the entities whose values build the vocabulary (default: all).
    Returns:
        the feature, ``ids`` a CSR with ``R`` rows of distinct ids, every row non-empty.
    """
    if spec.column not in table.columns:
        raise DataValidationError(
            f"{table_name}: side feature column {spec.column!r} not found; available columns: {list(table.columns)}"
        )
    if id_column not in table.columns:
        raise DataValidationError(f"{table_name}: missing id column {id_column!r} for side feature {spec.column!r}")
    duplicated = table[id_column].duplicated().to_numpy()
    if duplicated.any():
        raise DataValidationError(
            f"{table_name}: side feature column {spec.column!r}: duplicated {id_column} values "
            f"{table[id_column][duplicated].head(3).tolist()}"
        )
    num_rows = len(ids)
    fit_rows = np.ones(num_rows, dtype=bool) if fit_rows is None else np.asarray(fit_rows, dtype=bool)
    if fit_rows.shape != (num_rows,):
        raise ValueError(f"fit_rows must be [{num_rows}] bool, got shape {fit_rows.shape}")
    in_table = pd.Index(table[id_column]).get_indexer(ids) >= 0
    if len(table) and len(ids) and not in_table.any():
        raise DataValidationError(
            f"{table_name}: side feature column {spec.column!r}: none of the {len(ids)} ids is in the table's "
            f"{id_column} column (dtype {table[id_column].dtype}, ids {np.asarray(ids).dtype}, e.g. {list(ids[:3])})"
        )
    aligned = table.set_index(id_column)[spec.column].reindex(ids).reset_index(drop=True)
    rows, text = _tokens(aligned, spec, table_name)

    report: dict = {"table": table_name, "column": spec.column, "kind": spec.kind, "hash_buckets": spec.hash_buckets}
    if spec.hash_buckets:
        buckets = int(spec.hash_buckets)
        distinct_codes = _hashed(pd.unique(text), buckets)
        shared = np.bincount(distinct_codes, minlength=buckets + 1)[distinct_codes] > 1
        report.update(
            distinct_values=int(len(distinct_codes)),
            buckets_used=int(len(np.unique(distinct_codes))),
            collision_rate=float(shared.mean()) if len(shared) else 0.0,
            values_unknown=0,
        )
        coding = FeatureCoding(spec, None, buckets + 1)
    else:
        counts = pd.Series(text[fit_rows[rows]], dtype=object).value_counts()
        vocabulary = np.sort(counts.index[counts.to_numpy() >= spec.min_count].to_numpy(dtype=object))
        coding = FeatureCoding(spec, vocabulary, len(vocabulary) + 1)
    codes = coding.codes(text)
    if not spec.hash_buckets:
        report.update(vocabulary_size=int(len(coding.vocabulary)), values_unknown=int((codes == UNKNOWN).sum()))
    bags, missing = _bags(rows, codes, num_rows, coding.num_embeddings)
    report.update(
        rows_missing=int(missing),
        rows_not_in_table=int((~in_table).sum()),
        values_merged=int(len(rows) + missing - len(bags.values)),  # repeats of a value in a bag, unknowns pooled
        values_per_row=float(len(bags.values) / max(num_rows, 1)),
        num_embeddings=int(coding.num_embeddings),
    )
    return SideFeature(spec.feature_name, table_name, bags, coding.num_embeddings, coding.vocabulary, report, coding)


def _hashed(text: np.ndarray, buckets: int) -> np.ndarray:
    """``[n]`` int64 ids ``1 + stable_hash(text) % buckets``."""
    return (stable_hash(text) % np.uint64(buckets)).astype(np.int64) + 1


def _bags(rows: np.ndarray, codes: np.ndarray, num_rows: int, num_embeddings: int) -> tuple[CSR, int]:
    """``(bags, rows without a value)``: the distinct ``codes [n]`` of each row (``rows [n]``); a row without any
    gets the one-id bag ``[UNKNOWN]``."""
    has_value = np.zeros(num_rows, dtype=bool)
    has_value[rows] = True
    missing = np.flatnonzero(~has_value)
    rows = np.concatenate([rows, missing])
    codes = np.concatenate([np.asarray(codes, dtype=np.int64), np.full(len(missing), UNKNOWN, dtype=np.int64)])
    return CSR.from_pairs_unique(rows, codes, num_rows, num_embeddings), len(missing)


def encode_side_features(
    table: pd.DataFrame | None,
    id_column: str,
    ids: np.ndarray,
    specs: list[SideFeatureSpec],
    fit_rows: np.ndarray | None = None,
    table_name: str = "items",
) -> dict[str, SideFeature]:
    """:func:`encode_side_feature` for each spec, by feature name (in the order of ``specs``)."""
    if not specs:
        return {}
    if table is None:
        columns = [s.column for s in specs]
        raise DataValidationError(f"side feature columns {columns} need a {table_name} table; none was given")
    names = [s.feature_name for s in specs]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(f"{table_name}: side feature names {repeated} are given more than once; set `name`")
    return {s.feature_name: encode_side_feature(table, id_column, ids, s, fit_rows, table_name) for s in specs}


@dataclass
class SideFeatures:
    """Encoded side features by name, their rows aligned to the prepared user / item indices."""

    users: dict[str, SideFeature] = field(default_factory=dict)
    items: dict[str, SideFeature] = field(default_factory=dict)

    def table_sizes(self) -> dict[str, dict[str, int]]:
        """Feature-spec entries for the model: ``{"user_side_features": {name: rows}, "item_side_features": ...}``."""
        return {
            "user_side_features": {n: f.num_embeddings for n, f in self.users.items()},
            "item_side_features": {n: f.num_embeddings for n, f in self.items.items()},
        }

    def report_lines(self) -> list[str]:
        return [f.report_line() for f in (*self.users.values(), *self.items.values())]


def training_time_limits(data: PreparedData) -> np.ndarray:
    """``[U]`` float64: an event of user ``u`` (e.g. a tag applied) at time ``t`` is training data iff
    ``t < limits[u]``, the same line the split draws through ``u``'s interactions.

    - ``leave_last_out`` and ``users``: the time of ``u``'s first validation / test interaction; ``inf`` for a user
      without one (every interaction of such a user is training or history input). This is per user, like the
      split itself: another user's training part may run past ``u``'s targets, exactly as their interactions do.
      A single item-level cut (the earliest target time of anyone) would be stricter but empty in practice: on
      the embedded MovieLens the earliest target is from 1996 and the first tag from 2006.
    - ``global_time``: the validation cut, the same for every user (the evaluation window is global: an event
      after the cut by a user without targets would still come from it).

    The comparison is strict: an event at the very second of the user's first target is left out.
    """
    limits = np.full(data.num_users, np.inf)
    cuts = data.report.get("time_cuts")
    if data.report.get("split") == "global_time" and cuts is not None:
        limits[:] = float(cuts["validation"])
        return limits
    held_out = (data.split == VAL) | (data.split == TEST)
    np.minimum.at(limits, data.user[held_out], data.timestamp[held_out])
    return limits


def events_in_training(events: pd.DataFrame, data: PreparedData, column: str) -> tuple[pd.Series, dict]:
    """The distinct values of each item among ``events`` (``item_id``, ``user_id``, ``timestamp`` [s], ``value``)
    in the training part (:func:`training_time_limits`), as a Series of sorted lists by ``item_id``, and the
    counts for the data report. Events by users the prepared data does not know cannot be placed relative to
    the split and are left out (counted)."""
    missing = [c for c in ("item_id", "user_id", "timestamp", "value") if c not in events.columns]
    if missing:
        raise DataValidationError(f"items: timed side feature {column!r}: events lack column(s) {missing}")
    if not pd.api.types.is_numeric_dtype(events["timestamp"]):
        raise DataValidationError(f"items: timed side feature {column!r}: timestamps must be numeric seconds")
    rows = pd.Index(data.user_ids).get_indexer(events["user_id"].to_numpy())
    known = rows >= 0
    limits = training_time_limits(data)
    times = events["timestamp"].to_numpy(dtype=np.float64)
    keep = known & (times < limits[np.where(known, rows, 0)])
    kept = events.loc[keep, ["item_id", "value"]].drop_duplicates()
    values = kept.sort_values(["item_id", "value"]).groupby("item_id")["value"].agg(list)
    report = {
        "events_kept": int(keep.sum()),
        "events_after_training": int((known & ~keep).sum()),
        "events_of_unknown_users": int((~known).sum()),
    }
    return values, report


def prepare_side_features(raw: RawSideFeatures | None, data: PreparedData) -> SideFeatures:
    """Encode a source's side features for the prepared ids; vocabularies come from the users / items with a
    training interaction, timed item columns (``raw.item_events``) from their events in the training part."""
    if raw is None:
        return SideFeatures()
    train = data.split == TRAIN
    train_users = np.bincount(data.user[train], minlength=data.num_users) > 0
    train_items = np.bincount(data.item[train], minlength=data.num_items) > 0
    items, event_reports = raw.items, {}
    if raw.item_events:
        items = items.copy() if items is not None else pd.DataFrame({"item_id": data.item_ids})
        for column, events in raw.item_events.items():
            if column in items.columns:
                raise DataValidationError(f"items: column {column!r} is given both as a column and as timed events")
            values, event_reports[column] = events_in_training(events, data, column)
            items[column] = items["item_id"].map(values)  # items without a training-time value: NaN -> id 0
    features = SideFeatures(
        users=encode_side_features(raw.users, "user_id", data.user_ids, raw.user_specs, train_users, "users"),
        items=encode_side_features(items, "item_id", data.item_ids, raw.item_specs, train_items, "items"),
    )
    for feature in features.items.values():
        feature.report.update(event_reports.get(feature.report["column"], {}))
    return features


def batch_key(prefix: str, name: str) -> str:
    """Batch key of feature ``name``'s ids for ``prefix`` (``user``, ``item``, ``neg_item``); ``+ "_lengths"``
    is the key of its bag lengths."""
    return f"{prefix}_feature_{name}"


class SideFeatureBags:
    """Gathers the bags of a set of features for a batch of user (or item) indices, as flat tensors."""

    def __init__(self, features: dict[str, SideFeature]):
        self.names = list(features)
        self.offsets = {n: torch.from_numpy(f.ids.offsets) for n, f in features.items()}
        self.values = {n: torch.from_numpy(f.ids.values) for n, f in features.items()}

    def __call__(self, rows: torch.Tensor, prefix: str) -> dict[str, torch.Tensor]:
        """``{batch_key(prefix, name): values [nnz], batch_key(prefix, name) + "_lengths": [B]}`` per feature."""
        out = {}
        for name in self.names:
            values, lengths = gather_bags(self.offsets[name], self.values[name], rows)
            out[batch_key(prefix, name)] = values
            out[batch_key(prefix, name) + "_lengths"] = lengths
        return out


def gather_bags(offsets: torch.Tensor, values: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The CSR rows ``rows [B]`` flattened: ``(values [nnz], lengths [B])``."""
    starts = offsets[rows]
    lengths = offsets[rows + 1] - starts
    gather = torch.repeat_interleave(starts - torch.cumsum(lengths, 0) + lengths, lengths)
    return values[gather + torch.arange(int(lengths.sum()))], lengths
