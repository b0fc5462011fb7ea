"""Implicit and explicit interests in one user tower (KDD'25 synergised retrieval)."""

from __future__ import annotations

from lightning_retrieval.models.conditions.base import ConditionExtractor
from lightning_retrieval.models.interests.dcm import DifferentiableClusteringModule
from lightning_retrieval.queries.base import HistoryField, QueryLoss, UserQueries, UserQueryModule, check_history_field
from lightning_retrieval.queries.interests import HistorySpace, InterestFactory, InterestQueries, Selection, ServingRule
from lightning_retrieval.queries.topics import TopicConditionQueries
from lightning_retrieval.registry import register


@register("combined")
class CombinedQueries(UserQueryModule):
    """Implicit queries (``interests``) followed by explicit ones (``topic_conditions``), sharing one field.

    A cluster centroid or a topic embedding fills the same condition field of the same user tower. Training sums
    the implicit term (label-aware selection) and ``explicit_weight`` times the explicit term (condition = a
    topic of the target); both go through the task's in-batch loss. Serving: the first K_u implicit queries,
    then one explicit query per serving topic; the evaluator's merger interleaves their lists.

    Args: those of ``interests`` and ``topic_conditions``, plus ``explicit_weight``; ``history_field`` applies
    to both (default ``replace``, as the paper's shared interest field); ``history_space`` (``ids`` or ``items``)
    is the implicit interests' (``items`` needs ``data.history_item_features: true``).
    """

    num_condition_fields = 1

    def __init__(
        self,
        embedding_dim: int,
        feature_spec: dict | None = None,
        interests: InterestFactory = DifferentiableClusteringModule,
        condition: ConditionExtractor | None = None,
        explicit_weight: float = 1.0,
        selection: Selection = "hard",
        selection_power: float = 1.0,
        serving_rule: ServingRule = "log2",
        history_field: HistoryField = "replace",
        condition_seed: int = 0,
        history_space: HistorySpace = "ids",
    ):
        super().__init__(embedding_dim, feature_spec)
        self.history_field = check_history_field(history_field)
        self.implicit = InterestQueries(
            embedding_dim,
            feature_spec,
            interests,
            selection,
            selection_power,
            serving_rule,
            history_field,
            history_space=history_space,
        )
        self.explicit = TopicConditionQueries(embedding_dim, feature_spec, condition, condition_seed, history_field)
        self.explicit_weight = explicit_weight

    def forward(self, encoder, batch) -> UserQueries:
        return UserQueries.concat(
            [self.implicit(encoder, batch), self.explicit.serving_queries(encoder, batch, fallback=False)]
        )

    def training_losses(self, encoder, batch, items) -> list[QueryLoss]:
        (implicit,) = self.implicit.training_losses(encoder, batch, items)
        (explicit,) = self.explicit.training_losses(encoder, batch, items)
        explicit.weight = self.explicit_weight
        return [implicit, explicit]

    def topic_queries(self, encoder, batch, topics) -> UserQueries:
        return self.explicit.topic_queries(encoder, batch, topics)
