"""Interest modules, label-aware selection, the K_u rule and multi-embedding evaluation."""

import numpy as np
import pytest
import torch

from lightning_retrieval.data.preparation import CSR
from lightning_retrieval.models.interests import (
    DifferentiableClusteringModule,
    DynamicRoutingInterests,
    PreClusteringInterests,
    SelfAttentiveInterests,
    farthest_point_order,
    squash,
)
from lightning_retrieval.retrieval import ExactIndex, RetrievalEvaluator
from lightning_retrieval.tasks.multi_embedding import MultiEmbeddingRetrieval, serving_interest_count

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
    assert not valid[2].any(), "an empty history has no valid interest"
    assert valid[0].all()
    assert torch.isfinite(interests).all()
    if name in ("dcm", "preclustering_ward", "preclustering_kmeans"):  # clusters need distinct items
        assert valid[1].sum() <= 2 and valid[3].sum() == 1


@pytest.mark.parametrize("name", ["dcm", "multihead_attention", "dynamic_routing"])
def test_gradients_flow_to_history_and_parameters(name):
    module = MODULES[name]()
    history, mask = _history([6, 4])
    history.requires_grad_(True)
    interests, valid = module(history, mask)
    (interests[valid] * torch.randn_like(interests[valid])).sum().backward()
    assert history.grad is not None and history.grad[mask].abs().sum() > 0
    assert history.grad[~mask].abs().sum() == 0, "padding must not receive gradient"
    assert all(p.grad is not None for p in module.parameters())


def test_dcm_single_assignment_routes_each_item_to_exactly_one_cluster():
    module = DifferentiableClusteringModule(8, num_interests=3, single_assignment=True)
    history, mask = _history([6, 5, 2])
    module(history, mask)
    weights = module.last_assignment  # [B, L, K]
    nonzero = (weights > 0).sum(-1)
    assert (nonzero[mask] == 1).all() and (nonzero[~mask] == 0).all()
    soft = DifferentiableClusteringModule(8, num_interests=3, single_assignment=False)
    soft(history, mask)
    assert ((soft.last_assignment > 0).sum(-1)[:2][mask[:2]] > 1).any()


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


@pytest.fixture(scope="module")
def model_and_batch(movielens_dm):
    torch.manual_seed(0)
    model = MultiEmbeddingRetrieval(
        feature_spec=movielens_dm.feature_spec,
        embedding_dim=16,
        interests=lambda d: DifferentiableClusteringModule(d, num_interests=4),
    )
    return model, next(iter(movielens_dm.train_dataloader()))


def test_label_aware_selection_takes_the_best_valid_interest(model_and_batch):
    model, _ = model_and_batch
    users = torch.nn.functional.normalize(torch.randn(3, 4, 8), dim=-1)
    valid = torch.tensor([[True, True, False, False], [True, False, False, False], [True, True, True, True]])
    items = users[:, 2].clone()  # the target equals interest 2, which is invalid for users 0 and 1
    selected = model.select(users, valid, items)
    scores = torch.einsum("bkd,bd->bk", users, items).masked_fill(~valid, float("-inf"))
    for b in range(3):
        assert torch.equal(selected[b], users[b, scores[b].argmax()])
    assert torch.equal(selected[2], users[2, 2]) and torch.equal(selected[1], users[1, 0])
    model.selection, model.selection_power = "soft", 50.0
    soft = model.select(users, valid, items)
    assert torch.allclose(soft[2], users[2, 2], atol=0.05)
    model.selection = "hard"


def test_multi_embedding_model_trains_and_serves_first_k_u(model_and_batch):
    model, batch = model_and_batch
    loss = model.compute_loss(batch)
    loss.backward()
    assert model.interests.S.weight.grad is not None and model.user_tower.projection.weight.grad is not None
    model.eval()
    with torch.no_grad():
        users, valid = model.embed_users(batch)
    k_u = serving_interest_count(batch["history_length"], 4, "log2")
    assert (valid.sum(1) <= k_u).all() and valid.any(1).all()
    assert users.shape == (batch["user"].shape[0], 4, 64)
    collapse = MultiEmbeddingRetrieval.interest_collapse(users, valid)
    assert ((collapse <= 1 + 1e-5) | collapse.isnan()).all()


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
