"""Field-wise attention: a transformer encoder over the F feature fields (AutoInt-style crossing)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from lightning_retrieval.models.crossing.base import CrossingBlock
from lightning_retrieval.registry import register


@register("transformer")
class TransformerCrossing(CrossingBlock):
    """Self-attention across fields: each field attends to every other field, then the fields are pooled.

    Complements MaskNet's bit-wise gating with field-level interactions (the DHEN layer Pinterest added).

    Args:
        num_layers / num_heads / ff_dim / dropout: encoder shape (``num_heads`` must divide ``field_dim``).
        pooling: ``flatten`` (output ``F * D``), ``mean`` (output ``D``) or ``cls`` (a learned summary token,
            output ``D``).
        field_embeddings: add a learned embedding per field position (fields are not interchangeable).
    """

    def __init__(
        self,
        num_fields: int,
        field_dim: int,
        num_layers: int = 2,
        num_heads: int = 4,
        ff_dim: int = 256,
        dropout: float = 0.0,
        pooling: Literal["flatten", "mean", "cls"] = "flatten",
        field_embeddings: bool = True,
    ):
        super().__init__(num_fields, field_dim)
        if field_dim % num_heads:
            raise ValueError(
                f"transformer: num_heads={num_heads} must divide field_dim={field_dim} "
                f"(valid: {[h for h in range(1, field_dim + 1) if field_dim % h == 0]})"
            )
        if pooling not in ("flatten", "mean", "cls"):
            raise ValueError(f"unknown pooling {pooling!r}; choose flatten, mean or cls")
        layer = nn.TransformerEncoderLayer(field_dim, num_heads, ff_dim, dropout, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.position = nn.Parameter(torch.zeros(1, num_fields, field_dim)) if field_embeddings else None
        self.cls = nn.Parameter(torch.randn(1, 1, field_dim) * 0.02) if pooling == "cls" else None
        self.pooling = pooling
        self.output_dim = num_fields * field_dim if pooling == "flatten" else field_dim

    def forward(self, fields: torch.Tensor) -> torch.Tensor:
        """``[B, F, D]`` -> ``[B, F*D]`` (flatten) or ``[B, D]`` (mean, cls)."""
        self.check_input(fields)
        x = fields + self.position if self.position is not None else fields
        if self.cls is not None:
            x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1)
        x = self.encoder(x)
        if self.pooling == "cls":
            return x[:, 0]
        return x.mean(1) if self.pooling == "mean" else x.flatten(1)
