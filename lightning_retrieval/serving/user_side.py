"""The user side of a retriever folder: a user's history (original item ids) and features -> query vectors.

Stored without the training config: the model's ``{class_path, init_args}`` (``user_model.json``, rebuilt through
jsonargparse and the registry), its ``state_dict`` (``user_model.pt``, tensors only, read with
``weights_only=True``), the user table (``users.parquet``: original ids, dense features, followed topics, side
feature id bags; the side features' coding is in the manifest) and the item topics (``items.parquet``). Why
not ``torch.export`` / TorchScript: see ``NOT_EXPORTABLE``.

Requests become the same batch as in evaluation: the history window, history length, history topic counts and
user features are built by the datamodule's :class:`~lightning_retrieval.data.batches.BatchBuilder` over the
request's histories, so the model sees exactly what the evaluation fed it.

A user unknown to the model (no ``user_id``, or one outside the training data) is served as the *anonymous
user*: a row appended to the user-id table at export holding the mean of the table, zero (= mean, the features
are standardised) dense features, no followed topics and the unknown id of every side feature. A request may
send side-feature values of its own (``Retriever.user_batch``), encoded with the training coding.

Queries that embed the history with the item tower (``history_space: items``) get the history items' features
(``history_item*``, as ``data.history_item_features`` gives them in training): the folder then stores every item's
dense features and side-feature id bags next to its topics (``items.parquet``), and the model's own item tower
embeds them per request, as in evaluation.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from jsonargparse import ArgumentParser

from lightning_retrieval.checkpoints import safe_torch_load
from lightning_retrieval.data.batches import BatchBuilder
from lightning_retrieval.data.preparation import CSR, PreparedData
from lightning_retrieval.models.embeddings import IdEmbeddings
from lightning_retrieval.serving.manifest import USER_MODEL_FILE, USER_STATE_FILE, ArtefactError
from lightning_retrieval.tasks.base import RetrievalModel

# Tried on the retrieval task's user side (torch 2.13, torchrec 1.8; a wrapper taking the batch tensors and
# returning UserQueries' vectors and valid), with these errors:
NOT_EXPORTABLE = {
    "torch.export (strict=True and strict=False)": (
        "GuardOnDataDependentSymNode: Could not guard on data-dependent expression Ne(u0, 0), raised in "
        "models/embeddings.py IdEmbeddings._check_ids (`ids.numel() and int(ids.min())` on `history[mask]`, whose "
        "size depends on the data); past it, torchrec's KeyedJaggedTensor is built from data-dependent lengths"
    ),
    "torch.jit.trace": (
        "RuntimeError: RetrievalTask is not attached to a `Trainer` (jit's module_has_exports reads every attribute, "
        "including LightningModule.trainer); tracing would also freeze the example's history-mask shapes"
    ),
    "torch.jit.script": (
        "ValueError: Unknown type annotation: 'HistoryField' (query modules use Literal aliases and dataclasses; "
        "the batch is a dict and torchrec's collection takes a KeyedJaggedTensor)"
    ),
}
ANONYMOUS_USER = "mean user-id embedding, zero (mean) dense features, no followed topics"


def user_queries(model: RetrievalModel, batch: dict[str, torch.Tensor], topics: torch.Tensor | None = None):
    """``(vectors [B, K, D], valid [B, K], weights [B, K] or None)`` of the model's serving queries (``topics [B]``:
    one explicit topic per user; ``weights``: e.g. DCM's routing mass, for a merger that uses them). The one place
    that asks the model: the task's public ``embed_users`` / ``topic_queries``, both a ``UserQueries``."""
    queries = model.embed_users(batch) if topics is None else model.topic_queries(batch, topics)
    return queries.vectors, queries.valid, queries.weights


def reads_history_items(model: torch.nn.Module) -> bool:
    """True when a query module of the model embeds the history with the item tower (``history_space: items``:
    ``interests``, ``combined``), so request batches need the history items' features."""
    return any(getattr(m, "history_space", "ids") == "items" for m in model.modules())


def user_table_key(state: dict) -> str | None:
    """The state-dict key of the user-id table (None if the model has none)."""
    keys = [k for k in state if k.endswith(IdEmbeddings.state_key("user_id"))]
    if len(keys) > 1:
        raise ArtefactError(f"several user-id tables in the model: {keys}")
    return keys[0] if keys else None


def save_user_model(model: RetrievalModel, model_config: dict, folder: Path) -> dict:
    """Write ``user_model.json`` and ``user_model.pt`` (with the anonymous user appended); returns manifest
    fields."""
    if "class_path" not in model_config:
        raise ArtefactError(f"the model config needs a class_path, got keys {sorted(model_config)}")
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    spec = dict(model.feature_spec)
    key = user_table_key(state)
    if key is not None:
        table = state[key]
        state[key] = torch.cat([table, table.mean(0, keepdim=True)])
        spec["num_users"] = int(table.shape[0]) + 1
    init_args = dict(model_config.get("init_args") or {})
    init_args["feature_spec"] = spec
    if "pretrained_ids" in init_args:  # the weights are in the state dict; the export file is not needed
        init_args["pretrained_ids"] = None
    (folder / USER_MODEL_FILE).write_text(
        json.dumps({"class_path": model_config["class_path"], "init_args": init_args}, indent=2)
    )
    torch.save(state, folder / USER_STATE_FILE)
    return {"anonymous_user": ANONYMOUS_USER if key is not None else "the model has no user-id table"}


def build_model(config: dict, source: str = "model config") -> RetrievalModel:
    """A model from its ``{class_path, init_args}`` through jsonargparse (registry names and plugins resolve as
    in the CLI)."""
    from lightning_retrieval.cli import prepare_registry

    prepare_registry()
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(RetrievalModel, "model", required=True, fail_untyped=False)
    try:
        parsed = parser.parse_object({"model": config})
        return parser.instantiate_classes(parsed).model
    except Exception as err:  # jsonargparse reports bad values as several exception types
        raise ArtefactError(f"{source}: cannot rebuild the model: {str(err).splitlines()[0]}") from err


def load_user_model(folder: Path) -> RetrievalModel:
    """The exported model in eval mode on CPU."""
    path = folder / USER_MODEL_FILE
    if not path.is_file():
        raise ArtefactError(f"{path} is missing")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ArtefactError(f"{path} is not valid JSON: {err}") from err
    model = build_model(config, str(path))
    state = safe_torch_load(folder / USER_STATE_FILE, what="user model state")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ArtefactError(f"{folder / USER_STATE_FILE} must hold a state_dict (names -> tensors)")
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ArtefactError(f"{folder / USER_STATE_FILE} does not fit {config['class_path']}: {err}") from err
    return model.eval()


@dataclass
class ItemInputs:
    """The item tower's inputs besides ids and topics, for every item row: ``dense [N, Fi]`` float32 and the item
    side features ``{name: (id bags, table rows)}``."""

    dense: np.ndarray
    side_features: dict[str, tuple[CSR, int]] = field(default_factory=dict)


class UserSide:
    """Turns histories and user features into the model's batch, and the batch into query vectors.

    Args:
        model: the exported model (eval mode).
        max_history: history window L of the training data.
        item_topics: topics of every item row (CSR), num_topics: T.
        user_dense: ``[U, Fu]`` standardised dense features of the known users; user_topics: their followed topics.
        has_followed: the training data had a followed-topics column (batches then always carry
            ``followed_topics``).
        anonymous_row: user-table row of the anonymous user (None: the model has no user table).
        side_features: user side features (``data.features``): name -> (id bags of the known users, table size);
            the anonymous user gets the reserved unknown id.
        history_items: the item inputs when the queries embed the history items with the item tower (batches then
            carry ``history_item*`` features, as with ``data.history_item_features``); None otherwise.
    """

    def __init__(
        self,
        model: RetrievalModel,
        max_history: int,
        item_topics: CSR,
        num_topics: int,
        user_dense: np.ndarray,
        user_topics: CSR,
        has_followed: bool,
        anonymous_row: int | None,
        side_features: dict[str, tuple[CSR, int]] | None = None,
        history_items: ItemInputs | None = None,
    ):
        self.model, self.max_history = model, max_history
        self.history_items = history_items
        self.side_features = dict(side_features or {})  # name -> (ids per known user, table rows)
        self.item_topics, self.num_topics = item_topics, num_topics
        self.user_dense, self.user_topics, self.has_followed = user_dense, user_topics, has_followed
        self.anonymous_row = anonymous_row
        self._item_rows = np.arange(item_topics.num_rows)  # built once: requests must not cost O(items)
        self._item_dense = np.zeros((item_topics.num_rows, 0), dtype=np.float32)
        if history_items is not None:
            if len(history_items.dense) != item_topics.num_rows:
                raise ArtefactError(
                    f"item dense features have {len(history_items.dense)} rows for {item_topics.num_rows} items"
                )
            self._item_dense = np.ascontiguousarray(history_items.dense, dtype=np.float32)

    def batch(
        self,
        histories: list[np.ndarray],
        user_rows: np.ndarray,
        dense: np.ndarray | None = None,
        followed: CSR | None = None,
        side: dict[str, CSR] | None = None,
    ) -> dict[str, torch.Tensor]:
        """The evaluation batch of ``B`` users: item rows of their histories (oldest first), user-table rows
        ``[B]`` (``anonymous_row`` for unknown users), optional dense features ``[B, Fu]``, followed topics
        (CSR over the B users) and side-feature id bags (``{name: CSR over the B users}``) replacing the stored
        ones."""
        b = len(histories)
        lengths = np.fromiter((len(h) for h in histories), dtype=np.int64, count=b)
        offsets = np.zeros(b + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        # one padding interaction after the last user's: windows never reach it, indexing an empty table would fail
        items = np.concatenate([*[np.asarray(h, dtype=np.int64) for h in histories], np.zeros(1, dtype=np.int64)])
        known = user_rows != self.anonymous_row if self.anonymous_row is not None else np.ones(b, dtype=bool)
        if dense is None:
            dense = np.zeros((b, self.user_dense.shape[1]), dtype=np.float32)
            dense[known] = self.user_dense[user_rows[known]]
        if followed is None:
            followed = _rows_or_empty(self.user_topics, user_rows, known)
        request = PreparedData(
            user_ids=np.arange(b),
            item_ids=self._item_rows,
            topic_names=np.arange(self.num_topics),
            item_topics=self.item_topics,
            user_topics=followed,
            item_signature=None,
            item_dense=self._item_dense,
            user_dense=np.ascontiguousarray(dense, dtype=np.float32),
            user=np.append(np.repeat(np.arange(b), lengths), b - 1 if b else 0),
            item=items,
            timestamp=np.zeros(len(items)),
            split=np.zeros(len(items), dtype=np.int8),
            user_offsets=offsets,
            report={},
        )
        bags = self._side(user_rows, known, side or {})
        builder = BatchBuilder(
            request, self.max_history, np.ones(1, dtype=np.int64), bags, self.history_items is not None
        )
        batch = builder.user_features(torch.arange(b), torch.from_numpy(offsets[1:]))
        batch["user"] = torch.from_numpy(np.asarray(user_rows, dtype=np.int64))
        if self.has_followed and "followed_topics" not in batch:
            batch["followed_topics"] = torch.zeros(b, self.num_topics)
        return batch

    def _side(self, user_rows: np.ndarray, known: np.ndarray, given: dict[str, CSR]):
        """The request's user side features: the ``given`` bags, else the stored bags of known users and
        ``[unknown id]`` for the others; and the stored item side features when history items are embedded."""
        from lightning_retrieval.data.features import UNKNOWN, SideFeature, SideFeatures

        item_side = self.history_items.side_features if self.history_items is not None else {}
        items = {name: SideFeature(name, "items", ids, size, None) for name, (ids, size) in item_side.items()}
        users = {}
        for name, (ids, size) in self.side_features.items():
            if name in given:
                users[name] = SideFeature(name, "users", given[name], size, None)
                continue
            bags = _rows_or_empty(ids, user_rows, known)
            lengths = np.where(known, bags.lengths, 1)
            offsets = np.zeros(len(user_rows) + 1, dtype=np.int64)
            np.cumsum(lengths, out=offsets[1:])
            values = np.full(offsets[-1], UNKNOWN, dtype=np.int64)
            values[np.repeat(known, lengths)] = bags.values
            users[name] = SideFeature(name, "users", CSR(offsets, values), size, None)
        return SideFeatures(users=users, items=items)

    @torch.no_grad()
    def queries(self, batch: dict[str, torch.Tensor], topics: np.ndarray | None = None):
        """``(vectors [B, K, D] float32, valid [B, K] bool, weights [B, K] float32 or None)`` as numpy arrays."""
        device = self.model.device
        batch = {k: v.to(device) for k, v in batch.items()}
        topic_tensor = None if topics is None else torch.from_numpy(np.asarray(topics, dtype=np.int64)).to(device)
        vectors, valid, weights = user_queries(self.model, batch, topic_tensor)
        weights = None if weights is None else weights.float().cpu().numpy()
        return vectors.float().cpu().numpy(), valid.cpu().numpy().astype(bool), weights


def _rows_or_empty(csr: CSR, rows: np.ndarray, known: np.ndarray) -> CSR:
    """Rows ``rows`` of ``csr``, empty where ``known`` is False."""
    lengths = np.where(known, csr.lengths[np.where(known, rows, 0)], 0)
    offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    starts = np.repeat(csr.offsets[np.where(known, rows, 0)] - offsets[:-1], lengths)
    return CSR(offsets, csr.values[starts + np.arange(offsets[-1])])
