"""Why does a crossing block learn (or not learn) a planted cross? Exact-loss diagnostics on ``synthetic_crosses``.

The towers see only the categorical side features (user: segment, region, device; item: category, style, brand,
K values each), no IDs, so nothing but the features can explain the interactions. Every (user, item) combination
is scored (64 x 64 at K = 4) and the loss is the exact expected sampled-softmax cross-entropy against the
generating distribution of ``SyntheticCrossesSource``, so the optimum is known (its entropy) and there is no
sampling noise: a block that stays above it is stuck, not unlucky.

Per block it prints, at chosen steps:

- ``excess``: loss minus the entropy of the true distribution (0 = the block learned the preference exactly);
- ``cross``: the share of the user tower's output variance that is the (segment x region) interaction (a two-way
  ANOVA over the 16 (segment, region) cells, averaged over device); the cross type lives only there at s = 1;
- ``grad``: gradient norm of the block's parameters and of the field embeddings at step 0;
- ``learned_at_step``: the first step with excess below ``LEARNED`` (None: not within ``--steps``).

    OMP_NUM_THREADS=1 python benchmarks/crossing_diagnostics.py --blocks mlp transformer dhen --steps 500
"""

from __future__ import annotations

import argparse
import itertools
import json
from functools import partial

import numpy as np
import torch
from torch import nn

from lightning_retrieval.cli import prepare_registry
from lightning_retrieval.data.synthetic_crosses import SyntheticCrossesSource
from lightning_retrieval.models.crossing import (
    DCNv2Crossing,
    DHENCrossing,
    MaskNetCrossing,
    MLPCrossing,
    TransformerCrossing,
)
from lightning_retrieval.models.towers import FeatureCrossingTower

LEARNED = 0.1  # excess loss (nats) below which the preference counts as learned ("learned_at_step")

# the blocks as configured in configs/crossing_synthetic/*_cross1.yaml
BLOCKS = {
    "mlp": partial(MLPCrossing, hidden_dims=[128, 64]),
    "mlp_wide": partial(MLPCrossing, hidden_dims=[256, 192]),
    "masknet": partial(MaskNetCrossing, variant="pinterest", num_blocks=2, block_dim=64, output_dims=[128, 64]),
    "dcnv2": partial(DCNv2Crossing, num_cross_layers=2, deep_dims=[128, 64]),
    "transformer": partial(TransformerCrossing, num_layers=1, num_heads=2, ff_dim=64),
    "dhen": partial(
        DHENCrossing,
        layers=[
            [
                partial(MLPCrossing, hidden_dims=[64]),
                partial(MaskNetCrossing, variant="pinterest", num_blocks=2, block_dim=64, output_dims=[64]),
            ],
            [
                partial(MLPCrossing, hidden_dims=[64]),
                partial(TransformerCrossing, num_layers=1, num_heads=2, ff_dim=64),
            ],
        ],
        output_dims=[128, 64],
    ),
}
BLOCKS["dhen_branch_norm"] = partial(BLOCKS["dhen"], branch_norm=True)


class FeatureTwoTower(nn.Module):
    """Field embeddings ``[K, D]`` per feature -> tower per side; scores ``[U, I]`` over all combinations."""

    def __init__(self, block, num_values: int, dim: int, output_dim: int, temperature: float = 0.05):
        super().__init__()
        self.user_fields = nn.ModuleList(nn.Embedding(num_values, dim) for _ in range(3))
        self.item_fields = nn.ModuleList(nn.Embedding(num_values, dim) for _ in range(3))
        self.user_tower = FeatureCrossingTower(3, dim, crossing=block, output_dim=output_dim)
        self.item_tower = FeatureCrossingTower(3, dim, crossing=block, output_dim=output_dim)
        self.log_inv_temperature = nn.Parameter(torch.tensor(float(np.log(1.0 / temperature))))

    @staticmethod
    def embed(tables: nn.ModuleList, codes: torch.Tensor) -> torch.Tensor:
        return torch.stack([table(codes[:, i]) for i, table in enumerate(tables)], dim=1)  # [N, 3, D]

    def forward(self, user_codes: torch.Tensor, item_codes: torch.Tensor) -> torch.Tensor:
        users = self.user_tower(self.embed(self.user_fields, user_codes))
        items = self.item_tower(self.embed(self.item_fields, item_codes))
        return users @ items.T * self.log_inv_temperature.clamp(max=np.log(100.0)).exp()


def true_distribution(cross_strength: float, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Codes of every user / item combination ``[K^3, 3]`` and ``p(item combo | user combo)`` ``[K^3, K^3]``."""
    source = SyntheticCrossesSource(cross_strength=cross_strength, num_values=k)
    logits = source._cell_logits()  # [K*K user pairs, K*K item cells]
    codes = torch.tensor(list(itertools.product(range(k), repeat=3)))  # (first, second, noise feature)
    pair = (codes[:, 0] * k + codes[:, 1]).numpy()
    cell_probs = np.exp(logits - logits.max(1, keepdims=True))
    cell_probs /= cell_probs.sum(1, keepdims=True)
    probs = cell_probs[pair][:, pair] / k  # the noise feature (brand) is uniform within a cell
    probs = (1 - source.noise) * probs + source.noise / len(codes)
    return codes, codes.clone(), torch.tensor(probs, dtype=torch.float32)


def cross_share(outputs: torch.Tensor, codes: torch.Tensor, k: int) -> float:
    """Share of the variance of ``outputs [K^3, E]`` (averaged over the third feature) in the first x second
    interaction of a two-way ANOVA over the K x K cells."""
    cells = torch.zeros(k, k, outputs.shape[1])
    cells.index_put_((codes[:, 0], codes[:, 1]), outputs, accumulate=True)
    cells /= k
    centred = cells - cells.mean((0, 1))
    interaction = centred - centred.mean(1, keepdim=True) - centred.mean(0, keepdim=True)
    total = centred.pow(2).sum()
    return float(interaction.pow(2).sum() / total) if total > 0 else 0.0


def attention_entropy(model: FeatureTwoTower, codes: torch.Tensor) -> float | None:
    """Mean entropy (nats) of the user tower's first attention layer over fields; log(F) = uniform."""
    block = model.user_tower.crossing
    if not isinstance(block, TransformerCrossing):
        return None
    fields = model.embed(model.user_fields, codes)
    fields = torch.stack([norm(fields[:, i]) for i, norm in enumerate(model.user_tower.field_norm)], dim=1)
    x = fields + block.position if block.position is not None else fields
    layer = block.encoder.layers[0]
    h = layer.norm1(x) if layer.norm_first else x
    _, weights = layer.self_attn(h, h, h, need_weights=True, average_attn_weights=False)  # [N, H, F, F]
    return float(-(weights * weights.clamp_min(1e-12).log()).sum(-1).mean())


def run(name: str, cross_strength: float, steps: int, lr: float, seed: int, report: list[int], k: int = 4) -> dict:
    torch.manual_seed(seed)
    user_codes, item_codes, probs = true_distribution(cross_strength, k)
    model = FeatureTwoTower(BLOCKS[name], k, dim=32, output_dim=32)
    entropy = float(-(probs * probs.log()).sum(1).mean())
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    history, learned_at = [], None
    for step in range(steps + 1):
        scores = model(user_codes, item_codes)
        loss = -(probs * torch.log_softmax(scores, dim=1)).sum(1).mean()
        optimizer.zero_grad()
        loss.backward()
        if step == 0:
            grads = {
                "block": float(torch.cat([p.grad.flatten() for p in model.user_tower.crossing.parameters()]).norm()),
                "embeddings": float(torch.cat([p.grad.flatten() for p in model.user_fields.parameters()]).norm()),
            }
        if learned_at is None and float(loss.detach()) - entropy < LEARNED:
            learned_at = step
        if step in report:
            with torch.no_grad():
                users = model.user_tower(model.embed(model.user_fields, user_codes))
            entry = {"step": step, "excess": float(loss.detach()) - entropy, "cross": cross_share(users, user_codes, k)}
            ent = attention_entropy(model, user_codes)
            if ent is not None:
                entry["attention_entropy"] = ent
            history.append(entry)
        optimizer.step()
    return {
        "block": name,
        "cross_strength": cross_strength,
        "seed": seed,
        "learned_at_step": learned_at,
        "grad_at_init": grads,
        "history": history,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blocks", nargs="+", default=sorted(BLOCKS), choices=sorted(BLOCKS))
    parser.add_argument("--cross-strength", type=float, default=1.0)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--lr", type=float, default=0.002)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--report", type=int, nargs="+", default=[0, 50, 100, 200, 300, 500])
    args = parser.parse_args()
    prepare_registry()
    torch.set_num_threads(1)
    for name in args.blocks:
        for seed in args.seeds:
            result = run(name, args.cross_strength, args.steps, args.lr, seed, args.report)
            print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
