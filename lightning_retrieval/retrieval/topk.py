"""Exact row-wise top-k of a score block, faster than ``torch.topk`` on CPU for wide rows."""

from __future__ import annotations

import torch

CHUNKS = 8  # elements per chunk: the fastest of 4-16 at 610 x 9,744 and 610 x 20,000 (k = 100, one thread)


def chunked_topk(scores: torch.Tensor, k: int, out: tuple[torch.Tensor, torch.Tensor] | None = None):
    """``torch.topk(scores [B, N], k, dim=1)`` (values sorted descending, int64 column indices), computed from
    the candidates in the ``k`` best of ``N // CHUNKS`` chunks.

    Chunk ``j`` holds columns ``j, j + w, ..., j + (CHUNKS - 1) w`` (``w = N // CHUNKS``; the last ``N % CHUNKS``
    columns are always candidates). Exact: let ``v`` be a row's k-th largest score and ``g < k`` the number of
    elements above it. At most ``g`` chunks have a maximum above ``v``, and they rank first: all are kept, so every
    element above ``v`` is a candidate. The chunks with maximum ``v`` rank next: all of them are kept, or at least
    ``k - g`` of them, each holding an element equal to ``v``; so the candidates hold the row's top-k values. Values
    equal ``torch.topk``'s (up to the sign of tied zeros); indices too, except which of equal scores is returned
    (``torch.topk`` leaves that open as well). On CPU torch's top-k costs ~5 ns per element; this is one pass of
    maxima over the block and two top-k's over ``N / CHUNKS`` and ``k * CHUNKS`` columns
    (``benchmarks/results/eval_throughput.md``: the bare matmul + top-100 at 610 x 9,742 and 5,000 x 20,000).
    Other devices, and rows too short for chunks to prune (``N < 2 k CHUNKS``), use ``torch.topk``. ``out``:
    ``(values, indices)`` of shape ``[B, k]``, the scores' dtype and int64."""
    b, n = scores.shape
    if out is not None and (
        out[0].shape != (b, k) or out[1].shape != (b, k) or out[0].dtype != scores.dtype or out[1].dtype != torch.long
    ):
        raise ValueError(
            f"out must be ([{b}, {k}] {scores.dtype}, [{b}, {k}] int64) tensors, got "
            f"({list(out[0].shape)} {out[0].dtype}, {list(out[1].shape)} {out[1].dtype})"
        )
    w = n // CHUNKS
    if scores.device.type != "cpu" or w < 2 * k:
        return torch.topk(scores, k, dim=1, out=out)
    best = scores[:, :w].clone()
    for r in range(1, CHUNKS):
        torch.maximum(best, scores[:, r * w : (r + 1) * w], out=best)  # NaN propagates: a NaN chunk is kept
    chunks = torch.topk(best, k, dim=1, sorted=False).indices  # [B, k]
    starts = torch.arange(0, CHUNKS * w, w, device=scores.device)
    candidates = (chunks[:, None, :] + starts[None, :, None]).view(b, CHUNKS * k)
    if n > CHUNKS * w:  # the tail columns outside every chunk
        tail = torch.arange(CHUNKS * w, n, device=scores.device).expand(b, -1)
        candidates = torch.cat([candidates, tail], dim=1)
    top = torch.topk(scores.gather(1, candidates), k, dim=1)
    ids = candidates.gather(1, top.indices)
    if out is None:
        return torch.return_types.topk((top.values, ids))
    out[0].copy_(top.values)
    out[1].copy_(ids)
    return torch.return_types.topk(out)
