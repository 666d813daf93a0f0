"""``lm2vision.stats``: seed summaries, paired bootstrap intervals, verdicts and claim checks, each
against an answer known without the code under test (a t table, a binomial, a simulation whose true
difference is set by construction)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy.stats import norm

from lm2vision.stats import (
    CLAIM_KINDS,
    Interval,
    claim_status,
    paired_bootstrap,
    seed_summary,
    unpaired_bootstrap,
    verdict,
)

T_975_DF2 = 4.302652729911275  # Student t, 97.5% quantile, 2 degrees of freedom (printed tables)
P_A, P_B = 0.62, 0.60  # true accuracies of the simulated arms


def _arms(rng, seeds, images, difficulty, seed_sd, shared_seed=False):
    """Two arms' 0/1 correctness, (seeds, images) each, from a probit model with known accuracies.

    A run gets image i right when mu + z_i + u_s + e_si > 0: z_i is the image's ease (shared by both
    arms), u_s the run's seed shift, e_si the per-run, per-image churn (N(0, 1)). mu is set so that
    P(correct) over images and seeds is exactly P_A or P_B: the true difference is P_A - P_B.
    """
    scale = math.sqrt(1 + difficulty**2 + seed_sd**2)
    z = rng.normal(0, difficulty, images)
    u_a = rng.normal(0, seed_sd, (seeds, 1))
    u_b = u_a if shared_seed else rng.normal(0, seed_sd, (seeds, 1))
    a = norm.ppf(P_A) * scale + z + u_a + rng.normal(size=(seeds, images)) > 0
    b = norm.ppf(P_B) * scale + z + u_b + rng.normal(size=(seeds, images)) > 0
    return a.astype(float), b.astype(float)


def _coverage(seed_sd, trials=300):
    """Share of paired 95% intervals (3 seeds, 400 images) that contain the true difference."""
    rng, hits = np.random.default_rng(2), 0
    for t in range(trials):
        a, b = _arms(rng, 3, 400, difficulty=1.5, seed_sd=seed_sd)
        iv = paired_bootstrap(a, b, n_boot=400, seed=t)
        hits += iv.low <= P_A - P_B <= iv.high
    return hits / trials


# -- seed summaries -------------------------------------------------------------------------------
def test_seed_summary_is_the_student_t_interval():
    s = seed_summary([1, 2, 3])
    half = T_975_DF2 * 1 / math.sqrt(3)  # std of 1, 2, 3 is 1
    assert s["n"] == 3 and s["mean"] == pytest.approx(2) and s["std"] == pytest.approx(1)
    assert s["ci_low"] == pytest.approx(2 - half, rel=1e-9) and s["ci_high"] == pytest.approx(2 + half, rel=1e-9)


def test_one_seed_has_no_spread_and_no_interval():
    s = seed_summary([0.7])
    assert s["n"] == 1 and s["mean"] == 0.7 and s["std"] == 0.0
    assert math.isnan(s["ci_low"]) and math.isnan(s["ci_high"])


# -- the bootstrap against known answers ----------------------------------------------------------
def test_paired_interval_covers_the_true_difference_at_about_the_stated_rate():
    # Seed shift u_s (sd 0.1 on the probit scale, about 2 points of accuracy) about as large as the
    # run-to-run churn of one run's accuracy on 400 images: the regime of real training runs.
    # Measured: 0.963. Band: the binomial sd of a rate near 0.95 over 300 trials is 0.0126, so 3 sd
    # below 0.95 is 0.912; above, the two-level bootstrap over-counts churn (see the module
    # docstring), so up to 0.995 is expected behaviour. Resampling only images, or only seeds,
    # gives 0.75-0.77 here and fails.
    assert 0.91 <= _coverage(seed_sd=0.1) <= 0.995


def test_few_seeds_with_a_dominant_seed_shift_under_cover_as_documented():
    # The documented limitation: seed shift sd 0.3 (about 3x the churn), 3 seeds. Measured: 0.80
    # (binomial sd 0.023 at 300 trials). The percentile bootstrap sees 3 row means, shrinks their
    # spread by (S-1)/S and uses normal-like tails where t with 2 df would be right. If a change
    # fixes this, update the docstring and this band.
    assert 0.72 <= _coverage(seed_sd=0.3) <= 0.90


def test_pairing_narrows_the_interval_when_arms_share_images_and_seeds():
    a, b = _arms(np.random.default_rng(3), 5, 2000, difficulty=2.0, seed_sd=0.2, shared_seed=True)
    paired, unpaired = paired_bootstrap(a, b, n_boot=1000), unpaired_bootstrap(a, b, n_boot=1000)
    assert paired.estimate == unpaired.estimate == pytest.approx(a.mean() - b.mean())
    ratio = (paired.high - paired.low) / (unpaired.high - unpaired.low)
    assert ratio < 0.5  # measured 0.34: shared ease and shared seed shifts cancel in a - b


def test_identical_arms_and_opposite_arms_have_no_spread():
    a = np.random.default_rng(0).integers(0, 2, (3, 50)).astype(float)
    iv = paired_bootstrap(a, a.copy())
    assert (iv.estimate, iv.low, iv.high) == (0.0, 0.0, 0.0)
    iv = paired_bootstrap(np.ones((3, 50)), np.zeros((3, 50)))
    assert (iv.estimate, iv.low, iv.high) == (1.0, 1.0, 1.0)
    assert (iv.n_seeds, iv.n_images, iv.level) == (3, 50, 0.95)


def test_one_seed_resamples_images_only_by_hand():
    # d = a - b = [0, 1, 0, 0]: a replicate is K/4 with K ~ Binomial(4, 1/4), P(K <= 2) = 0.949 and
    # P(K <= 3) = 0.996, so the 2.5% and 97.5% points are 0 and 3/4.
    iv = paired_bootstrap([[1, 1, 0, 0]], [[1, 0, 0, 0]])
    assert (iv.estimate, iv.low, iv.high) == (0.25, 0.0, 0.75)
    assert (iv.n_seeds, iv.n_images) == (1, 4)


def test_seeds_are_resampled_by_hand():
    # One image, two seeds, d = [1, 0]: a replicate is 0, 1/2 or 1 with chances 1/4, 1/2, 1/4.
    iv = paired_bootstrap([[1.0], [0.0]], [[0.0], [0.0]])
    assert (iv.estimate, iv.low, iv.high) == (0.5, 0.0, 1.0)


def test_image_level_interval_matches_the_binomial_width():
    # One seed, half of 1000 images differ: a replicate is K/1000, K ~ Binomial(1000, 1/2), whose
    # sd is sqrt(0.25 / 1000) = 0.0158; the normal quantiles give the half-widths at 95% and 90%.
    d = (np.arange(1000) % 2).reshape(1, -1).astype(float)
    sd = math.sqrt(0.25 / 1000)
    for level, z in [(0.95, 1.959964), (0.90, 1.644854)]:
        iv = paired_bootstrap(d, np.zeros_like(d), n_boot=20000, level=level)
        assert iv.estimate == 0.5 and iv.level == level
        assert (iv.high - iv.low) / 2 == pytest.approx(z * sd, abs=0.0015)


def test_nothing_to_resample_gives_no_interval():
    iv = paired_bootstrap([[1.0]], [[0.0]])
    assert iv.estimate == 1.0 and math.isnan(iv.low) and math.isnan(iv.high)
    assert json.loads(json.dumps(iv.to_dict())) == {"estimate": 1.0, "low": None, "high": None,
                                                    "level": 0.95, "n_seeds": 1, "n_images": 1}


def test_bootstrap_is_reproducible_from_its_seed():
    a, b = _arms(np.random.default_rng(4), 3, 300, difficulty=1.0, seed_sd=0.1)
    assert paired_bootstrap(a, b, seed=7) == paired_bootstrap(a, b, seed=7)
    assert unpaired_bootstrap(a, b, seed=7) == unpaired_bootstrap(a, b, seed=7)


@pytest.mark.parametrize("fn", [paired_bootstrap, unpaired_bootstrap])
def test_shape_mismatch_is_refused(fn):
    with pytest.raises(ValueError, match=r"same \(seeds, images\) shape, got \(2, 5\) and \(3, 5\)"):
        fn(np.zeros((2, 5)), np.zeros((3, 5)))
    with pytest.raises(ValueError, match="same"):
        fn(np.zeros((2, 5)), np.zeros((2, 4)))
    with pytest.raises(ValueError, match="same"):
        fn(np.zeros((2, 2, 2)), np.zeros((2, 2, 2)))


# -- verdicts and claims --------------------------------------------------------------------------
def test_verdicts_in_points_with_sign_and_rounding():
    up = Interval(0.024, 0.0094, 0.0375)  # 0.94 -> +0.9; 3.75 -> +3.8 (not exactly representable)
    assert verdict("bridging", up) == \
        "bridging changes test accuracy by +2.4 points, 95% CI +0.9 to +3.8: an improvement"
    down = Interval(-0.031, -0.05, -0.012, level=0.9)
    assert verdict("bridging (pretrained)", down) == \
        "bridging (pretrained) changes test accuracy by -3.1 points, 90% CI -5.0 to -1.2: a drop"
    flat = Interval(-0.012, -0.031, 0.007)
    assert verdict("bridging", flat) == \
        "bridging changes test accuracy by -1.2 points, 95% CI -3.1 to +0.7: no detectable effect"
    touching = Interval(0.01, 0.0, 0.02)  # an interval that reaches zero is not an improvement
    assert verdict("x", touching).endswith("CI +0.0 to +2.0: no detectable effect")


def test_verdict_without_an_interval_says_so():
    assert verdict("bridging", Interval(0.02, math.nan, math.nan, n_seeds=1, n_images=0)) == (
        "bridging changes test accuracy by +2.0 points, 95% CI cannot be estimated from 1 seed and "
        "no images: cannot tell")


CLAIMS = [  # (low, high, kind, expected); margin 0.01
    (0.001, 0.03, "better", "supported"), (-0.03, -0.001, "better", "contradicted"),
    (0.0, 0.03, "better", "inconclusive"), (-0.03, 0.0, "better", "inconclusive"),
    (-0.03, -0.001, "worse", "supported"), (0.001, 0.03, "worse", "contradicted"),
    (-0.03, 0.0, "worse", "inconclusive"), (0.0, 0.03, "worse", "inconclusive"),
    (-0.008, 0.009, "match", "supported"), (-0.01, 0.01, "match", "supported"),
    (0.011, 0.04, "match", "contradicted"), (-0.04, -0.011, "match", "contradicted"),
    (-0.005, 0.02, "match", "inconclusive"), (-0.02, 0.02, "match", "inconclusive"),
    (math.nan, math.nan, "better", "inconclusive"), (math.nan, math.nan, "match", "inconclusive"),
]


@pytest.mark.parametrize("low,high,kind,expected", CLAIMS)
def test_claim_status(low, high, kind, expected):
    assert claim_status(Interval((low + high) / 2, low, high), kind) == expected


def test_claim_margin_and_unknown_kind():
    iv = Interval(0.01, -0.015, 0.018)
    assert claim_status(iv, "match") == "inconclusive"
    assert claim_status(iv, "match", margin=0.02) == "supported"
    assert set(CLAIM_KINDS) == {"better", "worse", "match"}
    with pytest.raises(ValueError, match="claim kind must be one of better, worse, match, got 'same'"):
        claim_status(iv, "same")


def test_interval_helpers():
    assert Interval(0.02, 0.001, 0.03).excludes_zero() and Interval(-0.02, -0.03, -0.001).excludes_zero()
    assert not Interval(0.01, 0.0, 0.02).excludes_zero()
    assert not Interval(0.01, math.nan, math.nan).excludes_zero()
    assert Interval(0.012, 0.001, 0.02, 0.9, 5, 10000).to_dict() == {
        "estimate": 0.012, "low": 0.001, "high": 0.02, "level": 0.9, "n_seeds": 5, "n_images": 10000}
