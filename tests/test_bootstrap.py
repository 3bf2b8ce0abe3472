"""Bootstrap intervals and paired differences on fixtures with a known answer."""
import numpy as np
import pytest

from recbole_gen.comparison.bootstrap import compare, interval, replicates
from recbole_gen.evaluator.intervals import resampled

USERS = np.arange(1000)


def draws_of(values, metric="hit@10", samples=1000, seed=0):
    return replicates({"user": USERS, f"mean/{metric}": np.asarray(values, dtype=np.float64)}, samples, seed)


def test_identical_rows_have_a_zero_difference_and_a_constant_row_a_zero_width():
    hits = np.random.default_rng(1).binomial(1, 0.2, size=len(USERS)).astype(float)
    a, b = draws_of(hits), draws_of(hits.copy())
    assert a["users"] == b["users"]
    point = hits.mean()
    difference, significant = compare(point, a["metrics"]["hit@10"], point, b["metrics"]["hit@10"], 0.95)
    assert difference == (0.0, 0.0) and not significant
    constant = draws_of(np.full(len(USERS), 0.3))
    assert interval(0.3, constant["metrics"]["hit@10"], 0.95) == pytest.approx((0.3, 0.3))


def test_a_shifted_row_differs_significantly_and_its_interval_holds_the_shift():
    rng = np.random.default_rng(2)
    base = rng.normal(0.2, 0.1, size=len(USERS))
    shifted = base + 0.05 + rng.normal(0, 0.05, size=len(USERS))
    a, b = draws_of(shifted, "targetsim"), draws_of(base, "targetsim")
    difference, significant = compare(shifted.mean(), a["metrics"]["targetsim"], base.mean(), b["metrics"]["targetsim"],
                                      0.95)
    observed = shifted.mean() - base.mean()
    assert significant and 0 < difference[0] < observed < difference[1] and abs(observed - 0.05) < 0.01
    assert difference[1] - difference[0] < 0.02  # paired: the shared per-user noise cancels


def test_a_bernoulli_mean_gets_the_textbook_width():
    hits = np.zeros(len(USERS))
    hits[:200] = 1
    low, high = interval(0.2, draws_of(hits)["metrics"]["hit@10"], 0.95)
    half = 1.96 * np.sqrt(0.2 * 0.8 / len(USERS))
    assert low < 0.2 < high
    assert (high - low) / 2 == pytest.approx(half, rel=0.15)


def test_an_interval_reaches_its_point_when_the_resamples_are_lopsided():
    """ImageCoverage of six items, two of them shown to one user each: nearly every resample keeps all six (the
    percentiles), a few drop one (the mean): the shift alone would put both bounds above the point."""
    draws = np.full(1000, 6 / 3655)
    draws[:20] = 5 / 3655
    point = 6 / 3655
    low, high = interval(point, draws, 0.95)
    assert low == pytest.approx(point) and high > point
    draws[:20] = 7 / 3655  # a few resamples above it instead: both bounds would fall below it
    low, high = interval(point, draws, 0.95)
    assert low < point and high == pytest.approx(point)


def test_set_level_metrics_recompute_on_resamples():
    nearest = np.array([[1, 2], [2, 3], [4, -1]])
    values = {"user": np.arange(3), "imagecoverage/nearest": nearest, "imagecoverage/items": np.array([10])}
    index = np.array([[0, 1, 2], [0, 0, 0], [2, 2, 2]])
    assert resampled(values, index)["imagecoverage"] == pytest.approx([0.4, 0.2, 0.1])
    rng = np.random.default_rng(3)
    generated, real = rng.normal(size=(50, 2, 4)), rng.normal(size=(50, 4))
    fd = resampled({"user": np.arange(50), "fd/generated": generated, "fd/real": real},
                   np.stack([np.arange(50), np.arange(50)]))["fd"]
    from recbole_gen.evaluator.functional import frechet_distance, gaussian_stats

    assert fd == pytest.approx([frechet_distance(*gaussian_stats(generated.reshape(-1, 4)), *gaussian_stats(real))] * 2,
                               rel=1e-6)


def test_batched_frechet_equals_the_reference_for_full_rank_and_singular_covariances():
    """The Cholesky path and the square-root fallback (a singular S2, as a resample with few distinct items gives)."""
    import torch

    from recbole_gen.evaluator.functional import frechet_distance
    from recbole_gen.evaluator.intervals import frechet_from_moments

    rng = np.random.default_rng(4)
    mus, sigmas = rng.normal(size=(2, 3, 6)), []
    for rank in (6, 2, 6):
        factor = rng.normal(size=(6, rank))
        sigmas.append(factor @ factor.T)
    sigma1 = np.stack([sigmas[2], sigmas[0], sigmas[1]])  # row 3: S1 singular, S2 full rank
    sigma2 = np.stack(sigmas)  # row 2: S2 singular
    batched = frechet_from_moments(*(torch.from_numpy(a) for a in (mus[0], sigma1, mus[1], sigma2)))
    expected = [frechet_distance(mus[0][b], sigma1[b], mus[1][b], sigma2[b]) for b in range(3)]
    assert batched.numpy() == pytest.approx(expected, rel=1e-7)
