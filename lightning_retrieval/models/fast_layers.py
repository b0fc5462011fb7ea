"""Layers computed around stock CPU kernels that are slow at the shapes attention pooling uses."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

CHUNK_ROWS = 1024  # rows (users x positions) per block of the CPU attention logits: [rows, H] stays in cache


class AttentionLogits(nn.Sequential):
    """``W2 tanh(W1 x)``: logits ``[B, L, K]`` of K attention heads over ``x [B, L, D]`` (ComiRec-SA).

    The state dict of ``Sequential(Linear(D, H, bias=False), Tanh(), Linear(H, K, bias=False))``. On CPU it is
    computed as ``(2 W2) sigmoid((2 W1) x) - W2 1`` (the identity ``tanh(z) = 2 sigmoid(2z) - 1``; equal to float
    precision) by :class:`BlockedAttentionLogits`, a block of users at a time:

    - ``torch.tanh`` of ``[B*L, H]`` takes ~20x ``torch.sigmoid``'s time on the benchmark CPU (AVX-512);
    - the input gradient of the second product, ``[B*L, K] x [K, H]`` with K = 4, is ~15x slower as one matrix
      product than batched over B;
    - the ``[B, L, H]`` intermediates (26 MB each at B = 512, L = 50, H = 256) were fresh pages on every call;
      blocks of ~1,000 rows stay in cache and reuse their memory (fwd + bwd 80 -> 55 ms at those shapes).

    :meth:`indexed` takes the input as distinct rows plus indices (a history's items and positions) and runs the
    ``[*, D] x [D, H]`` products once per distinct row (fwd + bwd with the lookups 62 -> 33 ms at those shapes).
    Other devices, dtypes and autocast run the stock layers.
    """

    def __init__(self, in_dim: int, hidden_dim: int, heads: int):
        super().__init__(nn.Linear(in_dim, hidden_dim, bias=False), nn.Tanh(), nn.Linear(hidden_dim, heads, bias=False))

    def _fast(self, x: torch.Tensor) -> bool:
        """The hand-written CPU path: float32 input and weights, no autocast (it would change the dtypes inside
        the products); anything else runs the stock layers."""
        return (
            x.device.type == "cpu"
            and x.dtype == torch.float32
            and all(layer.weight.dtype == torch.float32 for layer in (self[0], self[2]))
            and not torch.is_autocast_enabled("cpu")
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3 or not self._fast(x):
            return super().forward(x)
        first, _, second = self
        block = max(1, CHUNK_ROWS // max(1, x.shape[1]))
        return BlockedAttentionLogits.apply(x, first.weight, second.weight, block)

    def indexed(
        self, rows: torch.Tensor, positions: torch.Tensor, row_index: torch.Tensor, position_index: torch.Tensor
    ) -> torch.Tensor:
        """Logits ``[N, K]`` of ``x_n = rows[row_index[n]] + positions[position_index[n]]`` (``rows [U, D]``,
        ``positions [R, D]``, indices ``[N]``): ``W1 x_n`` is ``(W1 rows)[row_index] + (W1 positions)[position_index]``,
        so the ``[*, D] x [D, H]`` products run once per distinct row (U, R) instead of once per position (N) —
        a history of 25,600 positions holds ~5,000 distinct items (:class:`IndexedAttentionLogits`)."""
        first, _, second = self
        if not self._fast(rows) or positions.dtype != torch.float32:
            return super().forward(rows[row_index] + positions[position_index])
        return IndexedAttentionLogits.apply(rows, positions, row_index, position_index, first.weight, second.weight)


class BlockedAttentionLogits(torch.autograd.Function):
    """``W2 tanh(W1 x)`` for ``x [B, L, D]``, ``W1 [H, D]``, ``W2 [K, H]`` -> ``[B, L, K]``, ``block`` users at a
    time, forward and backward (gradients of x, W1, W2), keeping each block's ``sigmoid(2 W1 x)`` for the backward
    as autograd would keep the hidden layer."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, block: int) -> torch.Tensor:
        w1_twice, w2_twice = 2 * w1, (2 * w2).t()
        out = x.new_empty(*x.shape[:2], w2.shape[0])
        hidden = []
        for start in range(0, x.shape[0], block):
            part = x[start : start + block]
            s = torch.sigmoid_(F.linear(part, w1_twice))  # (tanh(W1 x) + 1) / 2, [b, L, H]
            torch.bmm(s, w2_twice.expand(part.shape[0], -1, -1), out=out[start : start + block])
            hidden.append(s)
        out -= w2.sum(1)
        ctx.block = block
        ctx.save_for_backward(x, w1, w2, *hidden)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, w1, w2, *hidden = ctx.saved_tensors
        grad_x = torch.empty(x.shape, dtype=x.dtype, device=x.device)  # contiguous whatever x's layout
        grad_w1, grad_w2 = torch.zeros_like(w1), torch.zeros_like(w2)
        w2_four = 4 * w2  # d tanh(z) / dz = 1 - tanh² = 4 s (1 - s)
        for s, start in zip(hidden, range(0, x.shape[0], ctx.block)):
            g = grad[start : start + ctx.block]
            grad_z = torch.ops.aten.sigmoid_backward(torch.bmm(g, w2_four.expand(g.shape[0], -1, -1)), s)
            torch.matmul(grad_z, w1, out=grad_x[start : start + ctx.block])
            grad_w1.addmm_(grad_z.flatten(0, 1).t(), x[start : start + ctx.block].flatten(0, 1))
            g_rows = g.flatten(0, 1)
            grad_w2.addmm_(g_rows.t(), s.flatten(0, 1), alpha=2)  # g^T tanh = 2 g^T s - g^T 1
            grad_w2 -= g_rows.sum(0)[:, None]
        return grad_x, grad_w1, grad_w2, None


class IndexedAttentionLogits(torch.autograd.Function):
    """``W2 tanh(W1 (rows[i] + positions[j]))`` -> ``[N, K]`` for ``rows [U, D]``, ``positions [R, D]``, index
    pairs ``(i, j)`` ``[N]``, ``W1 [H, D]``, ``W2 [K, H]``, as ``(2 W2) sigmoid(A[i] + Q[j]) - W2 1`` with
    ``A = 2 rows W1^T [U, H]``, ``Q = 2 positions W1^T [R, H]``; ``CHUNK_ROWS`` pairs at a time. The backward
    accumulates the gradients of A and Q per block (index_add) and multiplies by ``W1`` once."""

    @staticmethod
    def forward(ctx, rows, positions, row_index, position_index, w1, w2) -> torch.Tensor:
        aq = torch.cat([rows, positions]) @ (2 * w1).t()  # [U + R, H]: A, then Q
        pairs = torch.stack([row_index, position_index + rows.shape[0]], 1)  # [N, 2] rows of A and Q to add
        w2_twice = (2 * w2).t()
        out = rows.new_empty(row_index.shape[0], w2.shape[0])
        hidden = []
        for start in range(0, row_index.shape[0], CHUNK_ROWS):
            end = start + CHUNK_ROWS
            s = F.embedding_bag(pairs[start:end], aq, mode="sum").sigmoid_()  # one pass: A[i] + Q[j], [n, H]
            torch.mm(s, w2_twice, out=out[start:end])
            hidden.append(s)  # [n, H] (tanh(W1 x) + 1) / 2, kept for the backward as autograd would
        out -= w2.sum(1)
        ctx.save_for_backward(rows, positions, row_index, position_index, w1, w2, *hidden)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        rows, positions, row_index, position_index, w1, w2, *hidden = ctx.saved_tensors
        grad_a = rows.new_zeros(rows.shape[0], w1.shape[0])  # d loss / d (W1 rows), [U, H]
        grad_q = rows.new_zeros(positions.shape[0], w1.shape[0])
        grad_w2 = torch.zeros_like(w2)
        w2_four = 4 * w2  # d tanh(z) / dz = 1 - tanh² = 4 s (1 - s)
        for s, start in zip(hidden, range(0, grad.shape[0], CHUNK_ROWS)):
            end = start + CHUNK_ROWS
            g = grad[start:end]
            n = g.shape[0]
            if n % 64 == 0:  # [n, K] x [K, H] with K = 4 is several times faster batched than as one product
                grad_z = torch.bmm(g.view(n // 64, 64, -1), w2_four.expand(n // 64, -1, -1)).view(n, -1)
            else:
                grad_z = g @ w2_four
            grad_z = torch.ops.aten.sigmoid_backward(grad_z, s)
            grad_a.index_add_(0, row_index[start:end], grad_z)
            grad_q.index_add_(0, position_index[start:end], grad_z)
            grad_w2.addmm_(g.t(), s, alpha=2)  # g^T tanh = 2 g^T s - g^T 1
            grad_w2 -= g.sum(0)[:, None]
        grad_w1 = grad_a.t() @ rows + grad_q.t() @ positions
        return grad_a @ w1, grad_q @ w1, None, None, grad_w1, grad_w2
