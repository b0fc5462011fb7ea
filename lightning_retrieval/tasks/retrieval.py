"""The retrieval task: ID tables, user and item towers, in-batch loss; *what* the user is asked is ``queries``."""

from __future__ import annotations

import torch
from lightning.pytorch.cli import OptimizerCallable
from torch import nn

from lightning_retrieval.data.features import batch_key
from lightning_retrieval.losses.sampled_softmax import RetrievalLoss, SampledSoftmaxLoss
from lightning_retrieval.models.embeddings import IdEmbeddings
from lightning_retrieval.models.interests.base import HistoryRows
from lightning_retrieval.models.pretrained import PretrainedIds
from lightning_retrieval.models.towers import FeatureCrossingTower, TowerFactory
from lightning_retrieval.queries.base import QueriesFactory, QueryPenalty, UserQueries, UserQueryModule
from lightning_retrieval.queries.single import SingleQuery
from lightning_retrieval.registry import register, retire
from lightning_retrieval.tasks.base import RetrievalModel
from lightning_retrieval.tasks.optimizers import multi_tensor_on_cpu


@register("retrieval")
class RetrievalTask(RetrievalModel):
    """Two towers over torchrec ID tables, trained with an in-batch sampled softmax; the user side is asked
    through a query module (``queries``: ``single``, ``interests``, ``topic_conditions``, ``combined``, plugins).

    User-tower fields: user-id embedding, mean of the history item embeddings (unless the query module replaces
    it), one per user side feature, the query module's condition field (an interest, a topic), projected dense
    user features. Item-tower fields: item-id embedding, mean of its topic embeddings, one per item side feature,
    projected dense item features. Each tower normalises its fields, crosses them (the tower's crossing block)
    and L2-normalises. Side features (categorical or multi-valued columns, ``feature_spec``'s
    ``user_side_features`` / ``item_side_features``) are tables of the same torchrec collection as the IDs.

    Training embeds the targets (and corpus negatives) once and scores every loss term of the query module with
    the same in-batch loss, so corpus negatives apply to every term.

    Args:
        embedding_dim: width D of every ID table and field.
        queries: query module (registry ``queries``), default ``single`` (the plain two-tower model).
        user_tower / item_tower: tower components (registry ``towers``); their ``crossing`` picks the block.
        loss: training loss (registry ``losses``), default ``sampled_softmax``.
        share_item_embeddings: history items use the item-id table (else a separate table).
        id_dropout: dropout on pooled ID embeddings.
        optimizer: optimizer factory, e.g. ``torch.optim.Adam`` with ``lr``.
        pretrained_ids: load user/item ID tables from an ``id_pretrain`` export (frozen + dropout 0.5 by
            default; refused if its training window overlaps this model's).
    """

    def __init__(
        self,
        feature_spec: dict | None = None,
        embedding_dim: int = 64,
        queries: QueriesFactory = SingleQuery,
        user_tower: TowerFactory = FeatureCrossingTower,
        item_tower: TowerFactory = FeatureCrossingTower,
        loss: RetrievalLoss | None = None,
        share_item_embeddings: bool = True,
        id_dropout: float = 0.0,
        optimizer: OptimizerCallable = torch.optim.Adam,
        pretrained_ids: PretrainedIds | None = None,
    ):
        super().__init__(feature_spec)
        self.save_hyperparameters(ignore=["loss", "queries", "user_tower", "item_tower", "optimizer", "pretrained_ids"])
        num_users, num_items, num_topics, user_dense, item_dense = self.require_spec(
            "num_users", "num_items", "num_topics", "user_dense_dim", "item_dense_dim"
        )
        self.embedding_dim = embedding_dim
        user_side = dict(self.feature_spec.get("user_side_features") or {})
        item_side = dict(self.feature_spec.get("item_side_features") or {})
        self.user_side_features, self.item_side_features = list(user_side), list(item_side)
        self.embeddings = IdEmbeddings(
            num_users,
            num_items,
            num_topics,
            embedding_dim,
            share_item_table=share_item_embeddings,
            dropout=id_dropout,
            user_side_features=user_side,
            item_side_features=item_side,
        )
        self.user_dense = nn.Linear(user_dense, embedding_dim) if user_dense else None
        self.item_dense = nn.Linear(item_dense, embedding_dim) if item_dense else None
        self.has_topics = num_topics > 0
        self.queries = queries(embedding_dim, self.feature_spec)
        if not isinstance(self.queries, UserQueryModule):
            raise TypeError(f"queries must build a UserQueryModule, got {type(self.queries).__name__}")
        self.num_user_fields = (
            1 + self.queries.keeps_history_field + len(user_side) + self.queries.num_condition_fields + bool(user_dense)
        )
        self.user_tower = user_tower(self.num_user_fields, embedding_dim)
        self.item_tower = item_tower(1 + self.has_topics + len(item_side) + bool(item_dense), embedding_dim)
        if self.user_tower.output_dim != self.item_tower.output_dim:
            raise ValueError(
                f"user and item towers must output the same width for dot-product scores, got "
                f"{self.user_tower.output_dim} and {self.item_tower.output_dim}"
            )
        self.loss = loss if loss is not None else SampledSoftmaxLoss()
        self.optimizer_factory = optimizer
        self.pretrained_ids = pretrained_ids
        self.pretrained_report: dict = {}

    def setup(self, stage: str) -> None:
        """Load pre-trained ID tables (before the optimizer is built, so frozen tables stay frozen)."""
        if self.pretrained_ids is not None and not self.pretrained_report:
            dm = self.trainer.datamodule
            self.pretrained_report = self.pretrained_ids.apply(
                self.embeddings, dm.user_ids, dm.item_ids, dm.training_window
            )

    @property
    def display_name(self) -> str:
        """``RetrievalTask(<query kind>)``, e.g. ``RetrievalTask(interests)``."""
        kind = type(self.queries)
        return f"{type(self).__name__}({kind.__dict__.get('registry_name', kind.__name__)})"

    # ---- what the query module uses (UserEncoder) ----
    def encode_users(self, batch: dict[str, torch.Tensor], conditions: torch.Tensor | None = None) -> torch.Tensor:
        """User-tower outputs ``[B, K, D_out]``: fields ``[user id, (pooled history), side features...,
        (conditions), (dense)]``.

        ``conditions`` is ``[B, K, D]`` (one field) or ``[B, K, C, D]`` (C fields), or None (K = 1, no field);
        the K tower passes run folded into the batch."""
        users = batch["user"]
        b, d = users.shape[0], self.embedding_dim
        bags = {"user": (users, torch.ones_like(users))}
        if self.queries.keeps_history_field:
            mask = batch["history_mask"]
            bags["history"] = (batch["history"][mask], mask.sum(1))
        side = self._side_bags(batch, "user", self.user_side_features)
        pooled = self.embeddings({**bags, **side}, batch_size=b)
        shared = [pooled["user"]] + ([pooled["history"]] if self.queries.keeps_history_field else [])
        shared += [pooled[key] for key in side]
        k = 1 if conditions is None else conditions.shape[1]
        fields = [f[:, None].expand(b, k, d) for f in shared]
        if conditions is not None:
            fields += list((conditions[:, :, None] if conditions.dim() == 3 else conditions).unbind(2))
        if self.user_dense is not None:
            fields.append(self.user_dense(batch["user_dense"])[:, None].expand(b, k, d))
        if len(fields) != self.num_user_fields:
            raise ValueError(
                f"{type(self.queries).__name__} gave {len(fields) - len(shared) - (self.user_dense is not None)} "
                f"condition field(s) but declares num_condition_fields = {self.queries.num_condition_fields}"
            )
        stacked = torch.stack(fields, dim=2).reshape(b * k, len(fields), d)
        return self.user_tower(stacked).view(b, k, -1)

    def history_embeddings(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """``[B, L, D]`` item-table embeddings of the history positions (zeros at padding)."""
        return self.embeddings.sequence("history", batch["history"], batch["history_mask"])

    def history_rows(self, batch: dict[str, torch.Tensor]) -> HistoryRows | None:
        """The history's distinct item-table rows (:class:`HistoryRows`; their gather equals
        :meth:`history_embeddings`), or None where the table cannot give them (sharded, ID dropout in training)."""
        out = self.embeddings.sequence_rows("history", batch["history"], batch["history_mask"])
        return None if out is None else HistoryRows(*out)

    # ---- serving ----
    def embed_users(self, batch) -> UserQueries:
        return self.queries(self, batch)

    def topic_queries(self, batch, topics: torch.Tensor) -> UserQueries:
        return self.queries.topic_queries(self, batch, topics)

    def item_fields(self, batch, prefix: str = "item") -> torch.Tensor:
        """``[N, F_item, D]``: item id, pooled topics, side features..., (dense)."""
        items = batch[prefix]
        bags = {prefix: (items, torch.ones_like(items))}
        if self.has_topics:
            bags[f"{prefix}_topics"] = (batch[f"{prefix}_topics"], batch[f"{prefix}_topic_lengths"])
        side = self._side_bags(batch, prefix, self.item_side_features)
        pooled = self.embeddings({**bags, **side}, batch_size=items.shape[0])
        fields = [pooled[prefix]]
        if self.has_topics:
            fields.append(pooled[f"{prefix}_topics"])
        fields += [pooled[key] for key in side]
        if self.item_dense is not None:
            fields.append(self.item_dense(batch[f"{prefix}_dense"]))
        return torch.stack(fields, dim=1)

    @staticmethod
    def _side_bags(batch, prefix: str, names: list[str]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """``{key: (ids [nnz], lengths [B])}`` of the side features ``names`` for ``prefix`` (in that order)."""
        keys = [batch_key(prefix, name) for name in names]
        missing = [key for key in keys if key not in batch]
        if missing:
            raise KeyError(
                f"the batch has no side-feature keys {missing}: the model was built with {prefix} side features "
                f"{names} (feature_spec); build batches with the datamodule that has them"
            )
        return {key: (batch[key], batch[f"{key}_lengths"]) for key in keys}

    def embed_items(self, batch, prefix: str = "item"):
        return self.item_tower(self.item_fields(batch, prefix))

    # ---- training ----
    def loss_terms(self, batch) -> dict[str, torch.Tensor]:
        """Each of the query module's loss terms (weighted) against the targets and corpus negatives, which are
        embedded once for all terms; its penalties (``QueryPenalty``, e.g. a routing regulariser) as they are."""
        items = self.embed_items(batch)
        negatives = self.embed_items(batch, "neg_item") if "neg_item" in batch else None
        terms = self.queries.training_losses(self, batch, items)
        if not terms:
            raise ValueError(f"{type(self.queries).__name__}.training_losses returned no loss term")
        return {t.name: t.weight * self._term_value(t, batch, items, negatives) for t in terms}

    def _term_value(self, term, batch, items, negatives) -> torch.Tensor:
        """A penalty's own value; a loss term's user vectors scored by the in-batch loss."""
        if isinstance(term, QueryPenalty):
            return term.value
        return self.in_batch_loss(term.users, batch, items, negatives)

    def compute_loss(self, batch) -> torch.Tensor:
        return sum(self.loss_terms(batch).values())

    def training_step(self, batch, batch_idx):
        terms = self.loss_terms(batch)
        loss = sum(terms.values())
        batch_size = batch["user"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size, sync_dist=True)
        if len(terms) > 1:
            for name, value in terms.items():
                self.log(f"train/loss_{name}", value, batch_size=batch_size, sync_dist=True)
        if hasattr(self.loss, "temperature"):
            self.log("train/temperature", self.loss.temperature, batch_size=batch_size)
        return loss

    def evaluation_loss(self, batch):
        return self.compute_loss(batch)

    def configure_optimizers(self):
        return multi_tensor_on_cpu(self.optimizer_factory(self.dense_parameters()))


# The tasks this one replaced: their names now fail with what to write instead.
_MOVED = "use `class_path: retrieval` with `init_args.queries: {{class_path: {queries}}}`; {note}"
retire("tasks", "two_tower", _MOVED.format(queries="single", note="it is the default, so `queries` can be left out"))
retire(
    "tasks",
    "multi_embedding",
    _MOVED.format(queries="interests", note="interests, selection, selection_power, serving_rule move into it"),
)
retire("tasks", "conditional", _MOVED.format(queries="topic_conditions", note="condition, condition_seed move into it"))
retire(
    "tasks",
    "synergised",
    _MOVED.format(
        queries="combined", note="interests, condition, explicit_weight, selection, serving_rule move into it"
    ),
)
