"""Accuracy differences with their uncertainty over training seeds and test images.

An experiment has several seeds per arm, and every run is scored on the same test images, so each
arm gives a 0/1 matrix ``(S seeds, N images)``. Two things vary: which seeds we happened to train
(initialisation, data order) and which images the test set happened to hold. The bootstrap
resamples both: S seed indices and N image indices, with replacement, per replicate.

*Paired* means the same drawn indices are used for both arms. An image that is easy for one arm is
usually easy for the other, and when seed s fixes the same data order in both arms the seed's luck
is shared too; what the arms share cancels in ``A - B`` and only their disagreement is left.
Resampling each arm on its own (:func:`unpaired_bootstrap`) keeps that shared variation and gives
a wider interval (about 2.9x wider in the simulation of ``tests/test_stats.py``).

Known limitations of this two-level ("pigeonhole") percentile bootstrap, which we accept:

- It is conservative for per-run, per-image churn (predictions that flip from seed to seed): that
  term enters both the resampled seed means and the resampled image means, so it is counted about
  three times. Much of the seed-to-seed spread of test accuracy is of this kind; with a seed shift
  about as large as the churn, 3 seeds and 400 images, a 95% interval covered the truth 96% of
  the time in simulation.
- It is optimistic for a genuine per-seed shift with few seeds: S seeds give S seed means, the
  bootstrap sees their spread times (S-1)/S and uses normal-like tails where a t with S-1 degrees
  of freedom would be right. With the seed shift three times the churn, a nominal 95% interval
  covered about 80% of the time with 3 seeds, 88% with 5 and 93% with 10. Use five or more seeds
  when seeds matter more than images, and read a 3-seed interval as a lower bound on the spread.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import stats as sps

CLAIM_KINDS = ("better", "worse", "match")
_CELLS_PER_CHUNK = 2_000_000  # bootstrap weights held at once: 16 MB of int64


@dataclass(frozen=True)
class Interval:
    """A point estimate with a confidence interval, all as fractions (0.012 = 1.2 points)."""

    estimate: float
    low: float
    high: float
    level: float = 0.95
    n_seeds: int = 0
    n_images: int = 0

    def excludes_zero(self) -> bool:
        """True when the whole interval lies on one side of zero (False for a nan interval)."""
        return self.low > 0 or self.high < 0

    def to_dict(self) -> dict:
        """JSON-friendly fields; nan (an interval that cannot be estimated) becomes None."""
        def num(x):
            return None if math.isnan(x) else float(x)
        return {"estimate": num(self.estimate), "low": num(self.low), "high": num(self.high),
                "level": float(self.level), "n_seeds": int(self.n_seeds), "n_images": int(self.n_images)}


def _check_level(level: float) -> None:
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")


def seed_summary(values: Sequence[float], level: float = 0.95) -> dict:
    """Mean, sample std and Student-t interval of one cell's per-seed values.

    With one seed the std is 0.0 and the interval is (nan, nan): a spread cannot be estimated from
    one value, and a zero-width interval would claim a certainty we do not have.
    """
    _check_level(level)
    x = np.asarray(values, dtype=float).ravel()
    if x.size == 0 or not np.all(np.isfinite(x)):
        raise ValueError(f"seed_summary needs at least one finite value, got {list(x)}")
    n, mean = int(x.size), float(x.mean())
    if n == 1:
        return {"n": 1, "mean": mean, "std": 0.0, "ci_low": math.nan, "ci_high": math.nan}
    std = float(x.std(ddof=1))
    half = float(sps.t.ppf(0.5 + level / 2, n - 1)) * std / math.sqrt(n)
    return {"n": n, "mean": mean, "std": std, "ci_low": mean - half, "ci_high": mean + half}


def _as_matrices(a, b) -> tuple[np.ndarray, np.ndarray]:
    """Both arms as float (S, N) matrices of the same shape; a 1-D input is one seed."""
    a, b = np.atleast_2d(np.asarray(a, dtype=float)), np.atleast_2d(np.asarray(b, dtype=float))
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"both arms need the same (seeds, images) shape, got {a.shape} and {b.shape}")
    if a.size == 0 or not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise ValueError(f"both arms need finite scores for at least one image, got shape {a.shape}")
    return a, b


def _counts(rng: np.random.Generator, reps: int, n: int) -> np.ndarray:
    """How often each of n indices is drawn in each of reps resamples of size n: (reps, n)."""
    idx = rng.integers(0, n, size=(reps, n)) + (np.arange(reps) * n)[:, None]
    return np.bincount(idx.ravel(), minlength=reps * n).reshape(reps, n).astype(float)


def _replicates(rng: np.random.Generator, x: np.ndarray, reps: int) -> np.ndarray:
    """Means of x over reps two-level resamples: seed counts c_s, image counts w_i, c^T x w / (S N)."""
    s, n = x.shape
    seeds, images = _counts(rng, reps, s), _counts(rng, reps, n)  # (R, S), (R, N)
    return np.einsum("rs,rs->r", seeds, images @ x.T) / (s * n)


def _bootstrap(draw, a: np.ndarray, b: np.ndarray, n_boot: int, level: float) -> Interval:
    """Percentile interval of draw(reps) replicates, taken in chunks to bound memory."""
    _check_level(level)
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    s, n = a.shape
    estimate = float(a.mean() - b.mean())
    if s == 1 and n == 1:  # nothing to resample: no interval rather than a zero-width one
        return Interval(estimate, math.nan, math.nan, level, s, n)
    chunk = max(1, _CELLS_PER_CHUNK // n)
    reps = np.concatenate([draw(min(chunk, n_boot - k)) for k in range(0, n_boot, chunk)])
    tail = (1 - level) / 2  # endpoints are replicate values, rounded outwards
    low = float(np.quantile(reps, tail, method="lower"))
    high = float(np.quantile(reps, 1 - tail, method="higher"))
    return Interval(estimate, low, high, level, s, n)


def paired_bootstrap(a, b, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> Interval:
    """Interval for mean(a) - mean(b) when row s shares the seed and column i the test image.

    a, b: (S, N) per-run, per-image scores (1.0 correct, 0.0 wrong). Each replicate draws S seeds
    and N images with replacement, the same for both arms; with S == 1 only images vary.
    """
    a, b = _as_matrices(a, b)
    rng, diff = np.random.default_rng(seed), a - b
    return _bootstrap(lambda r: _replicates(rng, diff, r), a, b, n_boot, level)


def unpaired_bootstrap(a, b, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> Interval:
    """As :func:`paired_bootstrap`, but each arm's seeds and images are drawn independently."""
    a, b = _as_matrices(a, b)
    rng = np.random.default_rng(seed)
    return _bootstrap(lambda r: _replicates(rng, a, r) - _replicates(rng, b, r), a, b, n_boot, level)


def _fmt(x: float, unit: str) -> str:
    return f"{x * 100 if unit == 'points' else x:+.1f}"


def _plural(n: int, word: str) -> str:
    return f"no {word}s" if n == 0 else f"{n} {word}" + ("" if n == 1 else "s")


def verdict(subject: str, iv: Interval, unit: str = "points", metric: str = "test accuracy") -> str:
    """One plain-language line: effect, interval and what it means, e.g.
    ``bridging changes test accuracy by +2.4 points, 95% CI +0.9 to +3.8: an improvement``.

    unit "points" shows fractions x100; any other unit shows the values as given. ``metric`` names
    what changes (e.g. "mIoU" for segmentation).
    """
    level = f"{round(iv.level * 100, 4):g}%"
    effect = "an unknown amount" if math.isnan(iv.estimate) else f"{_fmt(iv.estimate, unit)} {unit}"
    head = f"{subject} changes {metric} by {effect}"
    if math.isnan(iv.low) or math.isnan(iv.high):
        source = f"{_plural(iv.n_seeds, 'seed')} and {_plural(iv.n_images, 'image')}"
        return f"{head}, {level} CI cannot be estimated from {source}: cannot tell"
    meaning = "an improvement" if iv.low > 0 else "a drop" if iv.high < 0 else "no detectable effect"
    return f"{head}, {level} CI {_fmt(iv.low, unit)} to {_fmt(iv.high, unit)}: {meaning}"


def claim_status(iv: Interval, kind: str, margin: float = 0.01) -> str:
    """Whether the interval supports, contradicts or cannot settle a claim about A - B.

    better / worse: the interval lies above / below zero (touching zero is not enough).
    match: equivalence within +-margin; supported when the whole interval lies inside it,
    contradicted when it lies entirely outside. A nan interval is inconclusive.
    """
    if kind not in CLAIM_KINDS:
        raise ValueError(f"claim kind must be one of {', '.join(CLAIM_KINDS)}, got {kind!r}")
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    low, high = (iv.low, iv.high) if kind != "worse" else (-iv.high, -iv.low)
    if math.isnan(low) or math.isnan(high):
        return "inconclusive"
    if kind == "match":
        inside, outside = -margin <= low and high <= margin, low > margin or high < -margin
    else:
        inside, outside = low > 0, high < 0
    return "supported" if inside else "contradicted" if outside else "inconclusive"
