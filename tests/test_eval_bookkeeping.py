"""Evaluation bookkeeping fast paths (issue 18): one-batch seen-item masking, target matching by slot comparison and
the unit item vectors of embedding diversity give the same results as the plain paths."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from lightning_retrieval.data.preparation import CSR, sorted_member
from lightning_retrieval.metrics import library
from lightning_retrieval.metrics.base import RankedLists
from lightning_retrieval.retrieval import RetrievalEvaluator, TorchExactIndex
from lightning_retrieval.retrieval import evaluator as evaluator_module
from lightning_retrieval.retrieval.evaluator import listed_targets
from lightning_retrieval.retrieval.index import RetrievalIndexError


def _csr(rows: list[np.ndarray]) -> CSR:
    offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum([len(r) for r in rows], out=offsets[1:])
    values = np.concatenate([np.sort(r) for r in rows]).astype(np.int64) if rows else np.zeros(0, np.int64)
    return CSR(offsets, values)


def _problem(seed=0, users=120, items=300, dim=8, depth=40, masked_user=True):
    rng = np.random.default_rng(seed)
    u = rng.normal(size=(users, dim)).astype(np.float32)
    v = rng.normal(size=(items, dim)).astype(np.float32)
    seen = [rng.choice(items, size=rng.integers(0, 30), replace=False) for _ in range(users)]
    seen[3] = rng.choice(items, size=items - depth, replace=False)  # more seen items than depth: exactly depth left
    seen[7] = np.arange(100)  # more seen items than depth
    if masked_user:
        u[11] = 0.0  # a masked user (zero query)
    return u, v, _csr(seen), seen


def _overfetch_index(v):
    index = TorchExactIndex().build(v)
    index.supports_exclusion = False  # search top (depth + max seen) and drop the seen items afterwards
    return index


@pytest.mark.parametrize("batch_size", [1024, 120, 50])  # one batch of every user (no copies), one full, several
def test_masked_lists_equal_overfetch_lists(batch_size):
    u, v, exclude, seen = _problem()
    ev = RetrievalEvaluator(ks=[40], metrics=[], batch_size=batch_size)
    items, scores, valid = ev.retrieve(TorchExactIndex().build(v), u, exclude, 40)
    ref_items, ref_scores, ref_valid = ev.retrieve(_overfetch_index(v), u, exclude, 40)
    np.testing.assert_array_equal(valid, ref_valid)
    assert not valid[11] and (items[11] == -1).all() and np.isneginf(scores[11]).all()
    np.testing.assert_array_equal(items, ref_items)
    np.testing.assert_allclose(scores[valid], ref_scores[valid], rtol=1e-6)
    for row in (3, 7):  # the heavy users get their best unseen items, none of them seen
        ref = u[row] @ v.T
        ref[seen[row]] = -np.inf
        assert set(items[row].tolist()) == set(np.argsort(-ref, kind="stable")[:40].tolist())
        assert not set(items[row].tolist()) & set(seen[row].tolist())


@pytest.mark.parametrize("make_index", [TorchExactIndex, _overfetch_index], ids=["masked", "overfetch"])
def test_k_larger_than_what_is_left_is_an_error_on_both_paths(make_index):
    u, v, exclude, _ = _problem()
    index = make_index().build(v) if make_index is TorchExactIndex else make_index(v)
    ev = RetrievalEvaluator(ks=[41], metrics=[], batch_size=1024)
    with pytest.raises(RetrievalIndexError, match="larger than the corpus left after excluding seen items"):
        ev.retrieve(index, u, exclude, 41)  # user 3 keeps only 40 unseen items
    targets = _csr([np.array([0])] * len(u))
    with pytest.raises(RetrievalIndexError, match=r"k=301 is larger than the corpus \(300 items\)"):
        RetrievalEvaluator(ks=[301], metrics=["recall"]).evaluate(index, u, targets, exclude)


def _key_hits(items: np.ndarray, targets: CSR, n_items: int) -> np.ndarray:
    keys = np.arange(len(items))[:, None] * n_items + items
    return sorted_member(keys, targets.keys(n_items)) & (items >= 0)


@pytest.mark.parametrize("most_targets", [0, 1, 5, 16, 40])  # 40: more than the slot path takes (key search)
def test_listed_targets_equal_the_key_search(most_targets):
    rng = np.random.default_rng(most_targets)
    users, n_items, depth = 70, 90, 25
    items = np.argsort(rng.random((users, n_items)), axis=1)[:, :depth]
    items[[2, 9]] = -1  # masked users' padding: never a hit
    counts = rng.integers(0, most_targets + 1, size=users)
    targets = _csr([rng.choice(n_items, size=c, replace=False) for c in counts])
    hits = listed_targets(items, targets, n_items)
    ref = _key_hits(items, targets, n_items)
    np.testing.assert_array_equal(hits, ref)
    assert not hits[[2, 9]].any()
    if most_targets:
        assert hits.any()  # the test can fail: some listed items are targets
    row = int(np.argmax(counts))
    assert hits[row].sum() == len(set(items[row].tolist()) & set(targets.row(row).tolist()))


def test_listed_targets_key_path_and_row_mismatch(monkeypatch):
    rng = np.random.default_rng(0)
    items = rng.integers(-1, 50, size=(30, 10))
    targets = _csr([rng.choice(50, size=4, replace=False) for _ in range(30)])
    slots = listed_targets(items, targets, 50)
    monkeypatch.setattr(evaluator_module, "_BROADCAST_TARGETS", 0)  # force the key search
    np.testing.assert_array_equal(listed_targets(items, targets, 50), slots)
    with pytest.raises(ValueError, match="targets has 30 rows for 29 ranked lists"):
        listed_targets(items[:29], targets, 50)


def test_unit_item_vectors_equal_the_float64_reference():
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(200, 16)).astype(np.float32)
    emb[4] = 0.0  # a zero vector: unit vector 0, squared norm 0
    emb[5] *= 1e-14  # a tiny one: squared norm below 1
    emb.setflags(write=False)  # read-only input (e.g. a memory map): no copy warning, no error
    lists = RankedLists(
        np.zeros((1, 2), dtype=np.int64), np.zeros((1, 2), bool), np.ones(1), np.ones(1, bool), 200, item_embeddings=emb
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        unit, unit_sq = library._unit_embeddings(lists)
    norm = np.sqrt(np.einsum("nd,nd->n", emb, emb, dtype=np.float64))
    # the same float64 norms up to summation order (an ulp), cast to float32 as before
    np.testing.assert_allclose(unit.numpy(), emb / np.maximum(norm, 1e-12)[:, None].astype(np.float32), rtol=1e-6)
    np.testing.assert_allclose(unit_sq, np.where(norm > 1e-12, 1.0, (norm / 1e-12) ** 2), rtol=1e-12)
    assert unit_sq[4] == 0.0 and 0 < unit_sq[5] < 1 and np.allclose(unit_sq[[0, 1, 6]], 1.0)


def test_one_batch_of_every_user_searches_once_without_copies_and_equals_overfetch():
    """Every user valid and in one batch: one search over all queries with the whole exclusion table (no row
    copies), the same lists as the over-fetch path."""
    u, v, exclude, seen = _problem(masked_user=False)
    index = TorchExactIndex().build(v)
    calls = []
    search = index.search
    index.search = lambda queries, k, exclude=None: calls.append((len(queries), exclude)) or search(queries, k, exclude)
    ev = RetrievalEvaluator(ks=[40], metrics=[], batch_size=1024)
    items, scores, valid = ev.retrieve(index, u, exclude, 40)
    assert len(calls) == 1 and calls[0][0] == len(u) and calls[0][1] is exclude
    ref_items, _, ref_valid = ev.retrieve(_overfetch_index(v), u, exclude, 40)
    assert valid.all() and ref_valid.all()
    np.testing.assert_array_equal(items, ref_items)


def test_padding_is_never_a_hit_even_for_a_negative_target():
    items = np.array([[3, -1, -1], [5, 6, 7]])
    targets = _csr([np.array([-1, 3]), np.array([5])])
    np.testing.assert_array_equal(listed_targets(items, targets, 10), [[True, False, False], [True, False, False]])
