"""Result mergers: round-robin order, score order, weighted budgets, de-duplication, masked embeddings."""

import numpy as np
import pytest

from lightning_retrieval.registry import resolve
from lightning_retrieval.retrieval.merging import RoundRobinMerger, ScoreMerger, WeightedBudgetMerger


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


def _distinct_lists(weights, k=200):
    """One user whose E interests retrieve disjoint lists (item // k = the interest it came from)."""
    emb = len(weights)
    items = np.arange(emb * k).reshape(1, emb, k)
    return items, -np.tile(np.arange(k, dtype=float), (1, emb, 1)), np.ones((1, emb), bool), np.array([weights])


def _sainte_lague(weights, seats):
    """Naive highest-averages apportionment: each seat to the interest with the largest w / (s + 0.5)."""
    taken = [0] * len(weights)
    for _ in range(seats):
        best = max(range(len(weights)), key=lambda e: (weights[e] / (taken[e] + 0.5), -e))
        taken[best] += 1
    return taken


@pytest.mark.parametrize("seed", range(6))
def test_weighted_budget_shares_are_proportional_at_every_prefix_and_sum_to_k(seed):
    rng = np.random.default_rng(seed)
    weights = (rng.dirichlet(np.ones(2 + seed % 3)) * rng.uniform(0.1, 10)).tolist()  # any scale, no ties
    items, scores, valid, w = _distinct_lists(weights)
    merged, merged_scores = WeightedBudgetMerger().merge(items, scores, valid, 100, weights=w)
    assert (merged >= 0).all() and len(set(merged[0].tolist())) == 100  # k distinct items
    quota = np.array(weights) / sum(weights)
    for n in (10, 20, 50, 100):
        counts = np.bincount(merged[0, :n] // 200, minlength=len(weights))
        assert counts.sum() == n
        assert counts.tolist() == _sainte_lague(weights, n)
        assert (np.abs(counts - n * quota) <= 1.0).all()
    for e in range(len(weights)):  # each interest's items keep their own rank order
        own = merged[0][merged[0] // 200 == e]
        assert own.tolist() == sorted(own.tolist())
    np.testing.assert_allclose(merged_scores[0], -(merged[0] % 200))  # scores travel with their items


def test_weighted_budget_by_hand():
    items, scores, valid, w = _distinct_lists([0.5, 0.3, 0.2])
    merged, _ = WeightedBudgetMerger().merge(items, scores, valid, 10, weights=w)
    assert (merged[0] // 200).tolist() == [0, 1, 2, 0, 1, 0, 0, 2, 1, 0]  # 5 : 3 : 2, by priority (r + .5) / w


def test_weighted_budget_deduplicates_and_equals_round_robin_when_weights_are_equal():
    rng = np.random.default_rng(0)
    users, emb, k, depth = 50, 4, 10, 25
    items = rng.integers(0, 30, size=(users, emb, k))
    scores = -np.sort(-rng.random((users, emb, k)), axis=2)
    valid = rng.random((users, emb)) > 0.2
    equal = np.repeat(rng.random((users, 1)) + 0.1, emb, axis=1)  # equal within a user, any scale
    budget, budget_scores = WeightedBudgetMerger().merge(items, scores, valid, depth, weights=equal)
    rr, rr_scores = RoundRobinMerger().merge(items, scores, valid, depth)
    np.testing.assert_array_equal(budget, rr)
    np.testing.assert_array_equal(budget_scores, rr_scores)
    unequal, _ = WeightedBudgetMerger().merge(items, scores, valid, depth, weights=rng.random((users, emb)) + 0.01)
    for row in unequal:
        kept = row[row >= 0]
        assert len(kept) == len(set(kept.tolist()))  # de-duplicated
    assert (unequal != rr).any()


def test_weighted_budget_duplicate_counts_for_the_interest_that_takes_it_first():
    items = np.array([[[1, 2, 3, 4], [1, 5, 6, 7]]])
    scores = np.zeros(items.shape)
    merged, _ = WeightedBudgetMerger().merge(items, scores, np.ones((1, 2), bool), 4, weights=np.array([[0.5, 0.5]]))
    assert merged.tolist() == [[1, 2, 5, 3]]  # interest 1's rank-0 item was taken by interest 0: its next one moves up


def test_weighted_budget_zero_weight_and_masked_interests_only_fill_what_others_cannot():
    items = np.array([[[1, 2], [3, 4], [5, 6]]])
    scores = np.zeros(items.shape)
    weights = np.array([[1.0, 0.0, 2.0]])
    merged, _ = WeightedBudgetMerger().merge(items, scores, np.ones((1, 3), bool), 6, weights=weights)
    assert merged.tolist() == [[5, 1, 6, 2, 3, 4]]  # the zero-weight interest comes last
    merged, _ = WeightedBudgetMerger().merge(items, scores, np.array([[True, True, False]]), 6, weights=weights)
    assert merged.tolist() == [[1, 2, 3, 4, -1, -1]]  # a masked interest contributes nothing


def test_weighted_budget_needs_valid_weights():
    items, scores, valid, w = _distinct_lists([0.5, 0.5], k=5)
    assert resolve("mergers", "weighted_budget") is WeightedBudgetMerger
    with pytest.raises(ValueError, match="needs query weights.*round_robin"):
        WeightedBudgetMerger().merge(items, scores, valid, 5)
    with pytest.raises(ValueError, match="finite and >= 0"):
        WeightedBudgetMerger().merge(items, scores, valid, 5, weights=np.array([[0.5, -0.1]]))
    with pytest.raises(ValueError, match=r"weights must be \[U, E\]"):
        WeightedBudgetMerger().merge(items, scores, valid, 5, weights=np.ones((1, 3)))


def test_the_evaluator_passes_query_weights_to_the_budget_merger():
    from lightning_retrieval.arrays import CSR
    from lightning_retrieval.retrieval.evaluator import RetrievalEvaluator
    from lightning_retrieval.retrieval.index import ExactIndex

    rng = np.random.default_rng(1)
    item_vectors = rng.normal(size=(300, 8)).astype(np.float32)
    queries = rng.normal(size=(20, 3, 8)).astype(np.float32)
    valid = np.ones((20, 3), bool)
    no_seen = CSR(np.zeros(21, dtype=np.int64), np.zeros(0, dtype=np.int64))
    evaluator = RetrievalEvaluator(ks=[20], metrics=[])
    index = ExactIndex().build(item_vectors)
    weights = np.tile([0.8, 0.1, 0.1], (20, 1))
    merged, _, _ = evaluator.retrieve_queries(index, queries, valid, no_seen, 20, WeightedBudgetMerger(), weights)
    grid, _, _ = evaluator.retrieve_per_query(index, queries, valid, no_seen, 20)
    expected, _ = WeightedBudgetMerger().merge(grid, np.zeros(grid.shape), valid, 20, weights=weights)
    np.testing.assert_array_equal(merged, expected)
    with pytest.raises(ValueError, match="needs query weights"):
        evaluator.retrieve_queries(index, queries, valid, no_seen, 20, WeightedBudgetMerger())
