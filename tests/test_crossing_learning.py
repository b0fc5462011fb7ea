"""Crossing blocks learn crosses: each block fits a pure two-field cross that no sum of per-field functions can fit.

The target is ``(a + b) mod K`` of two categorical fields (plus a field of noise): every single field is independent
of it, so a model additive in the fields stays near chance, while a block that really crosses its fields gets every
combination right. A block whose pooling or residual discards the interaction would fail here.
"""

from __future__ import annotations

import itertools
from functools import partial

import pytest
import torch
from torch import nn

from lightning_retrieval.models.crossing import (
    DCNv2Crossing,
    DHENCrossing,
    MaskNetCrossing,
    MLPCrossing,
    TransformerCrossing,
)
from lightning_retrieval.models.crossing.dhen import DHENLayer

K, D = 4, 8
BLOCKS = {
    "mlp": partial(MLPCrossing, hidden_dims=[32, 16]),
    "masknet": partial(MaskNetCrossing, variant="pinterest", num_blocks=2, block_dim=16, output_dims=[16]),
    "masknet_serial": partial(MaskNetCrossing, variant="serial", num_blocks=2, block_dim=16, output_dims=[16]),
    "dcnv2": partial(DCNv2Crossing, num_cross_layers=2, deep_dims=[16]),
    "transformer_flatten": partial(TransformerCrossing, num_layers=1, num_heads=2, ff_dim=32),
    "transformer_cls": partial(TransformerCrossing, num_layers=1, num_heads=2, ff_dim=32, pooling="cls"),
    "dhen": partial(
        DHENCrossing,
        layers=[
            [
                partial(MLPCrossing, hidden_dims=[16]),
                partial(MaskNetCrossing, num_blocks=1, block_dim=16, output_dims=[16]),
            ],
            [
                partial(MLPCrossing, hidden_dims=[16]),
                partial(TransformerCrossing, num_layers=1, num_heads=2, ff_dim=32),
            ],
        ],
        output_dims=[16],
    ),
}


class Additive(nn.Module):
    """The control: a sum of per-field functions (an MLP per field, then summed): ``[B, F, D]`` -> ``[B, 16]``."""

    def __init__(self, num_fields: int, field_dim: int):
        super().__init__()
        self.per_field = nn.ModuleList(
            nn.Sequential(nn.Linear(field_dim, 32), nn.ReLU(), nn.Linear(32, 16)) for _ in range(num_fields)
        )
        self.output_dim = 16

    def forward(self, fields: torch.Tensor) -> torch.Tensor:
        return sum(f(fields[:, i]) for i, f in enumerate(self.per_field))


def fit_cross(block_factory, steps: int = 100, seed: int = 0) -> float:
    """Train field embeddings + block + linear head on all K^3 combinations; returns the training accuracy."""
    torch.manual_seed(seed)
    codes = torch.tensor(list(itertools.product(range(K), repeat=3)))  # [K^3, 3]: a, b, noise
    target = (codes[:, 0] + codes[:, 1]) % K
    tables = nn.ModuleList(nn.Embedding(K, D) for _ in range(3))
    block = block_factory(3, D)
    head = nn.Linear(block.output_dim, K)
    params = [*tables.parameters(), *block.parameters(), *head.parameters()]
    optimizer = torch.optim.Adam(params, lr=0.01)
    for _ in range(steps):
        fields = torch.stack([table(codes[:, i]) for i, table in enumerate(tables)], dim=1)  # [K^3, 3, D]
        loss = nn.functional.cross_entropy(head(block(fields)), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    block.eval()
    with torch.no_grad():
        fields = torch.stack([table(codes[:, i]) for i, table in enumerate(tables)], dim=1)
        return float((head(block(fields)).argmax(1) == target).float().mean())


def test_an_additive_model_cannot_fit_the_cross():
    """The premise of the block tests: per-field functions summed stay far from the cross (chance is 1/K)."""
    assert fit_cross(Additive) < 0.5


@pytest.mark.parametrize("name", sorted(BLOCKS))
def test_block_fits_a_pure_two_field_cross(name):
    assert fit_cross(BLOCKS[name]) == 1.0


def branch_effects(layer: DHENLayer, fields: torch.Tensor) -> list[float]:
    """Relative change of the layer output ``[B, F, D]`` when each branch's projection is zeroed in turn."""
    with torch.no_grad():
        full = layer(fields)
        effects = []
        for projection in layer.projections:
            saved = projection.weight.clone(), projection.bias.clone()
            projection.weight.zero_()
            projection.bias.zero_()
            effects.append(float((layer(fields) - full).norm() / full.norm()))
            projection.weight.copy_(saved[0])
            projection.bias.copy_(saved[1])
    return effects


@pytest.mark.parametrize("seed", [0, 1])
def test_dhen_branch_norm_puts_every_branch_on_the_same_scale(seed):
    """Summed raw, MaskNet's small outputs (``x ⊙ project(x)`` at init) move a DHEN layer about a third as much as
    the MLP branch; with ``branch_norm`` each branch is LayerNorm-ed first and both move it equally."""
    modules = [
        partial(MLPCrossing, hidden_dims=[16]),
        partial(MaskNetCrossing, num_blocks=1, block_dim=16, output_dims=[16]),
    ]
    fields = nn.functional.layer_norm(torch.randn(64, 3, D, generator=torch.Generator().manual_seed(seed)), (D,))
    torch.manual_seed(seed)
    mlp_effect, masknet_effect = branch_effects(DHENLayer(3, D, modules, "sum", 0.0).eval(), fields)
    assert masknet_effect < 0.5 * mlp_effect
    torch.manual_seed(seed)
    mlp_effect, masknet_effect = branch_effects(DHENLayer(3, D, modules, "sum", 0.0, branch_norm=True).eval(), fields)
    assert masknet_effect == pytest.approx(mlp_effect, rel=0.1)


def test_dhen_branch_norm_needs_sum():
    with pytest.raises(ValueError, match="branch_norm"):
        DHENCrossing(3, D, layers=[[BLOCKS["mlp"]]], combine="concat", branch_norm=True)
