"""DCN-v2 cross network (Wang et al. 2021): explicit bounded-degree crosses plus a deep network."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from lightning_retrieval.models.crossing.base import CrossingBlock, mlp
from lightning_retrieval.registry import register


def cross_network(dim: int, num_layers: int, low_rank: int | None, num_experts: int | None) -> nn.Module:
    """torchrec's DCN-v2 cross network on ``[B, dim]``: ``x_{l+1} = x_0 ⊙ (W_l x_l + b_l) + x_l``.

    ``CrossNet`` (full ``W_l``), ``LowRankCrossNet`` (``W_l = U_l V_l``, rank ``low_rank``) or, with
    ``num_experts``, ``LowRankMixtureCrossNet`` (a gated mixture of low-rank experts with a ReLU between V, C and
    U). The first two start from ``nn.Linear``'s initialisation, drawn in the order of the hand-written layers
    they replace, so runs from before reproduce exactly; the mixture keeps torchrec's initialisation.
    """
    from torchrec.modules.crossnet import CrossNet, LowRankCrossNet, LowRankMixtureCrossNet

    if num_experts is not None:
        if low_rank is None or num_experts < 1:
            raise ValueError(
                f"dcnv2 num_experts={num_experts} needs num_experts >= 1 and a low_rank (the experts' rank)"
            )
        return LowRankMixtureCrossNet(dim, num_layers, num_experts=num_experts, low_rank=low_rank)
    if low_rank is not None and low_rank < 1:
        raise ValueError(f"dcnv2 low_rank must be >= 1 or null (full-rank), got {low_rank}")
    with torch.random.fork_rng(devices=[]):  # torchrec's own initial draws are replaced below
        net = CrossNet(dim, num_layers) if low_rank is None else LowRankCrossNet(dim, num_layers, low_rank)
    with torch.no_grad():
        for layer in range(num_layers):
            if low_rank is None:
                linear = nn.Linear(dim, dim)
                net.kernels[layer].copy_(linear.weight)
                net.bias[layer].copy_(linear.bias[:, None])
            else:
                down, up = nn.Linear(dim, low_rank, bias=False), nn.Linear(low_rank, dim)
                net.V_kernels[layer].copy_(down.weight)
                net.W_kernels[layer].copy_(up.weight)
                net.bias[layer].copy_(up.bias)
    return net


@register("dcnv2")
class DCNv2Crossing(CrossingBlock):
    """Cross network v2 on the flattened fields (torchrec's ``CrossNet`` family), combined with an MLP
    ``stacked`` after it or ``parallel``.

    Args:
        num_cross_layers: cross layers (polynomial degree ``num_cross_layers + 1``).
        low_rank: rank of the low-rank cross weights (None = full matrices).
        num_experts: a mixture of this many low-rank experts per layer, gated by the input (DCN-Mix,
            ``LowRankMixtureCrossNet``; needs ``low_rank``). None: one plain (low-rank) cross weight.
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
        num_experts: int | None = None,
    ):
        super().__init__(num_fields, field_dim)
        if num_cross_layers < 1 or not deep_dims:
            raise ValueError(f"dcnv2 needs num_cross_layers >= 1 and deep_dims, got {num_cross_layers}, {deep_dims}")
        if structure not in ("stacked", "parallel"):
            raise ValueError(f"unknown structure {structure!r}; choose stacked or parallel")
        dim = num_fields * field_dim
        self.cross = cross_network(dim, num_cross_layers, low_rank, num_experts)  # [B, dim] -> [B, dim]
        self.deep = mlp([dim, *deep_dims], dropout=dropout)
        self.structure = structure
        if structure == "parallel":
            self.combine = nn.Linear(dim + deep_dims[-1], deep_dims[-1])
        self.output_dim = deep_dims[-1]

    def forward(self, fields: torch.Tensor) -> torch.Tensor:
        """``[B, F, D]`` -> ``[B, deep_dims[-1]]``."""
        self.check_input(fields)
        x0 = fields.flatten(1)
        x = self.cross(x0)
        if self.structure == "stacked":
            return self.deep(x)
        return self.combine(torch.cat([x, self.deep(x0)], dim=-1))
