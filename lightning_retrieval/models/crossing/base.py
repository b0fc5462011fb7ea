"""The crossing-block contract shared by MLP, MaskNet, DHEN, transformer and plugin blocks."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from lightning_retrieval.registry import component_kind


@component_kind("crossing")
class CrossingBlock(nn.Module):
    """Crosses F feature fields of width D into one vector.

    The first two constructor arguments are always ``num_fields`` and ``field_dim``: towers supply them, so
    YAML only sets the block's own hyper-parameters (jsonargparse builds the block as a callable).
    Subclasses set ``self.output_dim`` and implement ``forward(fields [B, F, D]) -> [B, output_dim]``.
    """

    def __init__(self, num_fields: int, field_dim: int):
        super().__init__()
        if num_fields < 1 or field_dim < 1:
            raise ValueError(
                f"a crossing block needs num_fields >= 1 and field_dim >= 1, got {num_fields}, {field_dim}"
            )
        self.num_fields = num_fields
        self.field_dim = field_dim
        self.output_dim = num_fields * field_dim

    def check_input(self, fields: torch.Tensor) -> None:
        if fields.dim() != 3 or fields.shape[1:] != (self.num_fields, self.field_dim):
            raise ValueError(
                f"{type(self).__name__} expects fields of shape [B, {self.num_fields}, {self.field_dim}], "
                f"got {list(fields.shape)}"
            )


CrossingFactory = Callable[[int, int], CrossingBlock]


def mlp(
    dims: list[int],
    dropout: float = 0.0,
    activation: str = "relu",
    layer_norm: bool = False,
    last_activation: bool = True,
) -> nn.Sequential:
    """Linear layers ``dims[0] -> dims[1] -> ...`` with activation (and optional LayerNorm, dropout)."""
    acts = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}
    if activation not in acts:
        raise ValueError(f"unknown activation {activation!r}; choose one of {sorted(acts)}")
    layers: list[nn.Module] = []
    for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
        layers.append(nn.Linear(d_in, d_out))
        if i < len(dims) - 2 or last_activation:
            if layer_norm:
                layers.append(nn.LayerNorm(d_out))
            layers.append(acts[activation]())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)
