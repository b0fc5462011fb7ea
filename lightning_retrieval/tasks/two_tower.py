"""Two-tower retrieval: user tower (ID, pooled history, dense) and item tower (ID, topics, dense)."""

from __future__ import annotations

import torch
from jsonargparse import lazy_instance
from lightning.pytorch.cli import OptimizerCallable
from torch import nn

from lightning_retrieval.losses.sampled_softmax import RetrievalLoss, SampledSoftmaxLoss
from lightning_retrieval.models.embeddings import IdEmbeddings
from lightning_retrieval.models.pretrained import PretrainedIds
from lightning_retrieval.models.towers import FeatureCrossingTower, TowerFactory
from lightning_retrieval.registry import register
from lightning_retrieval.tasks.base import RetrievalModel


@register("two_tower")
class TwoTowerRetrieval(RetrievalModel):
    """Two towers over torchrec ID tables, trained with an in-batch sampled softmax.

    User fields: user-id embedding, mean of the history item embeddings, projected dense user features.
    Item fields: item-id embedding, mean of its topic embeddings, projected dense item features.
    Each tower normalises its fields, crosses them (the tower's crossing block) and L2-normalises.

    Args:
        embedding_dim: width D of every ID table and field.
        user_tower / item_tower: tower components (registry ``towers``); their ``crossing`` picks the block.
        loss: training loss (registry ``losses``).
        share_item_embeddings: history items use the item-id table (else a separate table).
        id_dropout: dropout on pooled ID embeddings.
        optimizer: optimizer factory, e.g. ``torch.optim.Adam`` with ``lr``.
        pretrained_ids: load user/item ID tables from an ``id_pretrain`` export (frozen + dropout 0.5 by
            default; refused if its training window overlaps this model's).
    """

    extra_user_fields = 0  # subclasses that add user-tower fields (e.g. a condition) raise this

    def __init__(
        self,
        feature_spec: dict | None = None,
        embedding_dim: int = 64,
        user_tower: TowerFactory = FeatureCrossingTower,
        item_tower: TowerFactory = FeatureCrossingTower,
        loss: RetrievalLoss = lazy_instance(SampledSoftmaxLoss),
        share_item_embeddings: bool = True,
        id_dropout: float = 0.0,
        optimizer: OptimizerCallable = torch.optim.Adam,
        pretrained_ids: PretrainedIds | None = None,
    ):
        super().__init__(feature_spec)
        self.save_hyperparameters(ignore=["loss", "user_tower", "item_tower", "optimizer", "pretrained_ids"])
        num_users, num_items, num_topics, user_dense, item_dense = self.require_spec(
            "num_users", "num_items", "num_topics", "user_dense_dim", "item_dense_dim"
        )
        self.embeddings = IdEmbeddings(
            num_users, num_items, num_topics, embedding_dim, share_item_table=share_item_embeddings, dropout=id_dropout
        )
        self.user_dense = nn.Linear(user_dense, embedding_dim) if user_dense else None
        self.item_dense = nn.Linear(item_dense, embedding_dim) if item_dense else None
        self.has_topics = num_topics > 0
        self.user_tower = user_tower(2 + self.extra_user_fields + bool(user_dense), embedding_dim)
        self.item_tower = item_tower(1 + self.has_topics + bool(item_dense), embedding_dim)
        if self.user_tower.output_dim != self.item_tower.output_dim:
            raise ValueError(
                f"user and item towers must output the same width for dot-product scores, got "
                f"{self.user_tower.output_dim} and {self.item_tower.output_dim}"
            )
        self.loss = loss
        self.optimizer_factory = optimizer
        self.pretrained_ids = pretrained_ids
        self.pretrained_report: dict = {}

    def setup(self, stage: str) -> None:
        """Load pre-trained ID tables (before the optimizer is built, so frozen tables stay frozen)."""
        if self.pretrained_ids is not None and not self.pretrained_report:
            dm = self.trainer.datamodule
            self.pretrained_report = self.pretrained_ids.apply(
                self.embeddings, dm.data.user_ids, dm.data.item_ids, dm.training_window
            )

    # ---- towers ----
    def user_fields(self, batch) -> torch.Tensor:
        """``[B, F_user, D]``: user id, pooled history, (dense)."""
        users = batch["user"]
        mask = batch["history_mask"]
        ones = torch.ones_like(users)
        pooled = self.embeddings(
            {"user": (users, ones), "history": (batch["history"][mask], mask.sum(1))}, batch_size=users.shape[0]
        )
        fields = [pooled["user"], pooled["history"]]
        if self.user_dense is not None:
            fields.append(self.user_dense(batch["user_dense"]))
        return torch.stack(fields, dim=1)

    def item_fields(self, batch, prefix: str = "item") -> torch.Tensor:
        """``[N, F_item, D]``: item id, pooled topics, (dense)."""
        items = batch[prefix]
        bags = {prefix: (items, torch.ones_like(items))}
        if self.has_topics:
            bags[f"{prefix}_topics"] = (batch[f"{prefix}_topics"], batch[f"{prefix}_topic_lengths"])
        pooled = self.embeddings(bags, batch_size=items.shape[0])
        fields = [pooled[prefix]]
        if self.has_topics:
            fields.append(pooled[f"{prefix}_topics"])
        if self.item_dense is not None:
            fields.append(self.item_dense(batch[f"{prefix}_dense"]))
        return torch.stack(fields, dim=1)

    def embed_users(self, batch):
        return self.user_tower(self.user_fields(batch))

    def embed_items(self, batch, prefix: str = "item"):
        return self.item_tower(self.item_fields(batch, prefix))

    # ---- training ----
    def compute_loss(self, batch) -> torch.Tensor:
        return self.in_batch_loss(self.embed_users(batch), batch)

    def training_step(self, batch, batch_idx):
        loss = self.compute_loss(batch)
        batch_size = batch["user"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size, sync_dist=True)
        if hasattr(self.loss, "temperature"):
            self.log("train/temperature", self.loss.temperature, batch_size=batch_size)
        return loss

    def evaluation_loss(self, batch):
        return self.compute_loss(batch)

    def configure_optimizers(self):
        return self.optimizer_factory(self.dense_parameters())
