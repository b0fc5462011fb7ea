"""Result mergers: round-robin order, score order, de-duplication, masked embeddings."""

import numpy as np
import pytest

from lightning_retrieval.registry import resolve
from lightning_retrieval.retrieval.merging import RoundRobinMerger, ScoreMerger


def test_round_robin_interleaves_by_rank_and_skips_duplicates():
    items = np.array([[[1, 2, 3], [4, 2, 5]]])
    scores = np.array([[[0.9, 0.8, 0.7], [0.95, 0.85, 0.1]]])
    merged, merged_scores = RoundRobinMerger().merge(items, scores, np.array([[True, True]]), depth=5)
    assert merged.tolist() == [[1, 4, 2, 3, 5]]
    assert merged_scores[0, 2] == pytest.approx(0.8)  # item 2 keeps the score of its first (earlier) occurrence


def test_masked_embeddings_contribute_nothing_and_short_rows_are_padded():
    items = np.array([[[1, 2], [7, 8]], [[3, 4], [3, 9]]])
    scores = np.ones_like(items, dtype=float)
    valid = np.array([[True, False], [True, True]])
    merged, s = RoundRobinMerger().merge(items, scores, valid, depth=4)
    assert merged.tolist() == [[1, 2, -1, -1], [3, 4, 9, -1]]
    assert np.isinf(s[0, 2:]).all()


def test_score_merge_is_a_global_sort_with_dedup():
    items = np.array([[[1, 2, 3], [2, 6, 1]]])
    scores = np.array([[[0.9, 0.5, 0.4], [0.7, 0.6, 0.1]]])
    merged, s = ScoreMerger().merge(items, scores, np.array([[True, True]]), depth=4)
    assert merged.tolist() == [[1, 2, 6, 3]]
    np.testing.assert_allclose(s[0], [0.9, 0.7, 0.6, 0.4])


def test_vectorised_mergers_match_a_naive_reference():
    rng = np.random.default_rng(0)
    users, emb, k, depth = 50, 4, 10, 25
    items = rng.integers(0, 30, size=(users, emb, k))
    scores = -np.sort(-rng.random((users, emb, k)), axis=2)
    valid = rng.random((users, emb)) > 0.2
    rr, _ = RoundRobinMerger().merge(items, scores, valid, depth)
    sm, _ = ScoreMerger().merge(items, scores, valid, depth)
    for u in range(users):
        out = []
        for r in range(k):
            for e in range(emb):
                if valid[u, e] and items[u, e, r] not in out:
                    out.append(items[u, e, r])
        assert rr[u].tolist() == (out + [-1] * depth)[:depth]
        cands = sorted(
            ((scores[u, e, r], e * k + r, items[u, e, r]) for e in range(emb) if valid[u, e] for r in range(k)),
            key=lambda t: (-t[0], t[1]),
        )
        seen = []
        for _, _, it in cands:
            if it not in seen:
                seen.append(it)
        assert sm[u].tolist() == (seen + [-1] * depth)[:depth]


def test_mergers_are_registered_and_check_shapes():
    assert resolve("mergers", "round_robin") is RoundRobinMerger
    with pytest.raises(ValueError, match=r"items/scores \[U, E, k\]"):
        RoundRobinMerger().merge(np.zeros((2, 3)), np.zeros((2, 3)), np.ones((2, 1), bool), 2)
