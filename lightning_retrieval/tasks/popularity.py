"""Most-popular baseline, evaluated by the same index and evaluator as the learned models."""

from __future__ import annotations

import torch

from lightning_retrieval.queries.base import UserQueries
from lightning_retrieval.registry import register
from lightning_retrieval.tasks.base import RetrievalModel


@register("popularity")
class PopularityRetrieval(RetrievalModel):
    """Ranks items by how often they were interacted with before the evaluated period.

    Users are the 1-d vector ``[1]`` and items ``[log(1 + count)]``, so an inner-product index returns the
    most popular unseen items. Counts come from the datamodule per stage (validation: training data only;
    test: training + validation), so no evaluated interaction leaks into the ranking. Nothing to train:
    run ``validate`` / ``test`` directly.
    """

    def __init__(self, feature_spec: dict | None = None):
        super().__init__(feature_spec)
        self.register_buffer("_device_anchor", torch.zeros(0), persistent=False)

    def embed_users(self, batch):
        return UserQueries.single(torch.ones(batch["user"].shape[0], 1, device=batch["user"].device))

    def embed_items(self, batch):
        if "item_count" not in batch:
            raise KeyError("popularity needs 'item_count' in the item batch (RetrievalDataModule.corpus_batches)")
        return torch.log1p(batch["item_count"].float())[:, None]

    def training_step(self, batch, batch_idx):
        raise RuntimeError("the popularity baseline has nothing to train: use `validate` or `test`")

    def configure_optimizers(self):
        return None
