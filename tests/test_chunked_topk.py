"""The chunked top-k of exact_torch equals torch.topk (values bit for bit, indices up to equal scores)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lightning_retrieval.data.preparation import CSR
from lightning_retrieval.retrieval import TorchExactIndex
from lightning_retrieval.retrieval.topk import CHUNKS, chunked_topk


@pytest.mark.parametrize("n", [1600, 1607, 9742, 20000])
@pytest.mark.parametrize("k", [1, 10, 100])
def test_equals_torch_topk_on_random_scores(n, k):
    g = torch.Generator().manual_seed(n + k)
    scores = torch.randn(37, 16, generator=g) @ torch.randn(n, 16, generator=g).T
    scores.view(-1)[torch.randint(0, scores.numel(), (scores.numel() // 10,), generator=g)] = float("-inf")
    expected = torch.topk(scores, k, dim=1)
    got = chunked_topk(scores, k)
    assert torch.equal(got.values, expected.values) and torch.equal(got.indices, expected.indices)


def test_the_top_elements_all_in_one_chunk_or_in_the_tail_are_found():
    """Adversarial layouts: a row's k best in the same few chunks (columns j + r w), or in the tail columns that
    belong to no chunk; a pruning bound that is not exact would drop some of them."""
    n, k = 2003, 12
    w = n // CHUNKS
    scores = torch.zeros(3, n)
    for r in range(CHUNKS):  # row 0: the best 16 in two chunks (columns 5 + r w and 6 + r w)
        scores[0, 5 + r * w], scores[0, 6 + r * w] = 10.0 + r, 20.0 + r
    scores[1, CHUNKS * w :] = torch.arange(1.0, n - CHUNKS * w + 1) + 100  # row 1: the tail holds the best 3
    scores[1, :k] = torch.arange(50.0, 50.0 + k)
    scores[2] = torch.arange(n, dtype=torch.float32)  # row 2: increasing (the best k in the last columns)
    expected = torch.topk(scores, k, dim=1)
    got = chunked_topk(scores, k)
    assert torch.equal(got.values, expected.values)
    assert all(set(a.tolist()) == set(b.tolist()) for a, b in zip(got.indices[:, :8], expected.indices[:, :8]))


def test_ties_keep_the_values_and_pick_tied_columns():
    scores = torch.zeros(2, 4000)
    scores[0, ::7] = 1.0  # 572 tied maxima spread over the chunks
    got = chunked_topk(scores, 50)
    assert torch.equal(got.values, torch.topk(scores, 50, dim=1).values)
    assert bool((scores[0, got.indices[0]] == 1.0).all())
    assert len(set(got.indices[0].tolist())) == 50  # no column twice


def test_nan_scores_come_first_as_in_torch_topk():
    scores = torch.randn(2, 3000)
    scores[0, 1234] = float("nan")
    got, expected = chunked_topk(scores, 5), torch.topk(scores, 5, dim=1)
    assert torch.isnan(got.values[0, 0]) and int(got.indices[0, 0]) == 1234
    torch.testing.assert_close(got.values, expected.values, equal_nan=True)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_dtypes_empty_batches_and_strided_input(dtype):
    scores = torch.randn(3000, 5).to(dtype).T  # [5, 3000], not contiguous
    got, expected = chunked_topk(scores, 40), torch.topk(scores, 40, dim=1)
    assert torch.equal(got.values, expected.values) and got.indices.shape == (5, 40)
    assert torch.equal(scores.gather(1, got.indices), got.values)
    assert chunked_topk(torch.empty(0, 3000, dtype=dtype), 40).values.shape == (0, 40)


def test_out_tensors_of_another_dtype_or_shape_are_refused():
    scores = torch.randn(4, 5000, dtype=torch.float64)
    with pytest.raises(ValueError, match="out must be"):
        chunked_topk(scores, 30, out=(torch.empty(4, 30), torch.empty(4, 30, dtype=torch.long)))
    with pytest.raises(ValueError, match="out must be"):
        chunked_topk(scores.float(), 30, out=(torch.empty(4, 29), torch.empty(4, 29, dtype=torch.long)))


def test_short_rows_and_out_tensors():
    scores = torch.randn(4, 100)  # N < 2 k CHUNKS: torch.topk itself
    assert torch.equal(chunked_topk(scores, 20).indices, torch.topk(scores, 20, dim=1).indices)
    wide = torch.randn(4, 5000)
    values, ids = torch.empty(4, 30), torch.empty(4, 30, dtype=torch.long)
    chunked_topk(wide, 30, out=(values, ids))
    assert torch.equal(values, torch.topk(wide, 30, dim=1).values) and torch.equal(ids, torch.topk(wide, 30, 1).indices)


def test_exact_torch_with_exclusion_equals_its_torch_topk_path(monkeypatch):
    """The index with the chunked top-k against the same index with ``torch.topk`` (same score blocks and
    exclusion masks): users with up to 3,000 of 9,742 items excluded, several query batches."""
    rng = np.random.default_rng(0)
    items, users = rng.normal(size=(9742, 8)).astype(np.float32), rng.normal(size=(50, 8)).astype(np.float32)
    lengths = rng.integers(0, 3000, size=50)
    values = np.concatenate([rng.choice(9742, size=n, replace=False) for n in lengths])
    exclude = CSR(np.concatenate([[0], np.cumsum(lengths)]), values)
    index = TorchExactIndex(query_batch=16, use_gpu=False).build(items)  # the CPU path
    scores, ids = index.search(users, 100, exclude=exclude)
    monkeypatch.setattr(
        "lightning_retrieval.retrieval.index.chunked_topk", lambda block, k, out: torch.topk(block, k, 1, out=out)
    )
    expected_scores, expected_ids = index.search(users, 100, exclude=exclude)
    assert np.array_equal(scores, expected_scores) and np.array_equal(ids, expected_ids)
    seen = {(u, int(v)) for u in range(50) for v in values[exclude.offsets[u] : exclude.offsets[u + 1]]}
    assert not any((u, int(v)) in seen for u in range(50) for v in ids[u])
