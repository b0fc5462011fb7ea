"""Multi-embedding retrieval: K user embeddings from an interest module, one item tower, label-aware training."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from jsonargparse import lazy_instance
from lightning.pytorch.cli import OptimizerCallable

from lightning_retrieval.losses.sampled_softmax import RetrievalLoss, SampledSoftmaxLoss
from lightning_retrieval.models.interests.base import InterestModule
from lightning_retrieval.models.interests.dcm import DifferentiableClusteringModule
from lightning_retrieval.models.towers import FeatureCrossingTower, TowerFactory
from lightning_retrieval.registry import register
from lightning_retrieval.tasks.two_tower import TwoTowerRetrieval

InterestFactory = Callable[[int], InterestModule]


def serving_interest_count(history_length: torch.Tensor, num_interests: int, rule: str) -> torch.Tensor:
    """K_u per user ``[B]``: ``all`` -> K; ``log2`` -> ``max(1, min(K, floor(log2 n)))`` (MIND's rule, the blog's
    "first K embeddings determined by history length"); ``sqrt`` -> ``max(1, min(K, ceil(sqrt(n) / 2)))``."""
    n = history_length.clamp(min=1).float()
    if rule == "all":
        return torch.full_like(history_length, num_interests)
    if rule == "log2":
        k = torch.floor(torch.log2(n))
    elif rule == "sqrt":
        k = torch.ceil(torch.sqrt(n) / 2)
    else:
        raise ValueError(f"unknown serving rule {rule!r}; choose all, log2 or sqrt")
    return k.clamp(1, num_interests).long()


@register("multi_embedding")
class MultiEmbeddingRetrieval(TwoTowerRetrieval):
    """One user embedding per interest: ``φ(u, c_k)`` for the K interests ``c_k`` of the user's history.

    The interest module (``dcm``, ``multihead_attention``, ``dynamic_routing``, ``preclustering``) turns the
    history item embeddings ``[B, L, D]`` into K interests; each interest is a field of the user tower next
    to the user-id (and dense) fields (early fusion), the K towers run folded into the batch.

    Training associates the target with one interest: ``selection: hard`` takes the interest whose embedding
    scores the target highest (MIND/ComiRec/DCM), ``soft`` a softmax over interests with ``selection_power``;
    the selected vector goes through the same sampled softmax as the two-tower model. Serving keeps the first
    ``K_u`` valid embeddings (``serving_rule``) and the evaluator merges their per-embedding searches.

    Args:
        interests: interest module factory (registry ``interests``); its ``num_interests`` sets K.
        serving_rule: ``all``, ``log2`` (default) or ``sqrt`` of the user's full history length.
    """

    def __init__(
        self,
        feature_spec: dict | None = None,
        embedding_dim: int = 64,
        interests: InterestFactory = DifferentiableClusteringModule,
        user_tower: TowerFactory = FeatureCrossingTower,
        item_tower: TowerFactory = FeatureCrossingTower,
        loss: RetrievalLoss = lazy_instance(SampledSoftmaxLoss),
        selection: Literal["hard", "soft"] = "hard",
        selection_power: float = 1.0,
        serving_rule: Literal["all", "log2", "sqrt"] = "log2",
        share_item_embeddings: bool = True,
        id_dropout: float = 0.0,
        optimizer: OptimizerCallable = torch.optim.Adam,
    ):
        super().__init__(
            feature_spec, embedding_dim, user_tower, item_tower, loss, share_item_embeddings, id_dropout, optimizer
        )
        self.save_hyperparameters(ignore=["loss", "user_tower", "item_tower", "optimizer", "interests"])
        if selection not in ("hard", "soft"):
            raise ValueError(f"selection must be 'hard' or 'soft', got {selection!r}")
        serving_interest_count(torch.ones(1, dtype=torch.long), 1, serving_rule)  # validates the rule name
        self.interests = interests(embedding_dim)
        if not isinstance(self.interests, InterestModule):
            raise TypeError(f"interests must build an InterestModule, got {type(self.interests).__name__}")
        self.selection, self.selection_power, self.serving_rule = selection, selection_power, serving_rule

    @property
    def num_interests(self) -> int:
        return self.interests.num_interests

    def history_embeddings(self, batch) -> torch.Tensor:
        """``[B, L, D]`` item-table embeddings of the history positions (zeros at padding)."""
        return self.embeddings.sequence("history", batch["history"], batch["history_mask"])

    def user_interest_embeddings(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """``(users [B, K, D_out], valid [B, K])``; users with no valid interest keep slot 0 (from their other
        features, interest zeroed) so that nobody is left without an embedding."""
        interests, valid = self.interests(self.history_embeddings(batch), batch["history_mask"])
        none = ~valid.any(1)
        if none.any():
            valid = valid.clone()
            valid[none, 0] = True
            interests = interests.masked_fill(none[:, None, None], 0.0)
        return self.conditioned_users(batch, interests), valid

    def conditioned_users(self, batch, conditions: torch.Tensor) -> torch.Tensor:
        """User embeddings ``[B, K, D_out]`` for K condition vectors ``[B, K, D]`` per user: each fills the user
        tower's condition field next to the user-id (and dense) fields; K is folded into the batch."""
        b, k, d = conditions.shape
        users = batch["user"]
        user_id = self.embeddings({"user": (users, torch.ones_like(users))}, batch_size=b)["user"]
        fields = [user_id[:, None].expand(b, k, d), conditions]
        if self.user_dense is not None:
            fields.append(self.user_dense(batch["user_dense"])[:, None].expand(b, k, d))
        stacked = torch.stack(fields, dim=2).reshape(b * k, len(fields), d)
        return self.user_tower(stacked).view(b, k, -1)

    def select(self, users: torch.Tensor, valid: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Label-aware selection of the interest embedding for each target: ``[B, K, D], [B, D] -> [B, D]``."""
        scores = torch.einsum("bkd,bd->bk", users, items).masked_fill(~valid, float("-inf"))
        if self.selection == "hard":
            return users[torch.arange(users.shape[0]), scores.argmax(1)]
        weights = torch.softmax(self.selection_power * scores, dim=1)
        return F.normalize(torch.einsum("bk,bkd->bd", weights, users), dim=-1)

    def embed_users(self, batch):
        """Serving view: ``(users [B, K, D], valid [B, K])`` with only the first K_u valid slots kept."""
        users, valid = self.user_interest_embeddings(batch)
        k_u = serving_interest_count(batch["history_length"], self.num_interests, self.serving_rule)
        rank = valid.long().cumsum(1) - 1  # rank of each valid slot among the valid ones, in slot order
        return users, valid & (rank < k_u[:, None])

    def compute_loss(self, batch) -> torch.Tensor:
        users, valid = self.user_interest_embeddings(batch)
        items = self.embed_items(batch)
        return self.in_batch_loss(self.select(users, valid, items), batch, items)

    @staticmethod
    def interest_collapse(users: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Mean pairwise cosine among each user's valid embeddings ``[B]`` (1 = collapsed; NaN if < 2 valid)."""
        unit = F.normalize(users, dim=-1)
        sims = unit @ unit.transpose(1, 2)
        pair = (
            valid[:, :, None]
            & valid[:, None, :]
            & ~torch.eye(users.shape[1], dtype=torch.bool, device=users.device)[None]
        )
        count = pair.sum((1, 2))
        return torch.where(
            count > 0,
            (sims * pair).sum((1, 2)) / count.clamp(min=1),
            torch.full_like(count, math.nan, dtype=sims.dtype),
        )
