"""DHEN (Zhang et al. 2022): layers that ensemble different crossing modules, stacked with residuals.

Layer n maps fields ``X_n [B, F, D]`` to ``X_{n+1} = LN(X_n + reshape(combine_k P_k(M_k(X_n))))``: every module
``M_k`` (any registered crossing block) sees the same fields, its output is projected back to ``F * D``
(``P_k``), the projections are summed (or concatenated and projected), and the result is added to the
input and normalised, so the next layer again sees F fields.

With ``branch_norm`` each projected branch is LayerNorm-ed per field before the sum
(``LN(X_n + sum_k LN_k(P_k(M_k(X_n))))``). Without it the branches enter the sum at the scale their blocks happen to
produce: at initialisation the Pinterest MaskNet's ``x ⊙ project(x)`` is about 5x smaller than the MLP branch and
13x smaller than the shortcut, so the crossing branch hardly moves the layer (docs/crossing_synthetic_results.md).
"""

from __future__ import annotations

from functools import partial
from typing import Literal

import torch
from torch import nn

from lightning_retrieval.models.crossing.base import CrossingBlock, CrossingFactory, mlp
from lightning_retrieval.models.crossing.masknet import MaskNetCrossing
from lightning_retrieval.models.crossing.mlp import MLPCrossing
from lightning_retrieval.models.crossing.transformer import TransformerCrossing
from lightning_retrieval.registry import register


def pinterest_homefeed_layers() -> list[list[CrossingFactory]]:
    """The seed's DHEN: (MLP ∥ parallel MaskNet) then (MLP ∥ transformer encoder)."""
    return [
        [partial(MLPCrossing, hidden_dims=[256]), partial(MaskNetCrossing, variant="pinterest")],
        [partial(MLPCrossing, hidden_dims=[256]), partial(TransformerCrossing, num_layers=1)],
    ]


class DHENLayer(nn.Module):
    """One ensemble layer: ``[B, F, D]`` -> ``[B, F, D]``."""

    def __init__(
        self,
        num_fields: int,
        field_dim: int,
        modules: list[CrossingFactory],
        combine: str,
        dropout: float,
        branch_norm: bool = False,
    ):
        super().__init__()
        if not modules:
            raise ValueError("a DHEN layer needs at least one module")
        self.blocks = nn.ModuleList(factory(num_fields, field_dim) for factory in modules)
        for block in self.blocks:
            if not isinstance(block, CrossingBlock):
                raise TypeError(f"DHEN modules must be crossing blocks, got {type(block).__name__}")
        width = num_fields * field_dim
        if combine == "sum":
            self.projections = nn.ModuleList(nn.Linear(b.output_dim, width) for b in self.blocks)
        else:
            self.concat_projection = nn.Linear(sum(b.output_dim for b in self.blocks), width)
        self.combine = combine
        self.branch_norms = nn.ModuleList(nn.LayerNorm(field_dim) for _ in self.blocks) if branch_norm else None
        self.norm = nn.LayerNorm(field_dim)
        self.dropout = nn.Dropout(dropout)
        self.shape = (num_fields, field_dim)

    def forward(self, fields: torch.Tensor) -> torch.Tensor:
        outputs = [block(fields) for block in self.blocks]
        if self.combine == "sum":
            branches = [proj(out).view(-1, *self.shape) for proj, out in zip(self.projections, outputs)]
            if self.branch_norms is not None:
                branches = [norm(branch) for norm, branch in zip(self.branch_norms, branches)]
            mixed = torch.stack(branches).sum(0)
        else:
            mixed = self.concat_projection(torch.cat(outputs, dim=-1)).view(-1, *self.shape)
        return self.norm(fields + self.dropout(mixed))


@register("dhen")
class DHENCrossing(CrossingBlock):
    """Hierarchical ensemble of crossing modules; the composition is YAML (registry names per layer).

    Args:
        layers: per layer, the crossing blocks run in parallel, e.g.
            ``[[{class_path: mlp}, {class_path: masknet}], [{class_path: mlp}, {class_path: transformer}]]``.
            Default (null): the Pinterest Homefeed configuration (MLP ∥ MaskNet, then MLP ∥ transformer).
        combine: ``sum`` the modules' projected outputs (as in the KDD'25 appendix) or ``concat`` them.
        output_dims: optional MLP on the flattened final fields (default: output the ``F * D`` fields).
        dropout: dropout on each layer's ensemble output.
        branch_norm: LayerNorm each branch's projected output (per field) before the sum, so every module enters
            at the same scale (only with ``combine: sum``).
    """

    def __init__(
        self,
        num_fields: int,
        field_dim: int,
        layers: list[list[CrossingFactory]] | None = None,
        combine: Literal["sum", "concat"] = "sum",
        output_dims: list[int] | None = None,
        dropout: float = 0.0,
        branch_norm: bool = False,
    ):
        super().__init__(num_fields, field_dim)
        layers = pinterest_homefeed_layers() if layers is None else layers
        if not layers:
            raise ValueError("dhen needs at least one layer")
        if combine not in ("sum", "concat"):
            raise ValueError(f"unknown combine {combine!r}; choose sum or concat")
        if branch_norm and combine != "sum":
            raise ValueError("dhen branch_norm normalises the branches before their sum: it needs combine: sum")
        self.layers = nn.ModuleList(
            DHENLayer(num_fields, field_dim, mods, combine, dropout, branch_norm) for mods in layers
        )
        self.head = mlp([num_fields * field_dim, *output_dims]) if output_dims else None
        self.output_dim = output_dims[-1] if output_dims else num_fields * field_dim

    def forward(self, fields: torch.Tensor) -> torch.Tensor:
        """``[B, F, D]`` -> ``[B, output_dim]``."""
        self.check_input(fields)
        for layer in self.layers:
            fields = layer(fields)
        flat = fields.flatten(1)
        return self.head(flat) if self.head is not None else flat
