"""Contrastive pre-training of user and item ID embeddings (no towers), exported for later models."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import OptimizerCallable

from lightning_retrieval.losses.sampled_softmax import RetrievalLoss, SampledSoftmaxLoss
from lightning_retrieval.models.embeddings import IdEmbeddings
from lightning_retrieval.queries.base import UserQueries
from lightning_retrieval.registry import register
from lightning_retrieval.tasks.base import RetrievalModel


@register("id_pretrain")
class IdPretraining(RetrievalModel):
    """Learns ``score(u, i) = <e_u, e_i>`` on the training window with in-batch (+ sampled) negatives.

    Positives are not down-sampled; the window is the datamodule's ``train_window``. The tables are written by
    the ``pretrained_id_export`` callback at the end of training.
    """

    def __init__(
        self,
        feature_spec: dict | None = None,
        embedding_dim: int = 64,
        loss: RetrievalLoss | None = None,
        optimizer: OptimizerCallable = torch.optim.Adam,
    ):
        super().__init__(feature_spec)
        self.save_hyperparameters(ignore=["loss", "optimizer"])
        num_users, num_items = self.require_spec("num_users", "num_items")
        self.embeddings = IdEmbeddings(num_users, num_items, 0, embedding_dim)
        self.loss = loss if loss is not None else SampledSoftmaxLoss()
        self.optimizer_factory = optimizer

    def user_vectors(self, batch) -> torch.Tensor:
        """``[B, D]`` normalised user-id embeddings."""
        users = batch["user"]
        return F.normalize(self.embeddings({"user": (users, torch.ones_like(users))}, users.shape[0])["user"], dim=-1)

    def embed_users(self, batch) -> UserQueries:
        return UserQueries.single(self.user_vectors(batch))

    def embed_items(self, batch, prefix: str = "item"):
        items = batch[prefix]
        return F.normalize(self.embeddings({prefix: (items, torch.ones_like(items))}, items.shape[0])[prefix], dim=-1)

    def compute_loss(self, batch):
        return self.in_batch_loss(self.user_vectors(batch), batch)

    def training_step(self, batch, batch_idx):
        loss = self.compute_loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["user"].shape[0])
        return loss

    def evaluation_loss(self, batch):
        return self.compute_loss(batch)

    def configure_optimizers(self):
        return self.optimizer_factory(self.dense_parameters())
