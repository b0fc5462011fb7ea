"""Several queries per user, one per interest of the history (MIND, ComiRec, DCM, pre-clustering)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from lightning_retrieval.models.interests.base import HistoryRows, InterestModule
from lightning_retrieval.models.interests.dcm import DifferentiableClusteringModule
from lightning_retrieval.queries.base import (
    HistoryField,
    QueryLoss,
    QueryPenalty,
    UserQueries,
    UserQueryModule,
    check_history_field,
)
from lightning_retrieval.queries.regularizers import InterestRegularizer
from lightning_retrieval.queries.selected_tower import ReplayMismatch, hard_choice, selected_users
from lightning_retrieval.registry import register

InterestFactory = Callable[[int], InterestModule]
Selection = Literal["hard", "soft"]
ServingRule = Literal["all", "log2", "sqrt"]
HistorySpace = Literal["ids", "items"]
HISTORY_ITEM = "history_item"  # batch-key prefix of the history's item features (data.history_item_features)


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


def keep_first_valid(valid: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """``valid [B, K]`` with only each user's first ``counts [B]`` valid slots (in slot order) left True."""
    rank = valid.long().cumsum(1) - 1
    return valid & (rank < counts[:, None])


def select_interest(
    users: torch.Tensor, valid: torch.Tensor, items: torch.Tensor, selection: str = "hard", power: float = 1.0
) -> torch.Tensor:
    """Label-aware selection of the interest vector for each target: ``[B, K, D], [B, K], [B, D] -> [B, D]``.

    ``hard``: the valid interest whose vector scores the target highest; ``soft``: the softmax (sharpened by
    ``power``) over valid interests of those scores, as weights of a normalised mix."""
    if selection == "hard":
        return users[torch.arange(users.shape[0], device=users.device), hard_choice(users, valid, items)]
    scores = torch.einsum("bkd,bd->bk", users, items).masked_fill(~valid, float("-inf"))
    if selection != "soft":
        raise ValueError(f"selection must be 'hard' or 'soft', got {selection!r}")
    weights = torch.softmax(power * scores, dim=1)
    return F.normalize(torch.einsum("bk,bkd->bd", weights, users), dim=-1)


def interest_collapse(users: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean pairwise cosine among each user's valid vectors ``[B, K, D]`` -> ``[B]`` (1 = collapsed; NaN if < 2)."""
    unit = F.normalize(users, dim=-1)
    sims = unit @ unit.transpose(1, 2)
    eye = torch.eye(users.shape[1], dtype=torch.bool, device=users.device)[None]
    pair = valid[:, :, None] & valid[:, None, :] & ~eye
    count = pair.sum((1, 2))
    mean = (sims * pair).sum((1, 2)) / count.clamp(min=1)
    return torch.where(count > 0, mean, torch.full_like(mean, math.nan))


@register("interests")
class InterestQueries(UserQueryModule):
    """``φ(u, c_k)``: one query per interest ``c_k`` that the interest module finds in the history ``[B, L, D]``.

    Each interest fills the user tower's condition field (early fusion) next to the user id (and dense) fields;
    the K towers run folded into the batch. Training associates the target with one interest (label-aware,
    ``selection``); serving keeps each user's first K_u valid interests (``serving_rule``).

    Args:
        interests: interest module (registry ``interests``: ``dcm``, ``multihead_attention``, ``dynamic_routing``,
            ``preclustering``); its ``num_interests`` sets K.
        selection: ``hard`` (the interest scoring the target highest) or ``soft`` (softmax mix).
        selection_power: sharpness of the ``soft`` softmax.
        serving_rule: ``all``, ``log2`` (default) or ``sqrt`` of the user's full history length.
        history_field: ``replace`` (default: the interest takes the pooled-history field's place) or ``keep``
            (the pooled history stays a field and the interest is one more).
        history_space: what the interest module clusters: ``ids`` (default) the history items' ID-table rows, or
            ``items`` their item-tower vectors ``[B, L, D]``: the space retrieval scores in, built from every item
            feature (ID, topics, side features), like the content embeddings the DCM paper clusters. An ID row of
            an item seen a few times in training stays near its random init, so ID-space clusters of rarely seen
            items are noise (docs/synthetic_interests_diagnostics.md); their item-tower vectors carry their
            features. Needs ``data.history_item_features: true``; the item tower's output size must equal
            ``embedding_dim``.
        regularizers: training penalties on the interest module (registry ``interest_regularizers``, e.g.
            ``routing_regularization``), each added to the loss as ``weight * value`` (logged as
            ``train/loss_<name>``).
    """

    num_condition_fields = 1

    def __init__(
        self,
        embedding_dim: int,
        feature_spec: dict | None = None,
        interests: InterestFactory = DifferentiableClusteringModule,
        selection: Selection = "hard",
        selection_power: float = 1.0,
        serving_rule: ServingRule = "log2",
        history_field: HistoryField = "replace",
        regularizers: list[InterestRegularizer] | None = None,
        history_space: HistorySpace = "ids",
    ):
        super().__init__(embedding_dim, feature_spec)
        if selection not in ("hard", "soft"):
            raise ValueError(f"selection must be 'hard' or 'soft', got {selection!r}")
        serving_interest_count(torch.ones(1, dtype=torch.long), 1, serving_rule)  # validates the rule name
        self.history_field = check_history_field(history_field)
        if history_space not in ("ids", "items"):
            raise ValueError(f"history_space must be 'ids' or 'items', got {history_space!r}")
        self.history_space = history_space
        self.interests = interests(embedding_dim)
        if not isinstance(self.interests, InterestModule):
            raise TypeError(f"interests must build an InterestModule, got {type(self.interests).__name__}")
        self.selection, self.selection_power, self.serving_rule = selection, selection_power, serving_rule
        self.regularizers = nn.ModuleList(regularizers or [])
        self.replay_selection = True  # hard selection: see queries/selected_tower.py
        for regularizer in self.regularizers:
            regularizer.check_module(self.interests)

    @property
    def num_interests(self) -> int:
        return self.interests.num_interests

    def interest_vectors(self, encoder, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``(interests [B, K, D], valid [B, K], mass [B, K] or None)`` from the interest module. Users with no
        valid interest keep slot 0 (interest zeroed: their other fields still embed them)."""
        rows = self.history_rows(encoder, batch)
        if rows is None:
            out = self.interests(self.history_vectors(encoder, batch), batch["history_mask"])
        else:  # the module's per-item work runs once per distinct history item
            out = self.interests(rows.gather(batch["history_mask"]), batch["history_mask"], rows=rows)
        interests, valid = out[0], out[1]
        mass = out[2] if len(out) > 2 else getattr(self.interests, "routing_mass", None)
        if not (isinstance(mass, torch.Tensor) and mass.shape == valid.shape):
            mass = None  # routing mass is optional: only a [B, K] tensor from this call is used
        none = ~valid.any(1)
        if none.any():
            valid = valid.clone()
            valid[none, 0] = True
            interests = interests.masked_fill(none[:, None, None], 0.0)
        return interests, valid, mass

    def history_rows(self, encoder, batch) -> HistoryRows | None:
        """The ID history's distinct table rows, for interest modules that take them (``takes_history_rows``)
        from encoders that give them (``history_rows``); None otherwise."""
        if self.history_space != "ids" or not self.interests.takes_history_rows or not hasattr(encoder, "history_rows"):
            return None
        return encoder.history_rows(batch)

    def history_vectors(self, encoder, batch) -> torch.Tensor:
        """``[B, L, D]`` history the interest module clusters (``history_space``), zeros at padding."""
        if self.history_space == "ids":
            return encoder.history_embeddings(batch)
        if HISTORY_ITEM not in batch:
            raise KeyError(
                "interests with history_space: items need the history's item features in the batch: set "
                "data.history_item_features: true"
            )
        # the unique history items' features under the item prefix, embedded by the item tower, scattered back
        features = {"item" + k[len(HISTORY_ITEM) :]: v for k, v in batch.items() if k.startswith(HISTORY_ITEM + "_")}
        features["item"] = batch[HISTORY_ITEM]
        vectors = encoder.embed_items(features)[batch[HISTORY_ITEM + "_index"]]  # [valid positions, D]
        if vectors.shape[-1] != self.interests.embedding_dim:
            raise ValueError(
                f"history_space: items feeds item-tower vectors of size {vectors.shape[-1]} to an interest module of "
                f"size {self.interests.embedding_dim}: make the item tower's output_dim equal embedding_dim"
            )
        mask = batch["history_mask"]
        return torch.zeros(*mask.shape, vectors.shape[-1], dtype=vectors.dtype, device=vectors.device).masked_scatter(
            mask[:, :, None], vectors
        )

    def all_queries(self, encoder, batch) -> UserQueries:
        """One query per valid interest, before the serving rule."""
        interests, valid, mass = self.interest_vectors(encoder, batch)
        return UserQueries(encoder.encode_users(batch, interests), valid, mass, ("interest",) * valid.shape[1])

    def forward(self, encoder, batch) -> UserQueries:
        """Serving: only each user's first K_u valid interests stay valid."""
        queries = self.all_queries(encoder, batch)
        k_u = serving_interest_count(batch["history_length"], self.num_interests, self.serving_rule)
        queries.valid = keep_first_valid(queries.valid, k_u)
        return queries

    def training_losses(self, encoder, batch, items) -> list[QueryLoss | QueryPenalty]:
        interests, valid, _ = self.interest_vectors(encoder, batch)
        users = None
        if self.selection == "hard" and self.replay_selection:  # the tower's graph over the selected rows only
            try:
                users = selected_users(encoder, batch, interests, valid, items)
            except ReplayMismatch:
                self.replay_selection = False  # randomness outside nn.Dropout: K-fold pass with a graph from now on
        if users is None:
            users = encoder.encode_users(batch, interests)
            users = select_interest(users, valid, items, self.selection, self.selection_power)
        penalties = [
            QueryPenalty(r(self.interests, interests, valid, batch["history_mask"]), r.weight, r.name)
            for r in self.regularizers
        ]
        return [QueryLoss(users, name="implicit"), *penalties]
