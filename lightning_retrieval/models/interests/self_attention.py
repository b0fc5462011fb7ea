"""Self-attentive multi-interest extraction (ComiRec-SA, Cen et al. 2020)."""

from __future__ import annotations

import torch
from torch import nn

from lightning_retrieval.models.fast_layers import AttentionLogits
from lightning_retrieval.models.interests.base import (
    HistoryRows,
    InterestModule,
    interests_supported,
    recency_rank,
)
from lightning_retrieval.registry import register


@register("multihead_attention")
class SelfAttentiveInterests(InterestModule):
    """``A = softmax_L(W2 tanh(W1 (H + P)^T))`` gives K attention distributions over the history; ``V = A H``.

    ``P`` is indexed by recency (0 = the most recent valid item), so the amount of padding never changes the
    output. Interest ``k`` is valid for users with more than ``k`` history items (n items give at most n
    distinct interests).

    Args:
        hidden_dim: width of the attention MLP (ComiRec uses 4D).
        max_length: positions with learned embeddings ``P`` (0 disables them): the most valid history items.
    """

    exposes_routing = True
    takes_history_rows = True

    def __init__(
        self, embedding_dim: int, num_interests: int = 4, hidden_dim: int | None = None, max_length: int = 200
    ):
        super().__init__(embedding_dim, num_interests)
        hidden = hidden_dim or 4 * embedding_dim
        self.attention = AttentionLogits(embedding_dim, hidden, num_interests)  # W2 tanh(W1 x), [B, L, K]
        self.position = nn.Embedding(max_length, embedding_dim) if max_length else None
        if self.position is not None:
            nn.init.normal_(self.position.weight, std=0.02)

    def forward(
        self, history: torch.Tensor, mask: torch.Tensor, rows: HistoryRows | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``history [B, L, D]``, ``mask [B, L]`` -> ``(interests [B, K, D], valid [B, K])``. With ``rows`` (the
        history's distinct table rows) the attention MLP's first product runs per distinct item and position."""
        self.check_input(history, mask)
        rank = recency_rank(mask)
        if self.position is not None:
            if (
                history.shape[1] > self.position.num_embeddings
                and int(mask.sum(1).max()) > self.position.num_embeddings
            ):
                raise ValueError(
                    f"a history has {int(mask.sum(1).max())} valid items, more than max_length="
                    f"{self.position.num_embeddings}"
                )
        if rows is not None:
            positions = self.position.weight if self.position is not None else history.new_zeros(1, history.shape[2])
            position_index = rank[mask] if self.position is not None else rank.new_zeros(int(mask.sum()))
            valid_logits = self.attention.indexed(rows.rows, positions, rows.index[mask], position_index)  # [N, K]
            logits = history.new_full((*mask.shape, self.num_interests), float("-inf"))
            logits = logits.masked_scatter(mask[:, :, None], valid_logits)  # [B, L, K]
        else:
            keyed = history
            if self.position is not None:
                # = self.position(rank); index_select's backward (index_add) is the same gradient, 2x faster
                keyed = history + self.position.weight.index_select(0, rank.flatten()).view_as(history)
            logits = self.attention(keyed).masked_fill(~mask[:, :, None], float("-inf"))  # [B, L, K]
        attn = torch.softmax(logits, dim=1).nan_to_num(0.0)
        self.routing = attn.transpose(1, 2)  # [B, K, L] with gradient, for routing regularisers
        valid = interests_supported(mask, self.num_interests)
        interests = torch.einsum("blk,bld->bkd", attn, history) * valid[:, :, None]
        return interests, valid
