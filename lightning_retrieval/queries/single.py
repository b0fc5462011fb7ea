"""One query per user: the two-tower model's user tower over (user id, pooled history, dense)."""

from __future__ import annotations

from lightning_retrieval.queries.base import QueryLoss, UserQueries, UserQueryModule
from lightning_retrieval.registry import register


@register("single")
class SingleQuery(UserQueryModule):
    """``φ(u)``: one user-tower vector per user (K = 1), trained directly against the target."""

    def forward(self, encoder, batch) -> UserQueries:
        return UserQueries.single(encoder.encode_users(batch)[:, 0])

    def training_losses(self, encoder, batch, items) -> list[QueryLoss]:
        return [QueryLoss(encoder.encode_users(batch)[:, 0])]
