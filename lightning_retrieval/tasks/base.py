"""The contract every retrieval LightningModule follows, so one evaluator serves them all."""

from __future__ import annotations

import lightning.pytorch as pl
import torch

from lightning_retrieval.allocator import keep_freed_memory
from lightning_retrieval.queries.base import UserQueries
from lightning_retrieval.registry import component_kind


@component_kind("tasks")
class RetrievalModel(pl.LightningModule):
    """A model that embeds users and items into one inner-product space.

    Subclasses implement :meth:`embed_users` (a :class:`UserQueries`: K vectors per user, K = 1 for one) and
    :meth:`embed_items` (and :meth:`training_step` if they learn). Evaluation steps return the user queries;
    the evaluation callbacks embed the corpus, build the index and compute the metrics at epoch end.

    Args:
        feature_spec: table sizes from the datamodule (``num_users``, ``num_items``, ``num_topics``,
            ``user_dense_dim``, ``item_dense_dim``); the CLI links it from ``data.feature_spec``.
    """

    def __init__(self, feature_spec: dict | None = None):
        super().__init__()
        self.feature_spec = dict(feature_spec or {})

    def _keep_freed_memory(self) -> None:
        if self.device.type == "cpu":  # activations' memory is reused step to step (lightning_retrieval/allocator.py)
            keep_freed_memory()

    def on_fit_start(self) -> None:
        self._keep_freed_memory()

    def on_validation_start(self) -> None:
        self._keep_freed_memory()

    def on_test_start(self) -> None:
        self._keep_freed_memory()

    def on_predict_start(self) -> None:
        self._keep_freed_memory()

    def require_spec(self, *keys: str) -> list[int]:
        missing = [k for k in keys if k not in self.feature_spec]
        if missing:
            raise ValueError(
                f"{type(self).__name__} needs feature_spec entries {missing}; pass "
                "feature_spec=datamodule.feature_spec (the CLI links it automatically)"
            )
        return [int(self.feature_spec[k]) for k in keys]

    @property
    def display_name(self) -> str:
        """The model's name in result cards and reports."""
        return type(self).__name__

    def embed_users(self, batch: dict[str, torch.Tensor]) -> UserQueries:
        """The user's search queries: ``vectors [B, K, D]``, ``valid [B, K]`` (K = 1 for a single vector)."""
        raise NotImplementedError

    def topic_queries(self, batch: dict[str, torch.Tensor], topics: torch.Tensor) -> UserQueries:
        """Queries for an explicit topic per user ``topics [B]``; models without topic conditions ignore it."""
        return self.embed_users(batch)

    def embed_items(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Item vectors ``[N, D]`` for an item-feature batch (``item``, topics, dense, ``item_count``)."""
        raise NotImplementedError

    def dense_parameters(self) -> list[torch.nn.Parameter]:
        """Trainable parameters for the LightningModule's optimizer: those not frozen and not updated by
        torchrec's fused optimizer in the backward pass (sharded ID tables under ``strategy: torchrec``)."""
        return [p for p in self.parameters() if p.requires_grad and not hasattr(p, "_in_backward_optimizers")]

    def in_batch_loss(
        self,
        users: torch.Tensor,
        batch: dict[str, torch.Tensor],
        items: torch.Tensor | None = None,
        negatives: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``self.loss`` of user vectors ``[B, D]`` against the batch's targets and its corpus negatives, if the
        datamodule sampled any. ``items [B, D]`` / ``negatives [M, D]`` are embedded here unless given."""
        items = self.embed_items(batch) if items is None else items
        if negatives is None and "neg_item" in batch:
            negatives = self.embed_items(batch, "neg_item")
        return self.loss(
            users, items, batch["item"], batch["item_log_q"], negatives, batch.get("neg_item"), batch.get("neg_log_q")
        )

    def evaluation_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """Loss of the user's first target (a diagnostic logged as ``<stage>/loss``); None if not defined."""
        return None

    def _user_outputs(self, batch) -> dict[str, torch.Tensor]:
        """``eval_row [B]``, ``user_embeddings [B, K, D]``, ``user_valid [B, K]`` (+ ``query_weights [B, K]``)."""
        queries = self.embed_users(batch).detach()
        out = {"eval_row": batch["eval_row"], "user_embeddings": queries.vectors, "user_valid": queries.valid}
        if queries.weights is not None:
            out["query_weights"] = queries.weights
        return out

    def _evaluation_step(self, batch: dict[str, torch.Tensor], stage: str) -> dict[str, torch.Tensor]:
        out = self._user_outputs(batch)
        if "item" in batch:
            loss = self.evaluation_loss(batch)
            if loss is not None:
                self.log(f"{stage}/loss", loss, batch_size=out["eval_row"].shape[0])
        out["history_length"] = batch["history_length"]
        return out

    def validation_step(self, batch, batch_idx):
        return self._evaluation_step(batch, "val")

    def test_step(self, batch, batch_idx):
        return self._evaluation_step(batch, "test")

    def predict_step(self, batch, batch_idx, dataloader_idx: int = 0):
        return self._user_outputs(batch)
