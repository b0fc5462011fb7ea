"""Towers (registry kind ``towers``): per-field normalisation, a crossing block, projection, L2 norm."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from lightning_retrieval.models.crossing.base import CrossingBlock, CrossingFactory
from lightning_retrieval.models.crossing.mlp import MLPCrossing
from lightning_retrieval.registry import component_kind, register


@component_kind("towers")
class Tower(nn.Module):
    """Maps F feature fields ``[B, F, D]`` to one embedding ``[B, output_dim]``.

    Constructor arguments start with ``num_fields, field_dim`` (supplied by the task).
    """

    output_dim: int


TowerFactory = Callable[[int, int], Tower]


@register("feature_crossing")
class FeatureCrossingTower(Tower):
    """LayerNorm per field -> crossing block -> linear projection -> (optional) L2 normalisation.

    Args:
        crossing: the crossing block, picked by registry name (``mlp``, or a plugin's).
        output_dim: width of the tower's embedding.
        field_layer_norm: LayerNorm each field separately before crossing (as in Pinterest's towers).
        normalize: L2-normalise the output (scores become cosines; the loss has a temperature).
    """

    def __init__(
        self,
        num_fields: int,
        field_dim: int,
        crossing: CrossingFactory = MLPCrossing,
        output_dim: int = 64,
        field_layer_norm: bool = True,
        normalize: bool = True,
    ):
        super().__init__()
        self.num_fields, self.field_dim = num_fields, field_dim
        self.field_norm = (
            nn.ModuleList(nn.LayerNorm(field_dim) for _ in range(num_fields)) if field_layer_norm else None
        )
        self.crossing: CrossingBlock = crossing(num_fields, field_dim)
        if not isinstance(self.crossing, CrossingBlock):
            raise TypeError(f"crossing must build a CrossingBlock, got {type(self.crossing).__name__}")
        self.projection = nn.Linear(self.crossing.output_dim, output_dim)
        self.output_dim = output_dim
        self.normalize = normalize

    def forward(self, fields: torch.Tensor) -> torch.Tensor:
        """``[B, F, D]`` -> ``[B, output_dim]``."""
        if self.field_norm is not None:
            fields = torch.stack([norm(fields[:, i]) for i, norm in enumerate(self.field_norm)], dim=1)
        out = self.projection(self.crossing(fields))
        return F.normalize(out, dim=-1) if self.normalize else out
