"""Cross-modal alignment score: the seed's "alignment accuracy", measured CLIP-style.

Paired embeddings (Z_v[i], Z_l[i]) are split into a fit part and a held-out part (seeded). A linear
map from vision to language space is fitted on the fit part (ridge regression on centred
embeddings, or CCA with both sides mapped to the shared space); on the held-out part every
vision embedding retrieves the language embedding of highest cosine similarity. Top-1 counts a hit
when the retrieved item belongs to the same ``group`` as the query's own pair (default: the pair
itself; with class-name captions, pass the class so identical captions count as the same item).
Chance is the expected top-1 of a random retrieval (sum over groups of their share squared).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.cross_decomposition import CCA
from sklearn.linear_model import Ridge

from ..errors import Lm2vError

METHODS = ("ridge", "cca")


@dataclass
class AlignmentScore:
    """Held-out retrieval of language embeddings from projected vision embeddings."""

    top1: float
    chance: float
    n_fit: int
    n_test: int
    method: str


def _split(n: int, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    if not 0 < test_fraction < 1:
        raise Lm2vError(f"test_fraction must be in (0, 1), got {test_fraction}")
    perm = np.random.default_rng(seed).permutation(n)
    n_test = max(1, int(round(n * test_fraction)))
    if n - n_test < 2:
        raise Lm2vError(f"need at least 3 pairs for an alignment score, got {n}")
    return perm[n_test:], perm[:n_test]


def _fit_map(zv: np.ndarray, zl: np.ndarray, method: str, ridge: float, cca_dim: int):
    """Fitted (map_vision, map_language) taking rows to a common space."""
    if method == "ridge":
        reg = Ridge(alpha=ridge).fit(zv, zl)
        return reg.predict, (lambda z: z)
    k = max(1, min(cca_dim, zv.shape[1], zl.shape[1], zv.shape[0] - 1))
    cca = CCA(n_components=k, max_iter=1000).fit(zv, zl)
    return (lambda z: cca.transform(z)), (lambda z: cca.transform(np.zeros((len(z), zv.shape[1])), z)[1])


def _cosine_top1(q: np.ndarray, keys: np.ndarray, groups: np.ndarray) -> float:
    q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    keys = keys / np.maximum(np.linalg.norm(keys, axis=1, keepdims=True), 1e-12)
    best = (q @ keys.T).argmax(1)  # (n_test,)
    return float((groups[best] == groups).mean())


def _chance(groups: np.ndarray) -> float:
    _, counts = np.unique(groups, return_counts=True)
    share = counts / counts.sum()
    return float((share**2).sum())


def alignment_score(z_vision: torch.Tensor, z_language: torch.Tensor, groups: torch.Tensor | None = None,
                    method: str = "ridge", test_fraction: float = 0.5, ridge: float = 1.0,
                    cca_dim: int = 32, seed: int = 0) -> AlignmentScore:
    """Fit vision -> language on a split of the pairs, return top-1 retrieval on the held-out pairs.

    z_vision (N, Dv) and z_language (N, Dl) are paired by row; ``groups`` (N,) marks rows that
    count as the same item (e.g. class index for class-name captions; default every row distinct).
    """
    if method not in METHODS:
        raise Lm2vError(f"alignment method must be one of {METHODS}, got {method!r}")
    if z_vision.shape[0] != z_language.shape[0]:
        raise Lm2vError(f"unpaired embeddings: {z_vision.shape[0]} vision vs {z_language.shape[0]} language")
    n = z_vision.shape[0]
    g = np.arange(n) if groups is None else groups.cpu().numpy()
    fit, test = _split(n, test_fraction, seed)
    zv, zl = z_vision.detach().double().cpu().numpy(), z_language.detach().double().cpu().numpy()
    mv, ml = zv[fit].mean(0), zl[fit].mean(0)
    map_v, map_l = _fit_map(zv[fit] - mv, zl[fit] - ml, method, ridge, cca_dim)
    q, keys = map_v(zv[test] - mv), map_l(zl[test] - ml)
    return AlignmentScore(_cosine_top1(q, keys, g[test]), _chance(g[test]), len(fit), len(test), method)
