"""The user-query contract (registry kind ``queries``): how a retrieval model turns a user into search vectors.

A query module decides *what* the user tower is asked: once per user (``single``), once per interest of the
history (``interests``), once per topic condition (``topic_conditions``) or both (``combined``). The retrieval
task owns the ID tables, the towers and the loss, and lends them to the query module through
:class:`UserEncoder`; the query module returns one typed value, :class:`UserQueries`, for serving, and a list of
:class:`QueryLoss` terms (user vectors scored against the batch's targets) for training.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal, Protocol

import torch
from torch import nn

from lightning_retrieval.registry import component_kind

HistoryField = Literal["keep", "replace"]


@dataclass
class UserQueries:
    """K query vectors per user.

    vectors: ``[B, K, D]`` user-tower outputs (K = 1 for a single query).
    valid: ``[B, K]`` bool; False slots are never searched (padding, interests beyond the serving rule).
    weights: ``[B, K]`` optional non-negative mass per slot (routing mass, topic share), None if not defined.
    kinds: K labels saying what each slot is (``"user"``, ``"interest"``, ``"topic"``, a plugin's own).
    """

    vectors: torch.Tensor
    valid: torch.Tensor
    weights: torch.Tensor | None = None
    kinds: tuple[str, ...] = ("user",)

    def __post_init__(self):
        if self.vectors.dim() != 3:
            raise ValueError(f"UserQueries.vectors must be [B, K, D], got shape {list(self.vectors.shape)}")
        b, k = self.vectors.shape[:2]
        if tuple(self.valid.shape) != (b, k) or self.valid.dtype != torch.bool:
            raise ValueError(f"UserQueries.valid must be a bool [B, K] = [{b}, {k}], got {list(self.valid.shape)}")
        if self.weights is not None and tuple(self.weights.shape) != (b, k):
            raise ValueError(f"UserQueries.weights must be [B, K] = [{b}, {k}], got {list(self.weights.shape)}")
        if len(self.kinds) != k:
            raise ValueError(f"UserQueries.kinds needs one label per slot (K = {k}), got {self.kinds}")

    @classmethod
    def single(cls, vectors: torch.Tensor, kind: str = "user") -> UserQueries:
        """One query per user from ``[B, D]`` vectors."""
        return cls(
            vectors[:, None], torch.ones(vectors.shape[0], 1, dtype=torch.bool, device=vectors.device), None, (kind,)
        )

    @property
    def num_queries(self) -> int:
        return self.vectors.shape[1]

    def as_single(self) -> torch.Tensor:
        """``[B, D]`` for K = 1; a clear error for several queries per user."""
        if self.num_queries != 1:
            raise ValueError(f"expected one query per user, got K = {self.num_queries} ({', '.join(self.kinds)})")
        return self.vectors[:, 0]

    def detach(self) -> UserQueries:
        w = None if self.weights is None else self.weights.detach()
        return replace(self, vectors=self.vectors.detach(), valid=self.valid.detach(), weights=w)

    @staticmethod
    def concat(parts: list[UserQueries]) -> UserQueries:
        """Slots of several query sets side by side (``[B, K1 + K2, D]``); weights kept only if all have them."""
        weights = [p.weights for p in parts]
        return UserQueries(
            torch.cat([p.vectors for p in parts], dim=1),
            torch.cat([p.valid for p in parts], dim=1),
            None if any(w is None for w in weights) else torch.cat(weights, dim=1),
            tuple(k for p in parts for k in p.kinds),
        )


@dataclass
class QueryLoss:
    """One training term: user vectors ``[B, D]`` scored against the batch's targets, times ``weight``."""

    users: torch.Tensor
    weight: float = 1.0
    name: str = "main"


@dataclass
class QueryPenalty:
    """A training term the query module computes itself (a regulariser, e.g. on the interests' routing): a scalar
    ``value`` added to the loss as ``weight * value``, not scored against the targets."""

    value: torch.Tensor
    weight: float = 1.0
    name: str = "penalty"


class UserEncoder(Protocol):
    """What the retrieval task lends a query module (the task's ID tables and user tower)."""

    embedding_dim: int

    def encode_users(self, batch: dict[str, torch.Tensor], conditions: torch.Tensor | None = None) -> torch.Tensor:
        """User-tower outputs ``[B, K, D_out]`` for ``conditions [B, K, D]`` (None: K = 1, no condition field)."""

    def history_embeddings(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """``[B, L, D]`` per-position embeddings of the history items (zeros at padding)."""


@component_kind("queries")
class UserQueryModule(nn.Module):
    """Base class of query kinds. Constructor arguments start with ``embedding_dim, feature_spec`` (given by the
    task); the rest are the kind's own settings, set in YAML under ``model.init_args.queries.init_args``.

    The user tower's fields are ``[user id, pooled history (if history_field is "keep"), condition fields,
    dense (if any)]``; a kind declares how many condition fields it adds (``num_condition_fields``, 0 or 1)
    and whether the pooled-history field stays (``history_field``).

    Subclasses implement :meth:`forward` (serving) and :meth:`training_losses`; :meth:`topic_queries` answers an
    explicit (user, topic) query and by default ignores the topic.
    """

    num_condition_fields: int = 0
    history_field: HistoryField = "keep"

    def __init__(self, embedding_dim: int, feature_spec: dict | None = None):
        super().__init__()
        self.embedding_dim = embedding_dim
        self.feature_spec = dict(feature_spec or {})

    @property
    def keeps_history_field(self) -> bool:
        return self.history_field == "keep"

    def forward(self, encoder: UserEncoder, batch: dict[str, torch.Tensor]) -> UserQueries:
        """Serving queries of a user batch."""
        raise NotImplementedError

    def training_losses(
        self, encoder: UserEncoder, batch: dict[str, torch.Tensor], items: torch.Tensor
    ) -> list[QueryLoss | QueryPenalty]:
        """Loss terms for a training batch; ``items [B, D]`` are the targets' item-tower vectors (embedded once
        by the task, for label-aware selection). The task scores every :class:`QueryLoss` with the same in-batch
        loss, corpus negatives included, and adds every :class:`QueryPenalty` as it is."""
        raise NotImplementedError

    def topic_queries(self, encoder: UserEncoder, batch: dict[str, torch.Tensor], topics: torch.Tensor) -> UserQueries:
        """Queries for one explicit topic per user ``topics [B]`` (-1: none). Kinds without topic conditions
        ignore the topic and return their serving queries."""
        return self(encoder, batch)


QueriesFactory = Callable[[int, dict], UserQueryModule]


def check_history_field(value: str) -> HistoryField:
    if value not in ("keep", "replace"):
        raise ValueError(f"history_field must be 'keep' or 'replace', got {value!r}")
    return value  # type: ignore[return-value]
