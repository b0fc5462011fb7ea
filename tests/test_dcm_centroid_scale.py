"""DCM's ``centroid_scale``: with ``unit`` every interest reaches the user tower at one scale, however many history
items support it (METHODS.md §3(e) "Centroid scale"); ``squash`` (the paper, the default) stays reachable."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_interest_properties import CHECKS, DIM, K, fit_to_clusters

from lightning_retrieval.models.interests.dcm import DifferentiableClusteringModule


def dcm(num_interests: int = K, **kwargs) -> DifferentiableClusteringModule:
    torch.manual_seed(0)
    return DifferentiableClusteringModule(DIM, num_interests=num_interests, **kwargs).eval()


def one_item_and_one_big_cluster(length: int = 12, big: int = 9, noise: float = 0.05):
    """``(history [2, L, D], mask [2, L], small, large)``: ``big`` items near ``e_1`` and one item ``0.8 e_0`` (the
    second oldest), right-aligned after left padding; user 1 is user 0 with more padding values set to garbage.
    The most recent item is a cluster-1 item, so maxmin seeds slot 0 in cluster 1 and slot 1 on the lone item."""
    g = torch.Generator().manual_seed(0)
    small, large = torch.eye(DIM)[0], torch.eye(DIM)[1]
    items = large + noise * torch.randn(big + 1, DIM, generator=g)
    items[1] = 0.8 * small
    pad = length - (big + 1)
    history = torch.cat([torch.zeros(pad, DIM), items])[None].repeat(2, 1, 1)
    history[1, :pad] = 50 * torch.randn(pad, DIM, generator=g)
    mask = (torch.arange(length) >= pad)[None].repeat(2, 1)
    return history, mask, small, large


def test_unit_scale_gives_a_one_item_cluster_its_items_direction_where_squash_gives_a_near_zero_vector():
    history, mask, small, large = one_item_and_one_big_cluster()
    with torch.no_grad():
        squashed_module, unit_module = dcm(2, bilinear=False), dcm(2, bilinear=False, centroid_scale="unit")
        squashed, valid = squashed_module(history, mask)
        unit, unit_valid = unit_module(history, mask)
    assert torch.equal(valid, unit_valid) and valid.all()
    # slot 1 is the lone item's cluster, slot 0 the big one (both modules route identically)
    torch.testing.assert_close(unit_module.routing_mass, squashed_module.routing_mass)
    assert float(unit_module.routing_mass[0, 1]) < 1.0 < float(unit_module.routing_mass[0, 0])
    # the defect: under squash the one-item interest is a short vector next to a long one (the tower reads ~0)
    norms = squashed.norm(dim=-1)
    assert float(norms[0, 1]) < 0.5 * float(norms[0, 0]), norms
    # unit: the same directions, every valid interest at norm 1, the lone one pointing at its item
    torch.testing.assert_close(unit.norm(dim=-1), torch.ones(2, 2))
    torch.testing.assert_close(unit, F.normalize(squashed, dim=-1))
    assert float(unit[0, 1] @ small) > 0.99 and float(unit[0, 0] @ large) > 0.99
    torch.testing.assert_close(unit[1], unit[0])  # padding values never matter


def test_unit_scale_does_not_depend_on_how_many_items_support_an_interest():
    """The same two directions held by 3 or by 9 copies: the same unit interests, squashed ones of other lengths."""
    few, few_mask, _, _ = one_item_and_one_big_cluster(big=3, noise=0.0)
    many, many_mask, _, _ = one_item_and_one_big_cluster(big=9, noise=0.0)
    with torch.no_grad():
        unit_few, _ = dcm(2, bilinear=False, centroid_scale="unit")(few, few_mask)
        unit_many, _ = dcm(2, bilinear=False, centroid_scale="unit")(many, many_mask)
        squash_few, _ = dcm(2, bilinear=False)(few, few_mask)
        squash_many, _ = dcm(2, bilinear=False)(many, many_mask)
    torch.testing.assert_close(unit_few, unit_many)
    assert float(squash_many[0, 0].norm()) > float(squash_few[0, 0].norm()) + 0.05


def test_unit_scale_keeps_invalid_slots_at_zero_and_users_without_history_at_zero():
    history = torch.randn(3, 6, DIM)
    mask = torch.tensor([[0, 0, 0, 0, 0, 1], [0, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    with torch.no_grad():
        interests, valid = dcm(K, centroid_scale="unit")(history, mask)
    assert valid.sum(1).tolist() == [1, 0, K]
    assert torch.isfinite(interests).all()
    assert torch.equal(interests[~valid], torch.zeros_like(interests[~valid]))
    torch.testing.assert_close(interests[valid].norm(dim=-1), torch.ones(int(valid.sum())))


@pytest.mark.parametrize("check", sorted(CHECKS))
@pytest.mark.parametrize("trained", [False, True], ids=["untrained", "trained"])
def test_unit_scale_dcm_has_every_interest_module_property(check, trained):
    module = dcm(K, centroid_scale="unit")
    CHECKS[check](fit_to_clusters(module) if trained else module)


def test_unit_scale_gradients_reach_the_history_and_the_bilinear_map():
    history = torch.randn(4, 10, DIM, requires_grad=True)
    mask = torch.ones(4, 10, dtype=torch.bool)
    module = dcm(K, centroid_scale="unit").train()
    interests, valid = module(history, mask)
    (interests[valid] * torch.randn_like(interests[valid])).sum().backward()
    assert history.grad.abs().sum() > 0 and module.S.weight.grad.abs().sum() > 0


def test_unknown_centroid_scale_names_the_choices():
    with pytest.raises(ValueError, match="centroid_scale must be 'squash' or 'unit'"):
        DifferentiableClusteringModule(DIM, num_interests=K, centroid_scale="layernorm")


def test_min_support_drops_one_item_clusters_and_always_keeps_the_best_supported_slot():
    history, mask, _, large = one_item_and_one_big_cluster()
    lone = torch.zeros(1, 12, DIM)
    lone[0, -1] = large  # a user with a single history item: one slot, supported by one item, stays valid
    lone_mask = torch.zeros(1, 12, dtype=torch.bool)
    lone_mask[0, -1] = True
    with torch.no_grad():
        every = dcm(2, bilinear=False)
        _, every_valid = every(history, mask)
        strict = dcm(2, bilinear=False, min_support=2)
        interests, valid = strict(history, mask)
        mass = strict.routing_mass
        _, lone_valid = strict(lone, lone_mask)
    assert every_valid.all()  # the old rule serves the lone item's cluster
    assert valid.tolist() == [[True, False], [True, False]]
    assert float(interests[0, 0] @ large) > 0.9
    assert float(mass[0, 1]) == 0.0 and float(mass[0, 0]) > 1.0
    assert lone_valid.tolist() == [[True, False]]
    with pytest.raises(ValueError, match="min_support must be >= 1"):
        DifferentiableClusteringModule(DIM, num_interests=K, min_support=0)


@pytest.mark.parametrize("check", ["padding", "clusters", "deterministic"])
def test_min_support_dcm_keeps_the_interest_module_properties(check):
    """Every planted cluster holds at least two items of every user (clustered_histories), so none is dropped."""
    CHECKS[check](dcm(K, centroid_scale="unit", min_support=2))
