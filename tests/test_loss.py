"""Sampled softmax: logQ correction, duplicate / accidental-hit masking, temperature, gradients."""

import math

import pytest
import torch
import torch.nn.functional as F

from lightning_retrieval.data.negatives import UniformNegativeSampler, UnigramNegativeSampler
from lightning_retrieval.losses import SampledSoftmaxLoss


def _inputs(b=4, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    u = F.normalize(torch.randn(b, d, generator=g), dim=-1)
    v = F.normalize(torch.randn(b, d, generator=g), dim=-1)
    return u, v


def test_logits_match_hand_computation_with_logq():
    u, v = _inputs()
    ids = torch.tensor([0, 1, 2, 3])
    log_q = torch.log(torch.tensor([0.4, 0.3, 0.2, 0.1]))
    loss = SampledSoftmaxLoss(temperature=0.1, learn_temperature=False)
    expected = u @ v.T / 0.1 - (log_q + math.log(4))[None, :]
    torch.testing.assert_close(loss.logits(u, v, ids, log_q), expected)
    expected_loss = F.cross_entropy(expected, torch.arange(4))
    torch.testing.assert_close(loss(u, v, ids, log_q), expected_loss)


def test_logq_correction_lowers_popular_items_logits_relative_to_rare_ones():
    u, v = _inputs()
    ids = torch.arange(4)
    log_q = torch.log(torch.tensor([0.7, 0.1, 0.1, 0.1]))
    with_q = SampledSoftmaxLoss(temperature=0.1, learn_temperature=False).logits(u, v, ids, log_q)
    without = SampledSoftmaxLoss(temperature=0.1, learn_temperature=False, logq_correction=False).logits(
        u, v, ids, log_q
    )
    shift = with_q - without
    assert torch.allclose(shift[:, 0] - shift[:, 1], torch.full((4,), math.log(0.1 / 0.7)))


def test_duplicate_positives_are_masked_not_negatives():
    u, v = _inputs()
    v[2] = v[0]
    ids = torch.tensor([5, 6, 5, 7])  # rows 0 and 2 share their positive item
    log_q = torch.zeros(4)
    loss = SampledSoftmaxLoss(temperature=0.1, learn_temperature=False, logq_correction=False)
    logits = loss.logits(u, v, ids, log_q)
    assert torch.isinf(logits[0, 2]) and torch.isinf(logits[2, 0])
    assert torch.isfinite(logits.diagonal()).all()
    # row 0's loss equals a softmax over its positive and the two true negatives only
    ref0 = -torch.log_softmax((u[0] @ v[[0, 1, 3]].T) / 0.1, dim=0)[0]
    per_row = F.cross_entropy(logits, torch.arange(4), reduction="none")
    torch.testing.assert_close(per_row[0], ref0)
    unmasked = SampledSoftmaxLoss(
        temperature=0.1, learn_temperature=False, logq_correction=False, mask_duplicates=False
    ).logits(u, v, ids, log_q)
    assert torch.isfinite(unmasked).all()


def test_corpus_negatives_are_corrected_and_accidental_hits_masked():
    u, v = _inputs(b=3)
    n = F.normalize(torch.randn(2, 8), dim=-1)
    ids = torch.tensor([1, 2, 3])
    neg_ids = torch.tensor([2, 9])  # item 2 is row 1's positive: an accidental hit
    neg_log_q = torch.log(torch.tensor([0.5, 0.25]))
    loss = SampledSoftmaxLoss(temperature=0.2, learn_temperature=False)
    logits = loss.logits(u, v, ids, torch.zeros(3), n, neg_ids, neg_log_q)
    assert logits.shape == (3, 5)
    assert torch.isinf(logits[1, 3]) and torch.isfinite(logits[0, 3])
    torch.testing.assert_close(logits[0, 4], u[0] @ n[1] / 0.2 - neg_log_q[1])


def test_learned_temperature_gets_gradients_and_is_clamped():
    u, v = _inputs()
    u.requires_grad_(True)
    loss = SampledSoftmaxLoss(temperature=0.05, min_temperature=0.02)
    out = loss(u, v, torch.arange(4), torch.zeros(4))
    out.backward()
    assert loss.log_inverse_temperature.grad is not None and u.grad is not None
    with torch.no_grad():
        loss.log_inverse_temperature.fill_(10.0)
    assert float(loss.temperature.detach()) == pytest.approx(0.02)
    with pytest.raises(ValueError, match="min_temperature"):
        SampledSoftmaxLoss(temperature=0.01, min_temperature=0.05)


def test_negative_samplers_distributions_and_log_q():
    counts = torch.tensor([100, 10, 0, 0]).numpy()
    g = torch.Generator().manual_seed(0)
    ids, log_q = UniformNegativeSampler(num_negatives=4000).sample(counts, g)
    freq = torch.bincount(ids, minlength=4).float() / 4000
    assert torch.allclose(freq, torch.full((4,), 0.25), atol=0.03)
    torch.testing.assert_close(log_q, torch.full((4000,), math.log(0.25 * 4000)))
    uni = UnigramNegativeSampler(num_negatives=10, power=1.0).probabilities(counts)
    assert uni.tolist() == pytest.approx([101 / 114, 11 / 114, 1 / 114, 1 / 114])
    with pytest.raises(ValueError, match="num_negatives"):
        UniformNegativeSampler(0)
