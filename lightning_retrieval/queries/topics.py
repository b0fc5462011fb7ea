"""Queries conditioned on topics (RecSys'24 conditional retrieval): one query per (user, topic)."""

from __future__ import annotations

import torch
from torch import nn

from lightning_retrieval.data.epoch_seeds import stream_generator
from lightning_retrieval.models.conditions.base import ConditionExtractor
from lightning_retrieval.models.conditions.topics import UniformTopicCondition
from lightning_retrieval.queries.base import HistoryField, QueryLoss, UserQueries, UserQueryModule, check_history_field
from lightning_retrieval.registry import register

_CONDITION_STREAM = 1 << 20  # stream id of the condition draws (the corpus negatives use batch_generator)


class ConditionTable(nn.Module):
    """Topic-condition embeddings ``[T + 1, D]``; condition -1 ("none") maps to a fixed zero vector."""

    def __init__(self, num_topics: int, dim: int):
        super().__init__()
        if num_topics < 1:
            raise ValueError("topic conditions need item topics; this dataset has none (num_topics = 0)")
        self.num_topics = num_topics
        self.table = nn.Embedding(num_topics + 1, dim, padding_idx=num_topics)
        nn.init.normal_(self.table.weight[:-1], std=dim**-0.5)

    def forward(self, conditions: torch.Tensor) -> torch.Tensor:
        """Topic ids (or -1) of any shape -> embeddings ``[..., D]``."""
        if conditions.numel() and (conditions.max() >= self.num_topics or conditions.min() < -1):
            raise IndexError(
                f"conditions must be topic ids in [0, {self.num_topics}) or -1, got "
                f"[{int(conditions.min())}, {int(conditions.max())}]"
            )
        return self.table(torch.where(conditions < 0, self.num_topics, conditions))


@register("topic_conditions")
class TopicConditionQueries(UserQueryModule):
    """``φ(u, c)`` with a topic ``c`` as one more user-tower field (early fusion).

    Training: the condition is extracted from the target (``uniform_topic``: one of its topics). The draws of a
    training batch come from a generator keyed by the batch's ``batch_key`` (data seed, epoch, position) and
    ``condition_seed``, so they follow ``--seed_everything`` (through the data seed) and replay on resume; batches
    without a key (built by hand) draw from the module's own generator seeded by ``condition_seed``.
    Serving: one query per serving condition of the extractor (the user's inferred top topics, or the topics they
    follow), weighted by the extractor; users without topics get one unconditioned query.
    Explicit (user, topic) queries: :meth:`topic_queries`.

    Args:
        condition: condition extractor (registry ``conditions``), default ``uniform_topic``.
        condition_seed: stream of the training-condition draws, mixed with the batch key (changing it changes
            the draws of every batch; the run seed changes them too).
        history_field: ``keep`` (default: pooled history, then the topic) or ``replace``.
    """

    num_condition_fields = 1

    def __init__(
        self,
        embedding_dim: int,
        feature_spec: dict | None = None,
        condition: ConditionExtractor | None = None,
        condition_seed: int = 0,
        history_field: HistoryField = "keep",
    ):
        super().__init__(embedding_dim, feature_spec)
        self.history_field = check_history_field(history_field)
        self.condition = condition if condition is not None else UniformTopicCondition()
        if not isinstance(self.condition, ConditionExtractor):
            raise TypeError(f"condition must be a ConditionExtractor, got {type(self.condition).__name__}")
        self.conditions = ConditionTable(int(self.feature_spec.get("num_topics", 0)), embedding_dim)
        self.condition_seed = int(condition_seed)
        self.generator = torch.Generator().manual_seed(self.condition_seed)

    def conditioned(self, encoder, batch, topics: torch.Tensor) -> torch.Tensor:
        """User vectors ``[B, C, D_out]`` for topic conditions ``topics [B, C]`` (-1: none)."""
        return encoder.encode_users(batch, self.conditions(topics))

    def serving_queries(self, encoder, batch, fallback: bool = True) -> UserQueries:
        """One query per serving condition; with ``fallback``, users without any get one unconditioned query."""
        topics, weights = self.condition.serving_conditions(batch)
        valid = weights > 0
        if fallback:
            valid[:, 0] |= ~valid.any(1)
        return UserQueries(self.conditioned(encoder, batch, topics), valid, weights, ("topic",) * valid.shape[1])

    def forward(self, encoder, batch) -> UserQueries:
        return self.serving_queries(encoder, batch)

    def training_conditions(self, batch) -> torch.Tensor:
        """``[B]`` condition per target (a topic of the target item, -1 if it has none)."""
        key = batch.get("batch_key")
        generator = self.generator if key is None else stream_generator(key, _CONDITION_STREAM + self.condition_seed)
        topics = self.condition.training_conditions(batch["item_topics"], batch["item_topic_lengths"], generator)
        return topics.to(batch["user"].device)

    def training_losses(self, encoder, batch, items) -> list[QueryLoss]:
        users = self.conditioned(encoder, batch, self.training_conditions(batch)[:, None])[:, 0]
        return [QueryLoss(users, name="explicit")]

    def topic_queries(self, encoder, batch, topics) -> UserQueries:
        return UserQueries(
            self.conditioned(encoder, batch, topics[:, None]),
            torch.ones_like(topics, dtype=torch.bool)[:, None],
            None,
            ("topic",),
        )
