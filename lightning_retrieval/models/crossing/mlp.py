"""The plain MLP baseline: concatenate the fields, then a stack of fully-connected layers."""

from __future__ import annotations

from typing import Literal

import torch

from lightning_retrieval.models.crossing.base import CrossingBlock, mlp
from lightning_retrieval.registry import register


@register("mlp")
class MLPCrossing(CrossingBlock):
    """Flattened fields -> MLP.

    Args:
        hidden_dims: widths of the hidden layers; the last one is the output width. ``[]``: no hidden layer, the
            flattened fields pass as they are (``[B, F * D]``), so a tower's projection makes it a linear tower.
        dropout: dropout after each hidden layer.
        activation: ``relu``, ``gelu`` or ``silu``.
        layer_norm: LayerNorm after each linear layer.
    """

    def __init__(
        self,
        num_fields: int,
        field_dim: int,
        hidden_dims: list[int] = [256, 128],  # noqa: B006 - jsonargparse needs a literal default
        dropout: float = 0.0,
        activation: Literal["relu", "gelu", "silu"] = "relu",
        layer_norm: bool = True,
    ):
        super().__init__(num_fields, field_dim)
        if any(h < 1 for h in hidden_dims):
            raise ValueError(f"hidden_dims must be positive widths (or [] for none), got {hidden_dims}")
        self.net = mlp([num_fields * field_dim, *hidden_dims], dropout, activation, layer_norm)
        self.output_dim = hidden_dims[-1] if hidden_dims else num_fields * field_dim

    def forward(self, fields: torch.Tensor) -> torch.Tensor:
        """``[B, F, D]`` -> ``[B, hidden_dims[-1]]`` (``[B, F * D]`` without hidden layers)."""
        self.check_input(fields)
        return self.net(fields.flatten(1))
