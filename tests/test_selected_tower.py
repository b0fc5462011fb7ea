"""Hard selection with the user tower's graph on the selected interest only trains what the K-fold pass trains."""

from __future__ import annotations

import copy
from functools import partial

import pytest
import torch
from torch import nn

from lightning_retrieval.models.crossing.mlp import MLPCrossing
from lightning_retrieval.models.dropout_replay import record_dropout, replay_dropout, replay_supported
from lightning_retrieval.models.interests import (
    DifferentiableClusteringModule,
    DynamicRoutingInterests,
    SelfAttentiveInterests,
)
from lightning_retrieval.models.towers import FeatureCrossingTower
from lightning_retrieval.queries import InterestQueries
from lightning_retrieval.tasks import RetrievalTask

MODULES = {
    "multihead_attention": partial(SelfAttentiveInterests, num_interests=4),
    "dynamic_routing": partial(DynamicRoutingInterests, num_interests=4),
    "dcm": partial(DifferentiableClusteringModule, num_interests=3),
}


def build(spec, interests, dropout=0.2, history_field="replace"):
    tower = partial(
        FeatureCrossingTower, crossing=partial(MLPCrossing, hidden_dims=[32, 16], dropout=dropout), output_dim=16
    )
    torch.manual_seed(0)
    return RetrievalTask(
        spec,
        16,
        queries=partial(InterestQueries, interests=interests, history_field=history_field),
        user_tower=tower,
        item_tower=tower,
        id_dropout=0.1,  # the pooled ID fields' dropout is replayed too
    )


def train(task, batches, seed=1):
    """Losses, every step's gradients and the final state after Adam steps; the random state at the end."""
    torch.manual_seed(seed)
    opt = torch.optim.Adam(task.parameters(), lr=0.01)
    losses, grads = [], []
    for batch in batches:
        opt.zero_grad()
        loss = task.compute_loss(batch)
        loss.backward()
        losses.append(loss.detach())
        grads.append({n: p.grad.clone() for n, p in task.named_parameters() if p.grad is not None})
        opt.step()
    return losses, grads, task.state_dict(), torch.get_rng_state()


def count_tower_rows(task) -> list[tuple[int, bool]]:
    """Rows of every user-tower call and whether it built a graph."""
    calls = []
    task.user_tower.register_forward_pre_hook(lambda m, args: calls.append((args[0].shape[0], torch.is_grad_enabled())))
    return calls


@pytest.mark.parametrize("name", list(MODULES))
def test_selected_tower_pass_trains_like_the_k_fold_pass(movielens_dm, name):
    it = iter(movielens_dm.train_dataloader())
    batches = [next(it) for _ in range(3)]
    fast = build(movielens_dm.feature_spec, MODULES[name])
    reference = copy.deepcopy(fast)
    reference.queries.replay_selection = False
    rows = count_tower_rows(fast)
    got, want = train(fast, batches), train(reference, batches)
    b, k = batches[0]["user"].shape[0], fast.queries.num_interests
    assert rows[:2] == [(b * k, False), (b, True)]  # the fast path ran: K-fold without graph, then B rows
    assert fast.queries.replay_selection
    for loss_got, loss_want in zip(got[0], want[0]):
        torch.testing.assert_close(loss_got, loss_want, rtol=1e-5, atol=1e-6)
    for step_got, step_want in zip(got[1], want[1]):
        assert step_got.keys() == step_want.keys()
        for key in step_want:
            torch.testing.assert_close(step_got[key], step_want[key], rtol=1e-4, atol=1e-6, msg=key)
    for key, value in want[2].items():  # Adam (lr 0.01) turns 1e-7 gradient noise on rarely hit rows into 1e-4
        torch.testing.assert_close(got[2][key], value, rtol=1e-4, atol=3e-4, msg=key)
    assert torch.equal(got[3], want[3])  # the random stream advanced exactly as in the K-fold pass


def test_selected_tower_gradient_differs_without_replayed_masks(movielens_dm):
    """The check above can fail: selected rows with fresh dropout masks give another loss."""
    batch = next(iter(movielens_dm.train_dataloader()))
    task = build(movielens_dm.feature_spec, MODULES["multihead_attention"], dropout=0.5)
    torch.manual_seed(1)
    want = task.compute_loss(batch)
    torch.manual_seed(1)
    interests, valid, _ = task.queries.interest_vectors(task, batch)
    items = task.embed_items(batch)
    with torch.no_grad():
        every = task.encode_users(batch, interests)
    pick = torch.einsum("bkd,bd->bk", every, items).masked_fill(~valid, float("-inf")).argmax(1)
    fresh = task.encode_users(batch, interests[torch.arange(len(pick)), pick][:, None])[:, 0]  # new masks
    assert not torch.allclose(task.in_batch_loss(fresh, batch, items), want, atol=1e-3)


def test_randomness_outside_dropout_falls_back_to_the_k_fold_pass(movielens_dm):
    batch = next(iter(movielens_dm.train_dataloader()))
    fast = build(movielens_dm.feature_spec, MODULES["dynamic_routing"])
    reference = copy.deepcopy(fast)
    reference.queries.replay_selection = False

    def draw(module, args):
        torch.rand(1)

    for task in (fast, reference):  # a tower that draws from the stream outside nn.Dropout
        task.user_tower.register_forward_pre_hook(draw)
    torch.manual_seed(3)
    got = fast.compute_loss(batch)
    torch.manual_seed(3)
    want = reference.compute_loss(batch)
    assert not fast.queries.replay_selection  # found, and not tried again
    assert torch.equal(got, want)  # the stream was rewound: the K-fold pass drew what it always draws


def test_soft_selection_and_evaluation_keep_the_k_fold_pass(movielens_dm):
    batch = next(iter(movielens_dm.train_dataloader()))
    task = build(movielens_dm.feature_spec, MODULES["dcm"])
    task.queries.selection = "soft"
    rows = count_tower_rows(task)
    task.compute_loss(batch)
    assert rows == [(batch["user"].shape[0] * 3, True)]
    task.queries.selection = "hard"
    rows.clear()
    with torch.no_grad():
        task.compute_loss(batch)
    assert rows == [(batch["user"].shape[0] * 3, False)]


@pytest.mark.parametrize("inplace", [False, True])
def test_recorded_dropout_draws_what_f_dropout_draws(inplace):
    layer = nn.Sequential(nn.Linear(8, 8), nn.Dropout(0.3, inplace=inplace))
    x = torch.randn(40, 8)
    torch.manual_seed(5)
    want = layer(x)
    state = torch.get_rng_state()
    torch.manual_seed(5)
    with record_dropout(layer) as masks:
        got = layer(x)
    assert torch.equal(got, want) and torch.equal(torch.get_rng_state(), state)
    assert len(masks) == 1 and set(masks[0].unique().tolist()) == {0.0, torch.tensor(1 / 0.7).item()}
    rows = torch.tensor([3, 0, 17])
    with replay_dropout(layer, masks, rows):
        assert torch.equal(layer(x[rows]), want[rows])
    assert torch.equal(torch.get_rng_state(), state)  # the replay drew nothing
    assert type(layer[1].forward).__name__ == "method"  # the patch is gone


def test_replay_is_refused_for_running_statistics_and_other_dropout_kinds():
    assert replay_supported(nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.1)))
    assert not replay_supported(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)))
    assert replay_supported(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)).eval())
    # batch statistics couple the rows even without running statistics: B x K rows are not the B selected ones
    assert not replay_supported(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2, track_running_stats=False)))
    assert not replay_supported(nn.Sequential(nn.AlphaDropout(0.1)))
