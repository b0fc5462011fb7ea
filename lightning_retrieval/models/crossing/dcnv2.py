"""DCN-v2 cross network (Wang et al. 2021): explicit bounded-degree crosses plus a deep network."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from lightning_retrieval.models.crossing.base import CrossingBlock, mlp
from lightning_retrieval.registry import register


class CrossLayer(nn.Module):
    """``x_{l+1} = x_0 ⊙ (W x_l + b) + x_l``; ``W`` full (``rank=None``) or low-rank ``U V^T``."""

    def __init__(self, dim: int, rank: int | None):
        super().__init__()
        self.weight = (
            nn.Linear(dim, dim)
            if rank is None
            else nn.Sequential(nn.Linear(dim, rank, bias=False), nn.Linear(rank, dim))
        )

    def forward(self, x0: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return x0 * self.weight(x) + x


@register("dcnv2")
class DCNv2Crossing(CrossingBlock):
    """Cross network v2 on the flattened fields, combined with an MLP ``stacked`` after it or ``parallel``.

    Args:
        num_cross_layers: cross layers (polynomial degree ``num_cross_layers + 1``).
        low_rank: rank of the low-rank cross weights (None = full matrices).
        deep_dims: the MLP's widths; the last is the output width.
        structure: ``stacked`` (cross -> MLP) or ``parallel`` (concat(cross, MLP) -> linear).
    """

    def __init__(
        self,
        num_fields: int,
        field_dim: int,
        num_cross_layers: int = 3,
        low_rank: int | None = None,
        deep_dims: list[int] = [256, 128],
        structure: Literal["stacked", "parallel"] = "stacked",
        dropout: float = 0.0,
    ):
        super().__init__(num_fields, field_dim)
        if num_cross_layers < 1 or not deep_dims:
            raise ValueError(f"dcnv2 needs num_cross_layers >= 1 and deep_dims, got {num_cross_layers}, {deep_dims}")
        if structure not in ("stacked", "parallel"):
            raise ValueError(f"unknown structure {structure!r}; choose stacked or parallel")
        dim = num_fields * field_dim
        self.cross = nn.ModuleList(CrossLayer(dim, low_rank) for _ in range(num_cross_layers))
        self.deep = mlp([dim, *deep_dims], dropout=dropout)
        self.structure = structure
        if structure == "parallel":
            self.combine = nn.Linear(dim + deep_dims[-1], deep_dims[-1])
        self.output_dim = deep_dims[-1]

    def forward(self, fields: torch.Tensor) -> torch.Tensor:
        """``[B, F, D]`` -> ``[B, deep_dims[-1]]``."""
        self.check_input(fields)
        x0 = fields.flatten(1)
        x = x0
        for layer in self.cross:
            x = layer(x0, x)
        if self.structure == "stacked":
            return self.deep(x)
        return self.combine(torch.cat([x, self.deep(x0)], dim=-1))
