"""Conditional retrieval (RecSys'24): the user tower takes a topic condition as one more field (early fusion)."""

from __future__ import annotations

from typing import Literal

import torch
from jsonargparse import lazy_instance
from lightning.pytorch.cli import OptimizerCallable
from torch import nn

from lightning_retrieval.losses.sampled_softmax import RetrievalLoss, SampledSoftmaxLoss
from lightning_retrieval.models.conditions.base import ConditionExtractor
from lightning_retrieval.models.conditions.topics import UniformTopicCondition
from lightning_retrieval.models.interests.dcm import DifferentiableClusteringModule
from lightning_retrieval.models.towers import FeatureCrossingTower, TowerFactory
from lightning_retrieval.registry import register
from lightning_retrieval.tasks.multi_embedding import InterestFactory, MultiEmbeddingRetrieval
from lightning_retrieval.tasks.two_tower import TwoTowerRetrieval


class ConditionTable(nn.Module):
    """Topic-condition embeddings ``[T + 1, D]``; condition -1 ("none") maps to a fixed zero vector."""

    def __init__(self, num_topics: int, dim: int):
        super().__init__()
        if num_topics < 1:
            raise ValueError("conditional retrieval needs item topics; this dataset has none")
        self.num_topics = num_topics
        self.table = nn.Embedding(num_topics + 1, dim, padding_idx=num_topics)
        nn.init.normal_(self.table.weight[:-1], std=dim**-0.5)

    def forward(self, conditions: torch.Tensor) -> torch.Tensor:
        if conditions.numel() and (conditions.max() >= self.num_topics or conditions.min() < -1):
            raise IndexError(
                f"conditions must be topic ids in [0, {self.num_topics}) or -1, got "
                f"[{int(conditions.min())}, {int(conditions.max())}]"
            )
        return self.table(torch.where(conditions < 0, self.num_topics, conditions))


@register("conditional")
class ConditionalRetrieval(TwoTowerRetrieval):
    """Two-tower model whose user tower also sees a condition (a topic): ``φ(u, c)`` against ``ψ(i)``.

    Training: the condition is extracted from the target item (``uniform_topic``: one of its topics, sampled
    uniformly with a seeded generator), trained on the same engagement data as the two-tower model.
    Serving: ``embed_conditioned(batch, topics)`` for explicit queries; ``embed_users`` queries the user's
    inferred interests (the extractor's serving conditions) and returns one embedding per condition.
    """

    extra_user_fields = 1

    def __init__(
        self,
        feature_spec: dict | None = None,
        embedding_dim: int = 64,
        condition: ConditionExtractor = lazy_instance(UniformTopicCondition),
        user_tower: TowerFactory = FeatureCrossingTower,
        item_tower: TowerFactory = FeatureCrossingTower,
        loss: RetrievalLoss = lazy_instance(SampledSoftmaxLoss),
        share_item_embeddings: bool = True,
        id_dropout: float = 0.0,
        condition_seed: int = 0,
        optimizer: OptimizerCallable = torch.optim.Adam,
    ):
        super().__init__(
            feature_spec, embedding_dim, user_tower, item_tower, loss, share_item_embeddings, id_dropout, optimizer
        )
        self.save_hyperparameters(ignore=["loss", "user_tower", "item_tower", "optimizer", "condition"])
        self.condition = condition
        self.conditions = ConditionTable(self.require_spec("num_topics")[0], embedding_dim)
        self.generator = torch.Generator().manual_seed(condition_seed)

    def conditioned_fields(self, batch, conditions: torch.Tensor) -> torch.Tensor:
        """``[B, F, D]``: the two-tower user fields plus the condition embedding (early fusion)."""
        fields = super().user_fields(batch)
        return torch.cat([fields[:, :2], self.conditions(conditions)[:, None], fields[:, 2:]], dim=1)

    def embed_conditioned(self, batch, conditions: torch.Tensor) -> torch.Tensor:
        """User vectors ``[B, D]`` for one condition (topic id, or -1) per user."""
        return self.user_tower(self.conditioned_fields(batch, conditions))

    def training_conditions(self, batch) -> torch.Tensor:
        return self.condition.training_conditions(batch["item_topics"], batch["item_topic_lengths"], self.generator)

    def compute_loss(self, batch) -> torch.Tensor:
        return self.in_batch_loss(self.embed_conditioned(batch, self.training_conditions(batch).to(self.device)), batch)

    def serving_embeddings(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """One embedding per inferred interest: ``([B, C, D], valid [B, C])``; no topics -> one unconditioned."""
        topics, weights = self.condition.serving_conditions(batch)
        valid = weights > 0
        valid[:, 0] |= ~valid.any(1)  # users without topics: a single unconditioned embedding
        b, c = topics.shape
        expanded = {k: v.repeat_interleave(c, dim=0) for k, v in batch.items() if k in self._user_keys}
        users = self.embed_conditioned(expanded, topics.reshape(-1)).view(b, c, -1)
        return users, valid

    _user_keys = (
        "user",
        "history",
        "history_mask",
        "history_length",
        "user_dense",
        "history_topic_counts",
        "followed_topics",
    )

    def embed_users(self, batch):
        return self.serving_embeddings(batch)


@register("synergised")
class SynergisedRetrieval(MultiEmbeddingRetrieval):
    """Implicit (DCM clusters) and explicit (topic conditions) interests in one user tower (KDD'25).

    Both condition kinds enter the same field of the user tower: a cluster centroid or a topic embedding.
    Training sums the implicit loss (label-aware selection over the clusters) and ``explicit_weight`` times the
    explicit loss (condition = a topic of the target). Serving: the first K_u implicit embeddings followed by
    one explicit embedding per inferred topic; the evaluation callback's merger (round-robin by default)
    interleaves them into one list.
    """

    def __init__(
        self,
        feature_spec: dict | None = None,
        embedding_dim: int = 64,
        interests: InterestFactory = DifferentiableClusteringModule,
        condition: ConditionExtractor = lazy_instance(UniformTopicCondition),
        explicit_weight: float = 1.0,
        user_tower: TowerFactory = FeatureCrossingTower,
        item_tower: TowerFactory = FeatureCrossingTower,
        loss: RetrievalLoss = lazy_instance(SampledSoftmaxLoss),
        selection: Literal["hard", "soft"] = "hard",
        serving_rule: Literal["all", "log2", "sqrt"] = "log2",
        condition_seed: int = 0,
        optimizer: OptimizerCallable = torch.optim.Adam,
    ):
        super().__init__(
            feature_spec,
            embedding_dim,
            interests,
            user_tower,
            item_tower,
            loss,
            selection,
            serving_rule=serving_rule,
            optimizer=optimizer,
        )
        self.save_hyperparameters(ignore=["loss", "user_tower", "item_tower", "optimizer", "interests", "condition"])
        self.condition = condition
        self.conditions = ConditionTable(self.require_spec("num_topics")[0], embedding_dim)
        self.explicit_weight = explicit_weight
        self.generator = torch.Generator().manual_seed(condition_seed)

    def explicit_embeddings(self, batch, conditions: torch.Tensor) -> torch.Tensor:
        """``[B, C, D]`` user embeddings for topic conditions ``[B, C]`` (the condition fills the interest field)."""
        b, c = conditions.shape
        return self.conditioned_users(batch, self.conditions(conditions.reshape(-1)).view(b, c, -1))

    def compute_loss(self, batch) -> torch.Tensor:
        implicit = super().compute_loss(batch)
        topics = self.condition.training_conditions(batch["item_topics"], batch["item_topic_lengths"], self.generator)
        users = self.explicit_embeddings(batch, topics.to(self.device)[:, None])[:, 0]
        items = self.embed_items(batch)
        explicit = self.loss(users, items, batch["item"], batch["item_log_q"])
        return implicit + self.explicit_weight * explicit

    def embed_users(self, batch):
        implicit, implicit_valid = super().embed_users(batch)
        topics, weights = self.condition.serving_conditions(batch)
        explicit = self.explicit_embeddings(batch, topics)
        return torch.cat([implicit, explicit], dim=1), torch.cat([implicit_valid, weights > 0], dim=1)
