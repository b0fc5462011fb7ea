"""Properties every registered interest module must have (the registry kind ``interests`` is iterated, so a plugin
registered later is covered too).

Data: item embeddings in ``C = K`` well-separated clusters (orthonormal centres plus noise of norm ~0.2); every user's
history holds every cluster (at least two items each, in random order) and is right-padded to a common length.

Learned modules (attention MLPs, bilinear maps) are judged after the same small budget of Adam steps on a clustering
objective (``clustering_loss``); a module whose interests collapse by construction cannot reach the thresholds
whatever its training, and one without parameters is judged as it is. Interests are compared with the cluster
centres in the item space, so a module must start (or stay) in that space, as every built-in does (``S = I``
initialisations, convex combinations of history items, medoids).

Thresholds and why:
- distinct: a user's mean pairwise cosine of valid interests (``interest_similarity``) is at most 0.5 for every
  user and at most 0.2 on average, and no pair of a user's valid interests has cosine above 0.95 (duplicates).
  One interest per orthogonal cluster gives ~0; a collapsed module gives 1.0.
- purity: at least 90% of valid interests have cosine >= 0.9 with their nearest centre. An even mix of two
  orthogonal clusters has cosine 0.71, and anything more mixed than 67/33 stays below 0.9.
- coverage: at least 90% of (user, cluster) pairs are recovered by a pure interest nearest to that cluster.
  K valid history items picked at random would cover 1 - (3/4)^4 = 68% of 4 equal clusters, mixtures 0%.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lightning_retrieval.metrics.interests import interest_similarity
from lightning_retrieval.models.interests.base import InterestModule, interests_supported, squash
from lightning_retrieval.registry import components

DIM, K, LENGTH, USERS = 16, 4, 24, 64
TRAIN_STEPS, LR = 100, 1e-2


def clustered_histories(seed: int, users: int = USERS, length: int = LENGTH, noise: float = 0.05):
    """``(history [U, L, D], mask [U, L], labels [U, L], centres [K, D])``; padding positions hold zeros."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.eye(DIM)[:K]
    n = torch.randint(2 * K + 2, length + 1, (users,), generator=g)
    forced = torch.arange(K).repeat(2).expand(users, -1)  # two items of every cluster
    sequence = torch.cat([forced, torch.randint(0, K, (users, length - 2 * K), generator=g)], 1)
    keys = torch.rand(users, length, generator=g) + (torch.arange(length)[None] >= n[:, None]).float() * 2
    shuffled = sequence.gather(1, keys.argsort(1))  # the first n entries: a random order of sequence[:n]
    pos = torch.arange(length)[None]
    labels = shuffled.gather(1, (pos - (length - n[:, None])) % length)  # right-aligned: the last n positions
    mask = pos >= length - n[:, None]
    history = (centres[labels] + noise * torch.randn(users, length, DIM, generator=g)) * mask[:, :, None]
    return history, mask, labels, centres


def clustering_loss(interests: torch.Tensor, valid: torch.Tensor, history: torch.Tensor, mask: torch.Tensor):
    """Chamfer loss in cosine plus repulsion: every valid item near some valid interest, every valid interest near
    some item (this also trains an interest that wins no item: no winner-takes-all), and the mean squared pairwise
    cosine of a user's valid interests (an anti-collapse regulariser, as multi-interest training uses).

    None of it can make identical interests distinct: a module whose K interests are one vector for every
    parameter value (routing from uniform logits with one shared map) fails whatever the training."""
    unit = F.normalize(interests, dim=-1)
    sims = torch.einsum("bkd,bld->blk", unit, F.normalize(history, dim=-1))
    item_side = sims.masked_fill(~valid[:, None, :], -2.0).max(-1).values  # [B, L]
    interest_side = sims.masked_fill(~mask[:, :, None], -2.0).max(1).values  # [B, K]
    pairs = valid[:, :, None] & valid[:, None, :] & ~torch.eye(valid.shape[1], dtype=torch.bool)
    repulsion = (unit @ unit.transpose(1, 2)).pow(2)[pairs].mean()
    return (1 - item_side)[mask].mean() + (1 - interest_side)[valid].mean() + repulsion


def fit_to_clusters(module: torch.nn.Module, steps: int = TRAIN_STEPS) -> torch.nn.Module:
    """A few Adam steps on the clustering objective for modules with parameters; returns it in eval mode."""
    params = [p for p in module.parameters() if p.requires_grad]
    if params:
        optimizer = torch.optim.Adam(params, lr=LR)
        module.train()
        for step in range(steps):
            history, mask, _, _ = clustered_histories(seed=1000 + step)
            loss = clustering_loss(*module(history, mask), history, mask)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return module.eval()


def build(cls) -> torch.nn.Module:
    torch.manual_seed(0)
    return cls(DIM, num_interests=K)


# ---- the checks, usable on any module class (also an old version loaded from git, see the report) ----
def check_distinct(module) -> None:
    history, mask, _, _ = clustered_histories(seed=7)
    with torch.no_grad():
        interests, valid = module(history, mask)
    assert (valid.sum(1) >= 2).all(), "users with 10+ items in 4 clusters must get at least 2 valid interests"
    similarity = torch.from_numpy(interest_similarity(interests, valid))
    assert similarity.mean() <= 0.2 and similarity.max() <= 0.5, (
        f"interests are not distinct: mean pairwise cosine {float(similarity.mean()):.3f} (max over users "
        f"{float(similarity.max()):.3f}); 1.0 = collapsed"
    )
    unit = F.normalize(interests, dim=-1)
    pairs = valid[:, :, None] & valid[:, None, :] & ~torch.eye(K, dtype=torch.bool)
    closest = float((unit @ unit.transpose(1, 2))[pairs].max())
    assert closest <= 0.95, f"two valid interests of a user are duplicates (cosine {closest:.3f})"


def check_padding_is_ignored(module) -> None:
    history, mask, _, _ = clustered_histories(seed=8)
    with torch.no_grad():
        interests, valid = module(history, mask)
        garbage = torch.randn(history.shape, generator=torch.Generator().manual_seed(9)) * 50
        changed, changed_valid = module(torch.where(mask[:, :, None], history, garbage), mask)
        pad = 5  # more padding in front of the same right-aligned histories
        longer = torch.cat([torch.randn(history.shape[0], pad, DIM) * 50, history], 1)
        longer_mask = torch.cat([torch.zeros(history.shape[0], pad, dtype=torch.bool), mask], 1)
        padded, padded_valid = module(longer, longer_mask)
    assert torch.equal(valid, changed_valid) and torch.equal(valid, padded_valid)
    torch.testing.assert_close(changed, interests, atol=1e-5, rtol=1e-5, msg="padded values changed the interests")
    torch.testing.assert_close(padded, interests, atol=1e-5, rtol=1e-5, msg="more padding changed the interests")


def check_recovers_clusters(module) -> None:
    history, mask, labels, centres = clustered_histories(seed=7)
    with torch.no_grad():
        interests, valid = module(history, mask)
    cos = F.normalize(interests, dim=-1) @ centres.T  # [U, K, C]
    best, nearest = cos.max(-1)
    pure = valid & (best >= 0.9)
    purity = float(pure.sum() / valid.sum())
    present = F.one_hot(labels, K).bool().logical_and(mask[:, :, None]).any(1)  # [U, C] clusters in the history
    recovered = (F.one_hot(nearest, K).bool() & pure[:, :, None]).any(1)  # [U, C]
    coverage = float((recovered & present).sum() / present.sum())
    assert purity >= 0.9, f"only {purity:.1%} of valid interests are dominated by one planted cluster"
    assert coverage >= 0.9, f"only {coverage:.1%} of the users' planted clusters are recovered by an interest"


def check_deterministic_in_eval(module) -> None:
    history, mask, _, _ = clustered_histories(seed=10)
    with torch.no_grad():
        first, _ = module(history, mask)
        second, _ = module(history, mask)
    assert torch.equal(first, second), "evaluation/serving must not draw random numbers"


CHECKS = {
    "distinct": check_distinct,
    "padding": check_padding_is_ignored,
    "clusters": check_recovers_clusters,
    "deterministic": check_deterministic_in_eval,
}

NAMES = [c.name for c in components("interests")]


@pytest.fixture(scope="module")
def fitted():
    cache = {}

    def get(name: str):
        if name not in cache:
            cls = next(c.cls for c in components("interests") if c.name == name)
            cache[name] = fit_to_clusters(build(cls))
        return cache[name]

    return get


def test_every_builtin_interest_module_is_covered():
    assert {"dcm", "dynamic_routing", "multihead_attention", "preclustering"} <= set(NAMES)


# Known failures, strict: when one is fixed the test XPASSes and fails, so remove its entry then.
KNOWN_FAILURES = {
    ("multihead_attention", "distinct"): "ComiRec-SA ends with two heads on one cluster and one head on a mix of "
    "two (torch seeds 0, 2, 3 of 0-4; seeds 1 and 4 recover all 4 clusters): attention heads have no mechanism "
    "against duplicates. A local minimum of the method, not the test's budget: seeds 0, 2, 3 fail identically after "
    "100, 300 and 1000 steps (the duplicated head's softmax is saturated on one cluster, so the repulsion's gradient "
    "cannot move it); orthogonal W2 init (fails seeds 5, 7) and Lin et al.'s |AA^T - I|^2 penalty (fails 0, 2, 3) "
    "do not fix it",
    ("multihead_attention", "clusters"): "same duplicated heads as 'distinct': a mixed head is not pure",
}


def _cases():
    for name in NAMES:
        for check in sorted(CHECKS):
            reason = KNOWN_FAILURES.get((name, check))
            marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
            yield pytest.param(name, check, marks=marks, id=f"{name}-{check}")


@pytest.mark.parametrize(("name", "check"), list(_cases()))
def test_interest_module_property(name, check, fitted):
    CHECKS[check](fitted(name))


def test_clustering_modules_recover_clusters_without_training():
    """DCM and pre-clustering cluster by construction; routing from seeded random logits is not collapsed even
    before training (its capsules are still mixtures then: 3 routing iterations on unit-norm items are not enough
    to converge, which is why it is judged after training above)."""
    for name in ("dcm", "preclustering"):
        module = build(next(c.cls for c in components("interests") if c.name == name)).eval()
        check_distinct(module)
        check_recovers_clusters(module)
    routing = build(next(c.cls for c in components("interests") if c.name == "dynamic_routing")).eval()
    history, mask, _, _ = clustered_histories(seed=7)
    with torch.no_grad():
        similarity = interest_similarity(*routing(history, mask))
    assert similarity.mean() < 0.9, f"untrained routing capsules have mean pairwise cosine {similarity.mean():.3f}"


class _PooledKTimes(InterestModule):
    """What the old ``dynamic_routing`` (zero logits, one shared map) returned: squash of the mean, K times."""

    def forward(self, history, mask):
        mean = (history * mask[:, :, None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
        return squash(mean)[:, None].expand(-1, self.num_interests, -1), interests_supported(mask, self.num_interests)


def test_the_checks_reject_a_collapsed_module():
    collapsed = _PooledKTimes(DIM, K)
    with pytest.raises(AssertionError, match="not distinct"):
        check_distinct(collapsed)
    with pytest.raises(AssertionError, match="dominated by one planted cluster"):
        check_recovers_clusters(collapsed)


def test_dcm_routing_mass_is_each_interests_share_of_the_history():
    """The routing mass sizes serving budgets (KDD'25): on planted clusters it must track each cluster's share."""
    dcm = build(next(c.cls for c in components("interests") if c.name == "dcm")).eval()
    history, mask, labels, centres = clustered_histories(seed=7)
    with torch.no_grad():
        interests, valid = dcm(history, mask)
    share = dcm.routing_mass / dcm.routing_mass.sum(1, keepdim=True)
    nearest = (F.normalize(interests, dim=-1) @ centres.T).argmax(-1)  # [U, K] cluster of each interest
    planted = (F.one_hot(labels, K) * mask[:, :, None]).sum(1).float() / mask.sum(1, keepdim=True)  # [U, C]
    torch.testing.assert_close(share[valid], planted.gather(1, nearest)[valid], atol=0.1, rtol=0)
    assert (share[valid] - planted.gather(1, nearest)[valid]).abs().mean() < 0.03
