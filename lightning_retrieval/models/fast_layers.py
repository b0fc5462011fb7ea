"""Layers computed around stock CPU kernels that are slow at the shapes attention pooling uses."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class AttentionLogits(nn.Sequential):
    """``W2 tanh(W1 x)``: logits ``[B, L, K]`` of K attention heads over ``x [B, L, D]`` (ComiRec-SA).

    The state dict of ``Sequential(Linear(D, H, bias=False), Tanh(), Linear(H, K, bias=False))``. On CPU it is
    computed as ``(2 W2) sigmoid((2 W1) x) - W2 1`` (the identity ``tanh(z) = 2 sigmoid(2z) - 1``; equal to float
    precision), with the second product batched over B:

    - ``torch.tanh`` of ``[B*L, H]`` takes ~20x ``torch.sigmoid``'s time on the benchmark CPU (AVX-512);
    - the input gradient of the second product, ``[B*L, K] x [K, H]`` with K = 4, is ~15x slower as one matrix
      product than batched over B.

    Other devices run the stock layers.
    """

    def __init__(self, in_dim: int, hidden_dim: int, heads: int):
        super().__init__(nn.Linear(in_dim, hidden_dim, bias=False), nn.Tanh(), nn.Linear(hidden_dim, heads, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu" or x.dim() != 3:
            return super().forward(x)
        first, _, second = self
        hidden = torch.sigmoid(F.linear(x, 2 * first.weight))  # (tanh(W1 x) + 1) / 2
        logits = torch.bmm(hidden, (2 * second.weight).t().expand(x.shape[0], -1, -1))
        return logits - second.weight.sum(1)
