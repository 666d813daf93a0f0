"""Layer-wise geometry of features: effective dimensionality, spectral decay and the information plane.

Conventions (stated once, used everywhere):

- Spectrum: the eigenvalues lambda_1 >= lambda_2 >= ... of the feature covariance of (N, D) features
  (rows centred, divided by N - 1), from the singular values of the centred matrix, in float64.
- :func:`participation_ratio`: ``(sum lambda)^2 / sum lambda^2`` (Gao et al. 2017); D for isotropic
  features, 1 for rank-1 features.
- :func:`spectral_decay`: alpha of ``lambda_k ~ c k^(-alpha)``, least squares of log lambda_k on
  log k over the ranks 1..K, K = ``max_rank`` (default: every eigenvalue above ``rel_tol`` x lambda_1,
  so numerically zero directions never enter the fit).
- :func:`information_plane`: Shwartz-Ziv & Tishby (2017) binning. Every unit of T is cut into
  ``bins`` equal-width bins spanning the layer's whole range (min..max over all units and samples);
  T's discrete state is the tuple of bin indices. X is the sample's identity (uniform over the N
  samples, H(X) = log2 N), Y its label. Entropies and informations in **bits**, plug-in estimates.
  Since T is a function of X, I(X;T) = H(T); with continuous features and many units every sample
  gets its own state and I(X;T) saturates at log2 N (the estimator's known limit: fewer ``bins``).
- :func:`compression`: ``1 - I(X;T_last) / I(X;T_first)`` (positive: the last layer keeps fewer bits
  of the input than the first; the seed's Table 1 "compression").
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import torch

from ..errors import Lm2vError


def covariance_spectrum(features: torch.Tensor) -> torch.Tensor:
    """Eigenvalues of the (D, D) covariance of ``features`` (N, D), descending, float64; min(N - 1, D) of them."""
    if features.ndim != 2 or len(features) < 2:
        raise Lm2vError(f"geometry needs a feature matrix (N >= 2, D), got shape {tuple(features.shape)}")
    x = features.detach().to(torch.float64)
    x = x - x.mean(dim=0, keepdim=True)  # (N, D)
    s = torch.linalg.svdvals(x)  # descending
    return (s ** 2 / (len(x) - 1))[: min(len(x) - 1, x.shape[1])]


def participation_ratio(features: torch.Tensor) -> float:
    """Effective dimensionality ``(sum lambda)^2 / sum lambda^2``; nan for constant features."""
    lam = covariance_spectrum(features)
    den = float((lam ** 2).sum())
    return float(lam.sum()) ** 2 / den if den > 0 else math.nan


def spectral_decay(features: torch.Tensor, max_rank: int | None = None, rel_tol: float = 1e-10) -> float:
    """Power-law exponent alpha of the covariance spectrum, fitted on ranks 1..K (see the module doc);
    nan when fewer than 2 eigenvalues are non-negligible."""
    lam = covariance_spectrum(features)
    keep = lam[lam > rel_tol * lam[0]] if len(lam) and lam[0] > 0 else lam[:0]
    if max_rank is not None:
        keep = keep[:max_rank]
    if len(keep) < 2:
        return math.nan
    logk = torch.log(torch.arange(1, len(keep) + 1, dtype=torch.float64))
    logl = torch.log(keep)
    slope = ((logk - logk.mean()) * (logl - logl.mean())).sum() / ((logk - logk.mean()) ** 2).sum()
    return float(-slope)


# -- information plane ---------------------------------------------------------------------------
def binned_states(t: torch.Tensor, bins: int) -> torch.Tensor:
    """(N, D) activations -> (N,) integer state: each unit in one of ``bins`` equal-width bins over the
    layer's range, the state = the tuple of bin indices (equal tuples, equal states)."""
    if bins < 1:
        raise Lm2vError(f"bins must be >= 1, got {bins}")
    t = t.detach().to(torch.float64).reshape(len(t), -1)  # (N, D)
    lo, hi = float(t.min()), float(t.max())
    width = (hi - lo) / bins if hi > lo else 1.0
    idx = ((t - lo) / width).floor().clamp(0, bins - 1).long()  # (N, D), the maximum lands in the last bin
    return torch.unique(idx, dim=0, return_inverse=True)[1]


def entropy(*codes: torch.Tensor) -> float:
    """Plug-in joint entropy (bits) of one or more (N,) discrete variables."""
    joint = torch.stack([c.reshape(-1).long() for c in codes], dim=1)  # (N, k)
    counts = torch.unique(joint, dim=0, return_counts=True)[1].to(torch.float64)
    p = counts / counts.sum()
    return float(-(p * torch.log2(p)).sum())


def mutual_information(a: torch.Tensor, b: torch.Tensor) -> float:
    """Plug-in I(A;B) = H(A) + H(B) - H(A,B) in bits of two (N,) discrete variables."""
    return entropy(a) + entropy(b) - entropy(a, b)


def information_plane(t: torch.Tensor, y: torch.Tensor, bins: int = 30,
                      x_ids: torch.Tensor | None = None) -> tuple[float, float]:
    """(I(X;T), I(Y;T)) in bits of a layer's activations ``t`` (N, D) by binning; ``x_ids`` (N,) the
    samples' identities (default: all distinct, so H(X) = log2 N)."""
    if len(t) != len(y):
        raise Lm2vError(f"information plane: {len(t)} activations but {len(y)} labels")
    x_ids = torch.arange(len(t)) if x_ids is None else x_ids
    states = binned_states(t, bins)
    return mutual_information(x_ids, states), mutual_information(y, states)


def compression(i_xt: Sequence[float]) -> float:
    """``1 - I(X;T_last) / I(X;T_first)`` over a model's layers (nan if the first is 0)."""
    return 1.0 - i_xt[-1] / i_xt[0] if i_xt and i_xt[0] > 0 else math.nan


# -- per-layer table -----------------------------------------------------------------------------
def layer_geometry(feats: Sequence[torch.Tensor], names: Sequence[str], labels: torch.Tensor | None = None,
                   bins: int = 30, max_rank: int | None = None) -> list[dict]:
    """One row per layer: width, participation ratio, spectral decay and, with ``labels``, the binned
    I(X;T), I(Y;T) and their ratio I(Y;T)/I(X;T)."""
    rows = []
    for name, f in zip(names, feats):
        row = {"layer": name, "width": int(f.shape[1]), "participation_ratio": participation_ratio(f),
               "spectral_decay": spectral_decay(f, max_rank)}
        if labels is not None:
            i_xt, i_yt = information_plane(f, labels, bins)
            row.update(I_XT=i_xt, I_YT=i_yt, I_YT_over_I_XT=i_yt / i_xt if i_xt > 0 else math.nan)
        rows.append(row)
    return rows


def geometry_summary(rows: Sequence[dict]) -> dict:
    """First -> last layer numbers of a :func:`layer_geometry` table (compression if it has I(X;T))."""
    out = {"layers": len(rows), "pr_first": rows[0]["participation_ratio"], "pr_last": rows[-1]["participation_ratio"],
           "decay_last": rows[-1]["spectral_decay"]}
    if "I_XT" in rows[0]:
        out.update(compression=compression([r["I_XT"] for r in rows]), I_YT_last=rows[-1]["I_YT"],
                   I_YT_over_I_XT_last=rows[-1]["I_YT_over_I_XT"])
    return out


def plot_geometry(tables: dict[str, Sequence[dict]], path: str | Path) -> None:
    """Participation ratio and spectral decay per relative depth, and the information plane, per model."""
    from .plotting import new_figure, save_figure

    info = any("I_XT" in r for rows in tables.values() for r in rows)
    fig, axes = new_figure(3 if info else 2, width=4.3, height=3.8)
    for label, rows in tables.items():
        depth = [i / max(len(rows) - 1, 1) for i in range(len(rows))]
        axes[0].plot(depth, [r["participation_ratio"] for r in rows], marker="o", label=label)
        axes[1].plot(depth, [r["spectral_decay"] for r in rows], marker="o", label=label)
        if info:
            axes[2].plot([r["I_XT"] for r in rows], [r["I_YT"] for r in rows], marker="o", label=label)
    axes[0].set(xlabel="relative depth", ylabel="participation ratio", yscale="log")
    axes[1].set(xlabel="relative depth", ylabel="spectral decay alpha")
    if info:
        axes[2].set(xlabel="I(X;T) bits", ylabel="I(Y;T) bits", title="information plane (binned)")
    axes[0].legend(fontsize=7)
    save_figure(fig, path)
