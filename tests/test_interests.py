"""Interest modules, label-aware selection, the K_u rule, the collapse metric and multi-embedding evaluation."""

from functools import partial

import numpy as np
import pytest
import torch

from lightning_retrieval.data.preparation import CSR
from lightning_retrieval.metrics.interests import interest_similarity
from lightning_retrieval.models.interests import (
    DifferentiableClusteringModule,
    DynamicRoutingInterests,
    PreClusteringInterests,
    SelfAttentiveInterests,
    farthest_point_order,
    squash,
)
from lightning_retrieval.models.interests.base import InterestModule
from lightning_retrieval.queries import InterestQueries, serving_interest_count
from lightning_retrieval.queries.interests import select_interest
from lightning_retrieval.retrieval import ExactIndex, RetrievalEvaluator
from lightning_retrieval.tasks import RetrievalTask

MODULES = {
    "dcm": lambda: DifferentiableClusteringModule(8, num_interests=3),
    "multihead_attention": lambda: SelfAttentiveInterests(8, num_interests=3, max_length=10),
    "dynamic_routing": lambda: DynamicRoutingInterests(8, num_interests=3),
    "preclustering_ward": lambda: PreClusteringInterests(8, num_interests=3, method="ward"),
    "preclustering_kmeans": lambda: PreClusteringInterests(8, num_interests=3, method="kmeans"),
}


def _history(lengths, length=6, dim=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.arange(length)[None, :] >= length - torch.tensor(lengths)[:, None]  # right-aligned
    return torch.randn(len(lengths), length, dim, generator=g) * mask[:, :, None], mask


@pytest.mark.parametrize("name", sorted(MODULES))
def test_shapes_and_masks_with_variable_empty_and_short_histories(name):
    module = MODULES[name]().eval()
    history, mask = _history([6, 2, 0, 1])
    interests, valid = module(history, mask)
    assert interests.shape == (4, 3, 8) and valid.shape == (4, 3) and valid.dtype == torch.bool
    assert torch.isfinite(interests).all()
    # n distinct history items support at most n interests; an empty history none
    assert valid.sum(1).tolist() == [3, 2, 0, 1]


@pytest.mark.parametrize("name", ["dcm", "multihead_attention", "dynamic_routing"])
def test_gradients_flow_to_history_and_parameters_and_differ_per_interest(name):
    module = MODULES[name]()
    history, mask = _history([6, 4])
    history.requires_grad_(True)
    interests, valid = module(history, mask)
    probe = torch.randn(interests.shape[-1], generator=torch.Generator().manual_seed(1))
    grads = [torch.autograd.grad((interests[:, k] @ probe).sum(), history, retain_graph=True)[0] for k in range(2)]
    assert grads[0][mask].abs().sum() > 0
    assert (grads[0][~mask] == 0).all() and (grads[1][~mask] == 0).all(), "padding must not receive gradient"
    # a collapsed module (K copies of one vector) gives every interest the same gradient
    assert not torch.allclose(grads[0], grads[1], atol=1e-6), "interests 0 and 1 depend on the history identically"
    (interests[valid] * torch.randn_like(interests[valid])).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())


def test_dcm_single_assignment_routes_each_item_to_exactly_one_cluster():
    module = DifferentiableClusteringModule(8, num_interests=3, single_assignment=True)
    history, mask = _history([6, 5, 2])
    module(history, mask)
    weights = module.last_assignment  # [B, L, K]
    nonzero = (weights > 0).sum(-1)
    assert (nonzero[mask] == 1).all() and (nonzero[~mask] == 0).all()
    soft = DifferentiableClusteringModule(8, num_interests=3, single_assignment=False)
    _, soft_valid = soft(history, mask)
    # soft routing: every valid item feeds every valid cluster (softmax weights are positive)
    fed = (soft.last_assignment > 0).sum(-1)
    assert torch.equal(fed[mask], soft_valid.sum(1)[:, None].expand_as(mask)[mask])


def test_maxmin_order_picks_the_least_similar_item_at_every_step():
    history, mask = _history([6, 6, 3], seed=3)
    positions, slot_valid = farthest_point_order(history, mask, 4)
    unit = torch.nn.functional.normalize(history, dim=-1)
    for b in range(3):
        n = int(mask[b].sum())
        assert slot_valid[b].tolist() == [i < n for i in range(4)]
        assert positions[b, 0] == 5  # most recent valid item first
        for step in range(1, min(4, n)):
            chosen = positions[b, :step]
            candidates = [p for p in range(6) if mask[b, p] and p not in chosen.tolist()]
            closeness = {p: float((unit[b, chosen] @ unit[b, p]).max()) for p in candidates}
            assert int(positions[b, step]) == min(closeness, key=closeness.get)


def test_squash_is_bounded_and_safe_at_zero():
    z = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    out = squash(z)
    assert torch.equal(out[0], torch.zeros(2))
    assert out[1].norm() == pytest.approx(25 / 26)


def test_preclustering_recovers_separated_clusters_and_uses_medoids():
    centers = torch.tensor([[10.0, 0, 0, 0, 0, 0, 0, 0], [0, 10.0, 0, 0, 0, 0, 0, 0]])
    history = torch.cat([centers[0] + 0.1 * torch.randn(4, 8), centers[1] + 0.1 * torch.randn(2, 8)])[None]
    mask = torch.ones(1, 6, dtype=torch.bool)
    for method in ("ward", "kmeans"):
        interests, valid = PreClusteringInterests(8, num_interests=2, method=method)(history, mask)
        assert valid.all()
        # medoids are actual history items, the larger (and more recent-heavy) cluster first
        assert any(torch.equal(interests[0, 0], h) for h in history[0, :4])
        assert any(torch.equal(interests[0, 1], h) for h in history[0, 4:])


def test_dynamic_routing_initial_logits_are_seeded_and_do_not_depend_on_padding():
    history, mask = _history([6, 4, 5], length=6)
    a, b = DynamicRoutingInterests(8, 3, seed=1), DynamicRoutingInterests(8, 3, seed=1)
    assert torch.equal(a.initial_logits, b.initial_logits) and a.initial_logits.std() > 0.5
    torch.testing.assert_close(a(history, mask)[0], b(history, mask)[0])
    other = DynamicRoutingInterests(8, 3, seed=2)
    assert not torch.allclose(a(history, mask)[0], other(history, mask)[0])
    assert "initial_logits" in a.state_dict()  # a checkpoint serves with the exact logits it trained with
    # the same valid items, left-aligned with padding after them, give the same capsules
    left = torch.zeros_like(history)
    left_mask = torch.zeros_like(mask)
    for u, n in enumerate(mask.sum(1).tolist()):
        left[u, :n], left_mask[u, :n] = history[u, mask[u]], True
    torch.testing.assert_close(a(left, left_mask)[0], a(history, mask)[0])


def test_dynamic_routing_default_capsules_are_distinct_and_collapsing_configs_are_rejected():
    history, mask = _history([6, 6, 6, 6], length=6, seed=4)
    for kwargs in ({}, {"bilinear": "shared"}, {"init": "zeros", "bilinear_init": "normal"}):
        capsules, valid = DynamicRoutingInterests(8, 3, **kwargs)(history, mask)
        assert np.nanmax(interest_similarity(capsules, valid)) < 0.99, kwargs
    per_interest = DynamicRoutingInterests(8, 3)
    assert per_interest.S.shape == (3, 8, 8) and DynamicRoutingInterests(8, 3, bilinear="shared").S.shape == (1, 8, 8)
    for kwargs in ({"init": "zeros", "bilinear": "shared"}, {"init": "zeros"}):
        with pytest.raises(ValueError, match="identical"):
            DynamicRoutingInterests(8, 3, **kwargs)
    with pytest.raises(ValueError, match="bilinear must be one of"):
        DynamicRoutingInterests(8, 3, bilinear="per_position")
    with pytest.raises(ValueError, match="more than max_length=4"):
        DynamicRoutingInterests(8, 3, max_length=4)(history, mask)


def test_routing_mass_is_the_sum_of_routing_weights_and_zero_for_invalid_slots():
    history, mask = _history([6, 5, 2, 0], seed=5)
    dcm = DifferentiableClusteringModule(8, num_interests=3)
    interests, valid, mass = dcm.forward_with_mass(history, mask)
    torch.testing.assert_close(mass, dcm.last_assignment.sum(1) * valid)
    assert torch.equal(mass > 0, valid) and mass.shape == (4, 3)
    # single assignment: each valid item gives its weight (<= 1) to one cluster
    assert (mass.sum(1) <= mask.sum(1)).all() and (mass.sum(1)[mask.any(1)] > 0).all()
    torch.testing.assert_close(interests, dcm(history, mask)[0])
    routing = DynamicRoutingInterests(8, 3)
    _, valid = routing(history, mask)
    # soft routing: with every slot valid (users with >= 3 items) all of each item's weight is routed
    torch.testing.assert_close(routing.routing_mass[:2].sum(1), mask[:2].sum(1).float())
    assert torch.equal(routing.routing_mass > 0, valid)
    assert SelfAttentiveInterests(8, 3).routing_mass is None


def test_dot_product_maxmin_init_takes_short_vectors_as_far_cosine_does_not():
    history = torch.tensor([[[0.0, 1.0], [0.02, 0.0], [1.0, 0.05]]])  # most recent: [1, 0.05]
    mask = torch.ones(1, 3, dtype=torch.bool)
    cosine, _ = farthest_point_order(history, mask, 2, similarity="cosine")
    dot, _ = farthest_point_order(history, mask, 2, similarity="dot")
    assert cosine[0].tolist() == [2, 0]  # [0, 1] is the least similar direction
    assert dot[0].tolist() == [2, 1]  # dot 0.02 < 0.05: the short copy of the first direction looks farthest
    with pytest.raises(ValueError, match="similarity must be"):
        farthest_point_order(history, mask, 2, similarity="l2")
    with pytest.raises(ValueError, match="init_similarity must be"):
        DifferentiableClusteringModule(8, 3, init_similarity="l2")


def test_interest_similarity_flags_collapse_and_passes_orthogonal_interests():
    rng = np.random.default_rng(0)
    one = rng.normal(size=(5, 1, 16))
    collapsed = np.repeat(one, 4, axis=1) * rng.uniform(0.5, 2.0, size=(5, 4, 1))  # same direction, any length
    valid = np.ones((5, 4), dtype=bool)
    np.testing.assert_allclose(interest_similarity(collapsed, valid), 1.0)
    orthogonal = np.stack([np.eye(16)[rng.permutation(16)[:4]] for _ in range(5)])
    assert (interest_similarity(orthogonal, valid) < 0.5).all()
    np.testing.assert_allclose(interest_similarity(orthogonal, valid), 0.0, atol=1e-12)
    # invalid slots take part in no pair: a collapsed copy hidden behind valid=False does not count
    mixed = orthogonal.copy()
    mixed[:, 3] = mixed[:, 0]
    partly = valid.copy()
    partly[:, 3] = False
    np.testing.assert_allclose(interest_similarity(mixed, partly), 0.0, atol=1e-12)
    assert (interest_similarity(mixed, valid) > 0.1).all()
    fewer = np.zeros((5, 4), dtype=bool)
    fewer[:, 0] = True
    assert np.isnan(interest_similarity(orthogonal, fewer)).all()  # < 2 valid vectors: no pair
    torch_value = interest_similarity(torch.from_numpy(collapsed), torch.from_numpy(valid))
    np.testing.assert_allclose(torch_value, 1.0)
    with pytest.raises(ValueError, match="need vectors"):
        interest_similarity(collapsed[:, 0], valid)


def test_interest_similarity_metric_in_the_evaluator():
    rng = np.random.default_rng(1)
    items = rng.normal(size=(200, 8)).astype(np.float32)
    users = np.stack([np.eye(8, dtype=np.float32)[:3] for _ in range(30)])
    users[:10, 1] = users[:10, 0]  # a third of the users have a duplicated interest
    valid = np.ones((30, 3), dtype=bool)
    valid[20:, 1:] = False  # ten users with one served interest have no pair
    exclude = CSR.from_pairs_unique(np.arange(30), rng.integers(0, 200, 30), 30, 200)
    targets = CSR.from_pairs_unique(np.arange(30), rng.integers(0, 200, 30), 30, 200)
    ev = RetrievalEvaluator(ks=[10], metrics=["recall", "interest_similarity"])
    result = ev.evaluate(ExactIndex().build(items), users, targets, exclude, user_valid=valid)
    # users 0-9: pairs (1, 1/3... ) -> mean of cos {1, 0, 0} = 1/3; users 10-19: 0; users 20-29 left out
    assert result.metrics["interest_similarity"] == pytest.approx((10 * (1 / 3) + 10 * 0.0) / 20)


def test_dynamic_routing_adaptive_k_follows_mind():
    module = DynamicRoutingInterests(8, num_interests=4, adaptive_k=True)
    history, mask = _history([1, 3, 6], length=6)
    _, valid = module(history, mask)
    assert valid.sum(1).tolist() == [1, 1, 2]  # max(1, min(4, floor(log2 n)))


def test_serving_rule_counts():
    n = torch.tensor([0, 1, 2, 7, 8, 100, 10_000])
    assert serving_interest_count(n, 7, "log2").tolist() == [1, 1, 1, 2, 3, 6, 7]
    assert serving_interest_count(n, 7, "all").tolist() == [7] * 7
    with pytest.raises(ValueError, match="unknown serving rule"):
        serving_interest_count(n, 7, "cube")


def test_label_aware_selection_takes_the_best_valid_interest():
    users = torch.nn.functional.normalize(torch.randn(3, 4, 8, generator=torch.Generator().manual_seed(0)), dim=-1)
    valid = torch.tensor([[True, True, False, False], [True, False, False, False], [True, True, True, True]])
    items = users[:, 2].clone()  # the target equals interest 2, which is invalid for users 0 and 1
    selected = select_interest(users, valid, items, "hard")
    scores = torch.einsum("bkd,bd->bk", users, items).masked_fill(~valid, float("-inf"))
    for b in range(3):
        assert torch.equal(selected[b], users[b, scores[b].argmax()])
    assert torch.equal(selected[2], users[2, 2]) and torch.equal(selected[1], users[1, 0])
    soft = select_interest(users, valid, items, "soft", power=50.0)
    assert torch.allclose(soft[2], users[2, 2], atol=0.05)


class _Collapsed(InterestModule):
    """Test double: the pooled history K times (what the old dynamic routing returned)."""

    def forward(self, history, mask):
        mean = (history * mask[:, :, None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
        valid = mask.any(1, keepdim=True).expand(-1, self.num_interests)
        return mean[:, None].expand(-1, self.num_interests, -1), valid


def test_multi_interest_task_trains_serves_first_k_u_and_the_collapse_metric_sees_the_module(movielens_dm):
    batch = next(iter(movielens_dm.train_dataloader()))
    torch.manual_seed(0)
    dcm = partial(DifferentiableClusteringModule, num_interests=4)
    model = RetrievalTask(movielens_dm.feature_spec, 16, queries=partial(InterestQueries, interests=dcm))
    sum(model.loss_terms(batch).values()).backward()
    assert model.queries.interests.S.weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        served = model.embed_users(batch)
    k_u = serving_interest_count(batch["history_length"], 4, "log2")
    assert (served.valid.sum(1) <= k_u).all() and served.valid.any(1).all()
    assert (served.valid.sum(1) == torch.minimum(k_u, torch.full_like(k_u, 4))).float().mean() > 0.9
    distinct = interest_similarity(served.vectors, served.valid)
    collapsed_model = RetrievalTask(
        movielens_dm.feature_spec, 16, queries=partial(InterestQueries, interests=partial(_Collapsed, num_interests=4))
    ).eval()
    with torch.no_grad():
        collapsed = collapsed_model.embed_users(batch)
    same = interest_similarity(collapsed.vectors, collapsed.valid)
    assert np.allclose(same[~np.isnan(same)], 1.0, atol=1e-5), "identical interests must score 1"
    assert np.nanmax(distinct) < 1 - 1e-3, "DCM's distinct centroids must reach distinct user queries"


def test_multi_embedding_evaluation_reduces_to_single_when_embeddings_repeat():
    rng = np.random.default_rng(0)
    items, users = rng.normal(size=(300, 8)).astype(np.float32), rng.normal(size=(40, 8)).astype(np.float32)
    exclude = CSR.from_pairs_unique(np.repeat(np.arange(40), 5), rng.integers(0, 300, 200), 40, 300)
    targets = CSR.from_pairs_unique(np.arange(40), rng.integers(0, 300, 40), 40, 300)
    index = ExactIndex().build(items)
    ev = RetrievalEvaluator(ks=[10, 50], metrics=["recall", "ndcg", "coverage"])
    single = ev.evaluate(index, users, targets, exclude)
    repeated = np.repeat(users[:, None], 3, axis=1)
    valid = np.ones((40, 3), dtype=bool)
    valid[::2, 1:] = False
    multi = ev.evaluate(index, repeated, targets, exclude, user_valid=valid)
    assert multi.metrics == pytest.approx(single.metrics)
    np.testing.assert_array_equal(multi.lists.items, single.lists.items)
    assert multi.protocol["searched_embeddings"] == int(valid.sum())
