"""DCN-v2 on torchrec's CrossNet family: the same computation and initialisation as the hand-written layers it
replaced (``x_{l+1} = x_0 * (W x_l + b) + x_l``, ``W`` full or ``U V``), plus the mixture-of-experts variant."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_retrieval.models.crossing import DCNv2Crossing
from lightning_retrieval.models.crossing.base import mlp


def _reference_cross(x0: torch.Tensor, layers: list[nn.Module]) -> torch.Tensor:
    """The replaced implementation: one ``nn.Linear`` (or low-rank pair) per layer."""
    x = x0
    for weight in layers:
        x = x0 * weight(x) + x
    return x


def _reference_layers(dim: int, num_layers: int, low_rank: int | None) -> list[nn.Module]:
    return [
        nn.Linear(dim, dim)
        if low_rank is None
        else nn.Sequential(nn.Linear(dim, low_rank, bias=False), nn.Linear(low_rank, dim))
        for _ in range(num_layers)
    ]


@pytest.mark.parametrize("low_rank", [None, 3])
@pytest.mark.parametrize("structure", ["stacked", "parallel"])
def test_same_initial_weights_and_outputs_as_the_hand_written_layers(low_rank, structure):
    """Same seed -> the same parameters, drawn in the same order (so committed runs reproduce), same outputs."""
    num_fields, field_dim, num_layers, deep = 3, 4, 2, [16, 8]
    dim = num_fields * field_dim
    torch.manual_seed(7)
    block = DCNv2Crossing(num_fields, field_dim, num_layers, low_rank, deep, structure)
    after_block = torch.rand(1)
    torch.manual_seed(7)
    layers = _reference_layers(dim, num_layers, low_rank)
    deep_net = mlp([dim, *deep])
    combine = nn.Linear(dim + deep[-1], deep[-1]) if structure == "parallel" else None
    assert torch.equal(torch.rand(1), after_block)  # the same number of draws
    fields = torch.randn(5, num_fields, field_dim)
    x0 = fields.flatten(1)
    crossed = _reference_cross(x0, layers)
    torch.testing.assert_close(block.cross(x0), crossed)
    expected = deep_net(crossed) if combine is None else combine(torch.cat([crossed, deep_net(x0)], dim=-1))
    block.eval(), deep_net.eval()
    torch.testing.assert_close(block(fields), expected)


def test_copied_random_weights_give_the_same_crosses():
    """Independent of initialisation: any weights copied into both forms give the same crosses."""
    dim, rank = 6, 2
    block = DCNv2Crossing(2, 3, num_cross_layers=3, low_rank=rank, deep_dims=[4])
    layers = _reference_layers(dim, 3, rank)
    with torch.no_grad():
        for i, layer in enumerate(layers):
            down, up = layer
            for p in (down.weight, up.weight, up.bias):
                p.normal_()
            block.cross.V_kernels[i].copy_(down.weight)
            block.cross.W_kernels[i].copy_(up.weight)
            block.cross.bias[i].copy_(up.bias)
    x0 = torch.randn(4, dim)
    torch.testing.assert_close(block.cross(x0), _reference_cross(x0, layers))


def test_mixture_of_low_rank_experts_is_a_gated_sum_of_experts():
    """``num_experts``: torchrec's LowRankMixtureCrossNet; with one layer, the output is
    x0 * sum_i softmax(gates)_i (U_i relu(C_i relu(V_i x0)) + b) + x0."""
    torch.manual_seed(0)
    block = DCNv2Crossing(2, 3, num_cross_layers=1, low_rank=2, num_experts=3, deep_dims=[4])
    net = block.cross
    assert type(net).__name__ == "LowRankMixtureCrossNet"
    x0 = torch.randn(5, 6)
    experts, gates = [], []
    for i in range(3):
        hidden = torch.relu(torch.relu(x0 @ net.V_kernels[0][i].T) @ net.C_kernels[0][i].T)
        experts.append(x0 * (hidden @ net.U_kernels[0][i].T + net.bias[0][:, 0]))
        gates.append(net.gates[i](x0))
    weights = torch.softmax(torch.cat(gates, dim=1), dim=1)  # [B, K]
    expected = (torch.stack(experts, dim=2) * weights[:, None, :]).sum(2) + x0
    torch.testing.assert_close(net(x0), expected)
    assert block(torch.randn(5, 2, 3)).shape == (5, 4)


def test_mixture_needs_a_rank():
    with pytest.raises(ValueError, match="low_rank"):
        DCNv2Crossing(2, 3, num_experts=2)
    with pytest.raises(ValueError, match="low_rank"):
        DCNv2Crossing(2, 3, low_rank=0)
