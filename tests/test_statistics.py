"""Bootstrap intervals and the paired test: coverage on data with a known mean, power, null, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from lightning_retrieval.statistics import bootstrap_mean, paired_difference

# Coverage is estimated from N independent data sets; its standard error under the nominal rate is
# sqrt(0.95 * 0.05 / N). We accept within 3 SE (a false alarm rate of 0.3%). An interval 30% too wide covers
# 98.9% and one 30% too narrow 86%, both outside the band for N = 400 (SE 0.011, band 0.917-0.983).
NOMINAL = 0.95


def _coverage_band(n: int) -> tuple[float, float]:
    se = np.sqrt(NOMINAL * (1 - NOMINAL) / n)
    return NOMINAL - 3 * se, NOMINAL + 3 * se


def test_user_bootstrap_covers_a_known_recall_at_the_nominal_rate():
    rng = np.random.default_rng(0)
    n, true_mean = 400, 0.25  # 610 users with one target each: per-user recall is Bernoulli(0.25)
    draws = [(rng.random(610) < true_mean).astype(float) for _ in range(n)]
    covered = [bootstrap_mean(x, seed=i).contains(true_mean) for i, x in enumerate(draws)]
    low, high = _coverage_band(n)
    assert low <= np.mean(covered) <= high, np.mean(covered)


def test_crossed_bootstrap_covers_the_mean_over_users_and_seeds():
    """x[s, u] = mu + user effect + seed effect + noise, with the seed part small next to the user part (as for
    recall on a few hundred users); the crossed bootstrap covers mu at the nominal rate."""
    rng = np.random.default_rng(1)
    n, mu, seeds, users = 300, 0.25, 3, 400
    covered = []
    for i in range(n):
        x = mu + rng.normal(0, 0.3, users)[None] + rng.normal(0, 0.005, seeds)[:, None]
        x = x + rng.normal(0, 0.1, (seeds, users))
        covered.append(bootstrap_mean(x, n_resamples=1000, seed=i).contains(mu))
    low, high = _coverage_band(n)
    assert low <= np.mean(covered) <= high, np.mean(covered)


def test_seed_resampling_widens_the_interval_when_seeds_disagree():
    rng = np.random.default_rng(2)
    users = rng.normal(0, 0.3, 500)
    agree = users[None] + np.zeros((4, 1))
    disagree = users[None] + np.array([[-0.1], [0.1], [-0.05], [0.05]])
    narrow, wide = bootstrap_mean(agree), bootstrap_mean(disagree)
    assert narrow.estimate == pytest.approx(wide.estimate)
    assert (wide.high - wide.low) > 1.5 * (narrow.high - narrow.low)


def test_weighted_cell_is_the_mean_over_units_and_nan_users_do_not_count():
    values = np.array([1.0, 0.0, np.nan, 0.5])  # per-user means of 2, 1, 0, 4 queries
    weights = np.array([2.0, 1.0, 3.0, 4.0])
    assert bootstrap_mean(values, weights).estimate == pytest.approx((2 * 1 + 0 + 4 * 0.5) / 7)
    assert bootstrap_mean(values).estimate == pytest.approx(1.5 / 3)


def test_paired_test_flags_a_known_shift():
    rng = np.random.default_rng(3)
    base = (rng.random(610) < 0.25).astype(float)
    better = np.where(rng.random(610) < 0.08, 1.0, base)  # ~6 points more recall for the same users
    result = paired_difference(better, base)
    assert result.estimate == pytest.approx(better.mean() - base.mean())
    assert result.low > 0 and result.p_value < 0.01 and result.significant
    flipped = paired_difference(base, better)
    assert flipped.high < 0 and flipped.significant


def test_paired_test_does_not_flag_identical_runs_or_a_relabelled_copy():
    rng = np.random.default_rng(4)
    run = rng.random((3, 610))
    same = paired_difference(run, run.copy())
    assert same.estimate == 0.0 and same.p_value == 1.0 and not same.significant
    # two models that differ per user but not on average: no shift to find
    noise = rng.normal(0, 0.2, 610)
    a, b = 0.5 + noise, 0.5 - noise + (2 * noise).mean()
    assert not paired_difference(a, b).significant


def test_paired_test_is_calibrated_under_the_null():
    """Under H0 (differences symmetric around 0), p < 0.05 in about 5% of data sets (3-SE band)."""
    rng = np.random.default_rng(5)
    n = 300
    draws = [rng.normal(0, 1, 200) for _ in range(n)]
    p = np.array([paired_difference(d, np.zeros(200), n_resamples=500, seed=i).p_value for i, d in enumerate(draws)])
    se = np.sqrt(0.05 * 0.95 / n)
    assert abs((p < 0.05).mean() - 0.05) <= 3 * se, (p < 0.05).mean()


def test_resampling_is_deterministic_for_a_seed():
    rng = np.random.default_rng(6)
    a, b = rng.random((2, 610)), rng.random((3, 610))
    assert bootstrap_mean(a, seed=7) == bootstrap_mean(a, seed=7)
    assert paired_difference(a, b, seed=7) == paired_difference(a, b, seed=7)
    assert bootstrap_mean(a, seed=7) != bootstrap_mean(a, seed=8)


def test_bad_input_is_reported():
    with pytest.raises(ValueError, match="same users"):
        paired_difference(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="no counted value"):
        bootstrap_mean(np.full(5, np.nan))
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_mean(np.zeros(5), confidence=95)


def test_p_value_accounts_for_seed_variance():
    """Every user gains the same small amount on average, but the seeds disagree far more than that: the
    per-user permutation test alone would call it certain; the p-value must not, and agree with the interval."""
    rng = np.random.default_rng(8)
    users = rng.random(610)
    b = np.stack([users + rng.normal(0, 0.01, 610) for _ in range(3)])
    a = np.stack([users + 0.01 + shift + rng.normal(0, 0.01, 610) for shift in (-0.2, 0.0, 0.23)])
    result = paired_difference(a, b)
    assert result.low < 0 < result.high
    assert result.p_value >= 0.05 and not result.significant
    # the same gain with seeds that agree is found
    steady = np.stack([users + 0.01 + rng.normal(0, 0.01, 610) for _ in range(3)])
    assert paired_difference(steady, b).significant
