"""REMI's training fixes as plugins: routing regularisation (interest_regularizers) and interest-aware hard negatives
(loss ``hard_negative_softmax``), with any interest module that exposes its routing."""

from functools import partial

import pytest
import torch
import torch.nn.functional as F
import yaml
from jsonargparse import ArgumentParser
from scipy.stats import chisquare

from lightning_retrieval.cli import prepare_registry
from lightning_retrieval.losses import HardNegativeSoftmaxLoss, SampledSoftmaxLoss, hard_negative_log_weights
from lightning_retrieval.models.interests import (
    DifferentiableClusteringModule,
    DynamicRoutingInterests,
    InterestModule,
    PreClusteringInterests,
    SelfAttentiveInterests,
)
from lightning_retrieval.queries import InterestQueries, InterestRegularizer, RoutingRegularization
from lightning_retrieval.queries.base import QueriesFactory
from lightning_retrieval.queries.regularizers import routing_concentration
from lightning_retrieval.registry import register, resolve
from lightning_retrieval.tasks import RetrievalTask

prepare_registry()


def clustered_history(batch=8, length=12, dim=16, seed=0):
    """``[B, L, D]`` histories from 3 well-separated directions, the last 3 positions of each row padding."""
    g = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(3, dim, generator=g), dim=-1) * 3
    history = centres[torch.randint(0, 3, (batch, length), generator=g)] + 0.1 * torch.randn(
        batch, length, dim, generator=g
    )
    mask = torch.ones(batch, length, dtype=torch.bool)
    mask[:, :3] = False
    return history.masked_fill(~mask[:, :, None], 0.0), mask


# ---- routing regularisation ----


def test_concentration_is_zero_for_spread_routing_and_one_minus_one_over_n_for_one_item():
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[1, :2] = False  # 3 valid items
    spread = mask[:, None, :].float().expand(2, 4, 5) * 0.3  # even over the valid items, any scale
    one_hot = torch.zeros(2, 4, 5)
    one_hot[:, :, 4] = 0.9
    torch.testing.assert_close(routing_concentration(spread, mask), torch.zeros(2, 4))
    torch.testing.assert_close(routing_concentration(one_hot, mask), torch.tensor([[0.8] * 4, [2 / 3] * 4]))
    # routing placed on padding never counts: the same rows plus garbage at padded positions
    garbage = one_hot.clone()
    garbage[1, :, :2] = 5.0
    torch.testing.assert_close(routing_concentration(garbage, mask), routing_concentration(one_hot, mask))


class FixedRouting(InterestModule):
    """Routing ``softmax_L(logits)`` from a learnable ``[K, L]`` table (the same for every user)."""

    exposes_routing = True

    def __init__(self, logits: torch.Tensor):
        super().__init__(4, logits.shape[0])
        self.logits = torch.nn.Parameter(logits)

    def forward(self, history, mask):
        attn = torch.softmax(self.logits[None].masked_fill(~mask[:, None, :], float("-inf")), dim=-1)
        self.routing = attn.expand(history.shape[0], -1, -1)
        return torch.einsum("bkl,bld->bkd", self.routing, history), torch.ones(
            history.shape[0], self.num_interests, dtype=torch.bool
        )


def test_penalty_is_minimal_for_spread_routing_and_large_for_one_hot():
    history, mask = torch.randn(3, 6, 4), torch.ones(3, 6, dtype=torch.bool)
    reg = RoutingRegularization()
    values = {}
    for name, logits in {"spread": torch.zeros(2, 6), "one_hot": torch.eye(2, 6) * 60.0}.items():
        module = FixedRouting(logits)
        interests, valid = module(history, mask)
        values[name] = reg(module, interests, valid, mask).item()
    assert values["spread"] == pytest.approx(0.0, abs=1e-6)
    assert values["one_hot"] == pytest.approx(2 * (1 - 1 / 6) ** 2, rel=1e-4)  # K rows of (1 - 1/n)^2


def test_gradient_pushes_a_collapsed_routing_apart():
    """Descending the penalty alone spreads a routing that collapsed onto one item (largest weight falls)."""
    history, mask = torch.randn(3, 8, 4), torch.ones(3, 8, dtype=torch.bool)
    logits = torch.zeros(2, 8)
    logits[0, 0], logits[1, 5] = 4.0, 4.0  # each interest ~88% on one item
    module, reg = FixedRouting(logits), RoutingRegularization()
    optimizer = torch.optim.SGD(module.parameters(), lr=5.0)
    first = None
    for _ in range(50):
        interests, valid = module(history, mask)
        penalty = reg(module, interests, valid, mask)
        first = penalty.item() if first is None else first
        optimizer.zero_grad()
        penalty.backward()
        optimizer.step()
    module(history, mask)
    top = module.routing.max(-1).values[0]
    assert first > 0.5 and penalty.item() < 0.05 * first
    assert (top < 0.5).all(), f"largest routing weight per interest after descent: {top.tolist()}"


def test_self_attention_collapsed_by_scaling_spreads_under_the_regulariser():
    """On a real interest module: self-attention made peaky (attention logits x30) is spread by the penalty."""
    torch.manual_seed(0)
    history, mask = clustered_history()
    module = SelfAttentiveInterests(16, num_interests=3, max_length=0)
    with torch.no_grad():
        module.attention[2].weight.mul_(30.0)
    reg = RoutingRegularization()
    optimizer = torch.optim.Adam(module.parameters(), lr=0.01)
    values = []
    for _ in range(40):
        interests, valid = module(history, mask)
        penalty = reg(module, interests, valid, mask)
        values.append(penalty.item())
        optimizer.zero_grad()
        penalty.backward()
        optimizer.step()
    peak_before = values[0]
    assert peak_before > 0.5 and values[-1] < 0.2 * peak_before


@pytest.mark.parametrize("make", [partial(DifferentiableClusteringModule, num_interests=3), SelfAttentiveInterests])
def test_routing_of_dcm_and_self_attention_is_b_k_l_with_gradient_and_zero_at_padding(make):
    history, mask = clustered_history()
    history.requires_grad_(True)
    module = make(16)
    interests, valid = module(history, mask)
    routing = module.last_routing()
    assert routing.shape == (8, module.num_interests, 12) and routing.requires_grad
    assert routing[:, :, :3].abs().max() == 0  # padding feeds no interest
    penalty = RoutingRegularization()(module, interests, valid, mask)
    penalty.backward()
    assert history.grad.abs().sum() > 0


def test_modules_without_a_trainable_routing_are_refused_with_a_clear_error():
    with pytest.raises(
        ValueError, match="routing_regularization.*PreClusteringInterests exposes none.*dcm, multihead_attention"
    ):
        InterestQueries(16, interests=PreClusteringInterests, regularizers=[RoutingRegularization()])
    with pytest.raises(ValueError, match="exposes no routing matrix"):
        PreClusteringInterests(16).last_routing()
    history, mask = clustered_history()
    module = DynamicRoutingInterests(16, num_interests=3)
    interests, valid = module(history, mask)
    with pytest.raises(ValueError, match="carries no gradient.*dcm or multihead_attention"):
        RoutingRegularization()(module, interests, valid, mask)


def test_interests_query_kind_adds_the_weighted_penalty_to_the_task_loss(movielens_dm):
    torch.manual_seed(0)
    batch = next(iter(movielens_dm.train_dataloader()))
    dcm = partial(DifferentiableClusteringModule, num_interests=3)
    queries = partial(InterestQueries, interests=dcm, regularizers=[RoutingRegularization(weight=2.5)])
    model = RetrievalTask(movielens_dm.feature_spec, 16, queries=queries)
    terms = model.loss_terms(batch)
    assert list(terms) == ["implicit", "routing_regularization"]
    module = model.queries.interests
    mask = batch["history_mask"]
    expected = (routing_concentration(module.last_routing(), mask) ** 2 * module.routing_mass.gt(0)).sum(1).mean()
    assert terms["routing_regularization"].item() == pytest.approx(2.5 * expected.item(), rel=1e-5)
    assert terms["routing_regularization"].item() > 0
    sum(terms.values()).backward()
    assert model.embeddings.table("item_id").grad.abs().sum() > 0


@register("test_interest_count_penalty")
class InterestCountPenalty(InterestRegularizer):
    """A plugin regulariser: the mean number of valid interests (reads no routing)."""

    def forward(self, module, interests, valid, mask):
        return valid.float().sum(1).mean()


def test_regularizers_are_picked_by_name_in_yaml_plugins_included():
    assert resolve("interest_regularizers", "routing_regularization") is RoutingRegularization
    assert resolve("losses", "hard_negative_softmax") is HardNegativeSoftmaxLoss
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--queries", type=QueriesFactory)
    spec = {
        "class_path": "interests",
        "init_args": {
            "interests": {"class_path": "multihead_attention", "init_args": {"num_interests": 3}},
            "regularizers": [
                {"class_path": "routing_regularization", "init_args": {"weight": 0.5}},
                {"class_path": "test_interest_count_penalty"},
            ],
        },
    }
    queries = parser.instantiate_classes(parser.parse_args(["--queries", yaml.safe_dump(spec)])).queries(16, {})
    assert [type(r) for r in queries.regularizers] == [RoutingRegularization, InterestCountPenalty]
    assert queries.regularizers[0].weight == 0.5


# ---- interest-aware hard negatives ----


def random_batch(seed=0, b=24, m=10, d=8):
    g = torch.Generator().manual_seed(seed)
    unit = lambda *s: F.normalize(torch.randn(*s, generator=g), dim=-1)  # noqa: E731
    ids = torch.randint(0, 8, (b,), generator=g)  # duplicates in the batch: masked columns
    return dict(
        user=unit(b, d).requires_grad_(True),
        item=unit(b, d).requires_grad_(True),
        item_ids=ids,
        item_log_q=torch.log(torch.rand(b, generator=g) * 0.05 + 0.001),
        neg=unit(m, d),
        neg_ids=torch.cat([ids[:2], torch.arange(100, 100 + m - 2)]),  # two accidental hits
        neg_log_q=torch.log(torch.rand(m, generator=g) + 0.1),
    )


@pytest.mark.parametrize("logq", [True, False])
@pytest.mark.parametrize("corpus", [True, False])
def test_beta_zero_is_the_plain_sampled_softmax(logq, corpus):
    x = random_batch()
    args = [x["user"], x["item"], x["item_ids"], x["item_log_q"]]
    args += [x["neg"], x["neg_ids"], x["neg_log_q"]] if corpus else []
    plain = SampledSoftmaxLoss(logq_correction=logq)(*args)
    (g_plain,) = torch.autograd.grad(plain, x["user"])
    hard = HardNegativeSoftmaxLoss(beta=0.0, logq_correction=logq)(*args)
    (g_hard,) = torch.autograd.grad(hard, x["user"])
    torch.testing.assert_close(hard, plain)
    torch.testing.assert_close(g_hard, g_plain)
    harder = HardNegativeSoftmaxLoss(beta=1.0, logq_correction=logq)(*args)
    assert harder > plain  # hard negatives weigh more: a larger denominator for every row


def test_hard_negatives_are_drawn_in_proportion_to_exp_beta_sim_from_popularity_skewed_pools():
    """Sampling-importance-resampling on the loss's weights: pools drawn from a skewed popularity q, logQ counts
    ``P q_j``; one negative resampled per pool follows ``exp(beta s_j)`` over the corpus, not the popularity."""
    g = torch.Generator().manual_seed(0)
    scores = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, -2.0])  # s_j of the 6 corpus items for the user
    q = torch.tensor([0.02, 0.05, 0.08, 0.15, 0.3, 0.4])  # popular items are the easy ones
    rows, pool, beta = 3000, 2000, 1.0  # self-normalised weights are biased O(1 / pool): large pools
    items = torch.multinomial(q.expand(rows, -1), pool, replacement=True, generator=g)  # [R, P]
    log_counts = torch.log(pool * q)[items]
    log_w = hard_negative_log_weights(scores[items], log_counts, torch.ones_like(items, dtype=torch.bool), beta)
    drawn = items.gather(1, torch.multinomial(log_w.exp(), 1, generator=g)).squeeze(1)
    counts = torch.bincount(drawn, minlength=6).double()
    ideal = torch.softmax(beta * scores.double(), 0)
    assert chisquare(counts.numpy(), (rows * ideal).numpy()).pvalue > 0.001
    # the same draw without the logQ counts follows exp(beta s) * q instead: rejected, so the test has power
    log_w = hard_negative_log_weights(scores[items], torch.zeros_like(log_counts), log_counts.isfinite(), beta)
    drawn = items.gather(1, torch.multinomial(log_w.exp(), 1, generator=g)).squeeze(1)
    counts = torch.bincount(drawn, minlength=6).double()
    assert chisquare(counts.numpy(), (rows * ideal).numpy()).pvalue < 1e-6
    # beta = 0 with the logQ counts: uniform over the corpus
    log_w = hard_negative_log_weights(scores[items], log_counts, log_counts.isfinite(), 0.0)
    drawn = items.gather(1, torch.multinomial(log_w.exp(), 1, generator=g)).squeeze(1)
    counts = torch.bincount(drawn, minlength=6).double()
    assert chisquare(counts.numpy()).pvalue > 0.001


def test_loss_denominator_estimates_n_times_the_hard_negative_mean_under_the_logq_correction():
    """In-batch columns drawn from a skewed q: each row's negative mass in the loss estimates
    ``N * E_{j ~ q*}[exp(s_j)]`` over the corpus items other than the row's positive (logQ keeps it unbiased)."""
    g = torch.Generator().manual_seed(1)
    vectors = F.normalize(torch.randn(6, 4, generator=g), dim=-1)
    q = torch.tensor([0.02, 0.05, 0.08, 0.15, 0.3, 0.4])
    b = 3000
    ids = torch.multinomial(q, b, replacement=True, generator=g)
    user = F.normalize(torch.randn(1, 4, generator=g), dim=-1).expand(b, -1)
    beta, tau = 2.0, 0.5
    loss = HardNegativeSoftmaxLoss(beta=beta, temperature=tau, learn_temperature=False)
    logits = loss.logits(user, vectors[ids], ids, torch.log(q)[ids])
    negative_mass = torch.logsumexp(logits.fill_diagonal_(float("-inf")), dim=1).exp()  # [B]
    s = (user[0] @ vectors.T) / tau
    for item in range(6):
        others = torch.arange(6) != item
        ideal = others.sum() * (torch.softmax(beta * s[others], 0) * s[others].exp()).sum()
        rows = ids == item
        assert negative_mass[rows].mean().item() == pytest.approx(ideal.item(), rel=0.05)


def test_beta_must_be_non_negative():
    with pytest.raises(ValueError, match="beta must be a finite number >= 0"):
        HardNegativeSoftmaxLoss(beta=-1.0)
