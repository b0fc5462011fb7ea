"""MaskNet feature crossing: instance-guided masks (Wang et al. 2021) and Pinterest's parallel variant.

Notation: ``x`` = the flattened, per-field LayerNorm-ed fields ``[B, F*D]`` (the tower normalises each field).

- ``pinterest`` (Homefeed blog): each block multiplies ``x`` by a two-layer-MLP projection of itself
  (``x ⊙ MLP(x)``), then refines it with a second two-layer MLP; ``num_blocks`` blocks run in parallel and a
  bottleneck MLP combines their concatenation.
- ``parallel`` (ParaMaskNet): each MaskBlock gates ``LN(x)`` with an instance-guided mask computed from ``x``:
  ``ReLU(LN(W_o (mask(x) ⊙ LN(x))))`` (``W_o`` bias-free); blocks are concatenated, then an MLP.
- ``serial`` (SerMaskNet): block 1 gates ``LN(x)``, block k gates block k-1's output; every mask is still
  computed from ``x`` (the raw embedding), never from the hidden state.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from lightning_retrieval.models.crossing.base import CrossingBlock, mlp
from lightning_retrieval.registry import register


class InstanceMask(nn.Module):
    """``mask(x) = W2 · ReLU(W1 · x)``: ``[B, in_dim]`` -> ``[B, out_dim]``, hidden width ``ratio * in_dim``."""

    def __init__(self, in_dim: int, out_dim: int, ratio: float):
        super().__init__()
        hidden = max(1, int(round(in_dim * ratio)))
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class MaskBlock(nn.Module):
    """``ReLU(LN(W_o (mask(x) ⊙ h)))``: the mask comes from ``x`` ``[B, in_dim]``, ``h`` ``[B, h_dim]`` is gated."""

    def __init__(self, in_dim: int, h_dim: int, out_dim: int, ratio: float, dropout: float):
        super().__init__()
        self.mask = InstanceMask(in_dim, h_dim, ratio)
        self.output = nn.Linear(h_dim, out_dim, bias=False)
        self.norm = nn.LayerNorm(out_dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return self.dropout(torch.relu(self.norm(self.output(self.mask(x) * h))))


class PinterestMaskBlock(nn.Module):
    """``refine(x ⊙ project(x))`` with two-layer MLPs for ``project`` (back to ``in_dim``) and ``refine``."""

    def __init__(self, in_dim: int, out_dim: int, ratio: float, dropout: float):
        super().__init__()
        self.project = InstanceMask(in_dim, in_dim, ratio)
        hidden = max(out_dim, 1)
        self.refine = nn.Sequential(
            nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, out_dim), nn.Dropout(dropout)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.refine(x * self.project(x))


@register("masknet")
class MaskNetCrossing(CrossingBlock):
    """MaskNet with Pinterest's parallel blocks (default) or the paper's serial / parallel MaskBlocks.

    Args:
        variant: ``pinterest``, ``parallel`` or ``serial`` (see the module docstring).
        num_blocks: MaskBlocks (4 in Pinterest's Homefeed towers).
        block_dim: output width of each block.
        mask_ratio: hidden width of each mask MLP as a multiple of its input width (Pinterest's
            ``project_ratio``; the KDD'25 appendix uses 0.5).
        output_dims: MLP after the blocks (the bottleneck for ``pinterest``/``parallel``; the output layer
            for ``serial``); its last width is the block's output width.
        dropout: dropout inside the blocks.
    """

    def __init__(
        self,
        num_fields: int,
        field_dim: int,
        variant: Literal["pinterest", "parallel", "serial"] = "pinterest",
        num_blocks: int = 4,
        block_dim: int = 128,
        mask_ratio: float = 0.5,
        output_dims: list[int] = [256, 128],
        dropout: float = 0.0,
    ):
        super().__init__(num_fields, field_dim)
        if num_blocks < 1 or block_dim < 1 or mask_ratio <= 0 or not output_dims:
            raise ValueError(
                f"masknet needs num_blocks >= 1, block_dim >= 1, mask_ratio > 0 and output_dims; got "
                f"{num_blocks}, {block_dim}, {mask_ratio}, {output_dims}"
            )
        in_dim = num_fields * field_dim
        self.variant = variant
        if variant == "pinterest":
            self.blocks = nn.ModuleList(
                PinterestMaskBlock(in_dim, block_dim, mask_ratio, dropout) for _ in range(num_blocks)
            )
        elif variant == "parallel":
            self.input_norm = nn.LayerNorm(in_dim)
            self.blocks = nn.ModuleList(
                MaskBlock(in_dim, in_dim, block_dim, mask_ratio, dropout) for _ in range(num_blocks)
            )
        elif variant == "serial":
            self.input_norm = nn.LayerNorm(in_dim)
            dims = [in_dim] + [block_dim] * num_blocks
            self.blocks = nn.ModuleList(
                MaskBlock(in_dim, d_in, d_out, mask_ratio, dropout) for d_in, d_out in zip(dims[:-1], dims[1:])
            )
        else:
            raise ValueError(f"unknown masknet variant {variant!r}; choose pinterest, parallel or serial")
        combined = block_dim if variant == "serial" else num_blocks * block_dim
        self.head = mlp([combined, *output_dims])
        self.output_dim = output_dims[-1]

    def forward(self, fields: torch.Tensor) -> torch.Tensor:
        """``[B, F, D]`` -> ``[B, output_dims[-1]]``."""
        self.check_input(fields)
        x = fields.flatten(1)
        if self.variant == "pinterest":
            combined = torch.cat([block(x) for block in self.blocks], dim=-1)
        elif self.variant == "parallel":
            h = self.input_norm(x)
            combined = torch.cat([block(x, h) for block in self.blocks], dim=-1)
        else:
            combined = self.input_norm(x)
            for block in self.blocks:
                combined = block(x, combined)
        return self.head(combined)
