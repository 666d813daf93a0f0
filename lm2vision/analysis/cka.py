"""Representation similarity between layers of two models seen on the same images.

- :func:`linear_cka`: linear centred kernel alignment (Kornblith et al. 2019) of two feature matrices,
  ``||Xc^T Yc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)`` with column-centred X (n, d1) and Y (n, d2).
  It is invariant to orthogonal transforms and isotropic scaling of either side, not to other
  linear maps, and needs no correspondence between the two sides' coordinates.
- :func:`cka_matrix`: every (layer_a, layer_b) pair at once (La, Lb).
- :class:`MinibatchCKA` / :func:`minibatch_cka`: Nguyen et al. 2021's estimator for sets too large to
  hold: the unbiased HSIC (Song et al. 2012) summed over minibatches, for every pair, in one pass::

      acc = MinibatchCKA(La, Lb)
      for fa, fb in zip(iter_layer_features(model_a, xa, 256), iter_layer_features(model_b, xb, 256)):
          acc.update(fa, fb)
      acc.compute()  # (La, Lb)

- :func:`mean_cosine`: mean over images of the cosine between two models' features; meaningful only
  when the coordinates correspond (same architecture, e.g. a run and the run it started from).

Everything accumulates in float64.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from ..errors import Lm2vError


def _centred(x: torch.Tensor) -> torch.Tensor:
    if x.ndim != 2:
        raise Lm2vError(f"CKA needs feature matrices (n, d), got shape {tuple(x.shape)}")
    x = x.detach().to(torch.float64)
    return x - x.mean(dim=0, keepdim=True)  # (n, d)


def _check_pair(x: torch.Tensor, y: torch.Tensor, least: int = 2) -> None:
    if len(x) != len(y):
        raise Lm2vError(f"CKA compares the same images: {len(x)} rows vs {len(y)} rows")
    if len(x) < least:
        raise Lm2vError(f"CKA needs at least {least} images, got {len(x)}")


def _ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """num / den with nan where den is 0 (a layer whose features do not vary over the images)."""
    return torch.where(den > 0, num / den.clamp_min(torch.finfo(den.dtype).tiny), torch.full_like(num, math.nan))


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA of x (n, d1) and y (n, d2), rows = the same n images; in [0, 1], nan if a side is constant."""
    _check_pair(x, y)
    xc, yc = _centred(x), _centred(y)
    num = torch.linalg.matrix_norm(xc.T @ yc) ** 2  # ||Xc^T Yc||_F^2
    den = torch.linalg.matrix_norm(xc.T @ xc) * torch.linalg.matrix_norm(yc.T @ yc)
    return float(_ratio(num, den))


def _gram_is_cheaper(n: int, xs: Sequence[torch.Tensor], ys: Sequence[torch.Tensor]) -> bool:
    """Multiply-adds of the two exact routes: n x n Gram matrices vs d_a x d_b cross-covariances."""
    da, db = sum(x.shape[1] for x in xs), sum(y.shape[1] for y in ys)
    gram = n * n * (da + db + len(xs) * len(ys))
    feature = n * (da * db + sum(x.shape[1] ** 2 for x in xs) + sum(y.shape[1] ** 2 for y in ys))
    return gram < feature


def _unit_gram(x: torch.Tensor) -> torch.Tensor:
    k = x @ x.T  # (n, n), centred since x is
    return k.flatten() / torch.linalg.vector_norm(k)  # nan if x is constant


def cka_matrix(feats_a: Sequence[torch.Tensor], feats_b: Sequence[torch.Tensor]) -> torch.Tensor:
    """Linear CKA of every pair: ``out[i, j] = linear_cka(feats_a[i], feats_b[j])``, float64 (La, Lb).

    Uses ``||Xc^T Yc||_F^2 = <Xc Xc^T, Yc Yc^T>`` (the same number) through n x n Gram matrices when
    they are cheaper (fewer images than features, as for large models); memory then grows as
    Lb * n^2, so sets much larger than ~5,000 images belong to :class:`MinibatchCKA`.
    """
    if not feats_a or not feats_b:
        raise Lm2vError("cka_matrix needs at least one layer on each side")
    for y in feats_b:
        _check_pair(feats_a[0], y)
    xs, ys = [_centred(x) for x in feats_a], [_centred(y) for y in feats_b]
    for x in xs:
        _check_pair(x, ys[0])
    if _gram_is_cheaper(len(xs[0]), xs, ys):
        kb = torch.stack([_unit_gram(y) for y in ys])  # (Lb, n * n)
        return torch.stack([kb @ _unit_gram(x) for x in xs])  # (La, Lb)
    norm_a = torch.stack([torch.linalg.matrix_norm(x.T @ x) for x in xs])  # (La,)
    norm_b = torch.stack([torch.linalg.matrix_norm(y.T @ y) for y in ys])  # (Lb,)
    num = torch.stack([torch.stack([torch.linalg.matrix_norm(x.T @ y) ** 2 for y in ys]) for x in xs])
    return _ratio(num, norm_a[:, None] * norm_b[None, :])


def _u_centred_gram(x: torch.Tensor) -> torch.Tensor:
    """U-centring (Szekely & Rizzo 2014) of the linear Gram matrix, flattened (m * m,).

    For U-centred K~ and L~ of one minibatch of m, ``<K~, L~> / (m (m - 3))`` is Song et al.'s
    unbiased HSIC of K and L; self-terms are sums of squares, hence never negative.
    """
    m = len(x)
    k = x.detach().to(torch.float64) @ x.detach().to(torch.float64).T  # (m, m), centring is not needed
    k = k - torch.diag(torch.diagonal(k))  # zero diagonal
    rows = k.sum(dim=1, keepdim=True) / (m - 2)  # (m, 1)
    u = k - rows - rows.T + k.sum() / ((m - 1) * (m - 2))
    u.fill_diagonal_(0.0)
    return u.flatten()


class MinibatchCKA:
    """Minibatch CKA (Nguyen et al. 2021) of La x Lb layer pairs, accumulated batch by batch.

    ``CKA = sum_b HSIC_1(K_b, L_b) / sqrt(sum_b HSIC_1(K_b, K_b) * sum_b HSIC_1(L_b, L_b))`` with the
    unbiased HSIC_1 of each minibatch; it converges to the same population value as :func:`linear_cka`
    (whose biased HSIC is off by O(1/n)) but never holds more than one minibatch of features.
    Batches need more than 3 images and may differ in size.
    """

    def __init__(self, num_a: int, num_b: int):
        self.cross = torch.zeros(num_a, num_b, dtype=torch.float64)  # sum of HSIC_1(K_i, L_j)
        self.self_a = torch.zeros(num_a, dtype=torch.float64)
        self.self_b = torch.zeros(num_b, dtype=torch.float64)
        self.images = 0

    def update(self, feats_a: Sequence[torch.Tensor], feats_b: Sequence[torch.Tensor]) -> None:
        """Add one minibatch: per-layer features (m, d) of the same m images from each model."""
        if len(feats_a) != len(self.self_a) or len(feats_b) != len(self.self_b):
            raise Lm2vError(f"expected {len(self.self_a)} and {len(self.self_b)} layers, "
                            f"got {len(feats_a)} and {len(feats_b)}")
        for f in (*feats_a, *feats_b):
            _check_pair(feats_a[0], f, least=4)
        m = len(feats_a[0])
        ua = torch.stack([_u_centred_gram(x) for x in feats_a])  # (La, m * m)
        ub = torch.stack([_u_centred_gram(y) for y in feats_b])  # (Lb, m * m)
        scale = 1.0 / (m * (m - 3))
        self.cross += (ua @ ub.T) * scale
        self.self_a += ua.square().sum(dim=1) * scale
        self.self_b += ub.square().sum(dim=1) * scale
        self.images += m

    def compute(self) -> torch.Tensor:
        """The (La, Lb) CKA matrix of every batch so far (nan for a layer that never varied)."""
        if self.images == 0:
            raise Lm2vError("MinibatchCKA has seen no batch")
        return _ratio(self.cross, torch.sqrt(self.self_a[:, None] * self.self_b[None, :]))


def minibatch_cka(x: torch.Tensor, y: torch.Tensor, batch_size: int = 256) -> float:
    """Minibatch CKA of one pair x (n, d1), y (n, d2) over consecutive batches of ``batch_size``
    (a last batch of 3 or fewer images is left out: the unbiased HSIC needs 4)."""
    _check_pair(x, y, least=4)
    if batch_size < 4:
        raise Lm2vError(f"minibatch CKA needs batches of at least 4 images, got {batch_size}")
    acc = MinibatchCKA(1, 1)
    for xb, yb in zip(x.split(batch_size), y.split(batch_size)):
        if len(xb) >= 4:
            acc.update([xb], [yb])
    return float(acc.compute()[0, 0])


def mean_cosine(x: torch.Tensor, y: torch.Tensor) -> float:
    """Mean over the n images of cos(x_k, y_k) for x, y (n, d) of equal width.

    Only meaningful when coordinate k of one model is coordinate k of the other (same architecture,
    one trained from the other); across architectures use CKA, which needs no such correspondence.
    """
    _check_pair(x, y, least=1)
    if x.shape[1:] != y.shape[1:] or x.ndim != 2:
        raise Lm2vError(f"mean cosine needs features of equal width, got {tuple(x.shape)} and {tuple(y.shape)}")
    return float(F.cosine_similarity(x.detach().double(), y.detach().double(), dim=1).mean())


def matched_layers(num_a: int, num_b: int) -> list[int]:
    """For layer i of ``num_a``, the layer of ``num_b`` at the same relative depth:
    ``round(i * (num_b - 1) / (num_a - 1))``, halves rounded up (first to first, last to last)."""
    if num_a < 1 or num_b < 1:
        raise Lm2vError(f"matched_layers needs at least one layer on each side, got {num_a} and {num_b}")
    if num_a == 1:
        return [0]
    return [math.floor(i * (num_b - 1) / (num_a - 1) + 0.5) for i in range(num_a)]


def plot_cka(cka: torch.Tensor, names_a: Sequence[str], names_b: Sequence[str], label_a: str, label_b: str,
             path: str | Path) -> None:
    """Heatmap of a (La, Lb) CKA matrix on [0, 1], matched-depth pairs marked with dots."""
    from .plotting import new_figure, save_figure

    La, Lb = cka.shape
    fig, ax = new_figure(width=min(3.0 + 0.35 * Lb, 12.0), height=min(2.5 + 0.35 * La, 10.0))
    im = ax.imshow(cka.numpy(), origin="lower", vmin=0.0, vmax=1.0, cmap="magma", aspect="auto")
    ax.scatter(matched_layers(La, Lb), range(La), s=8, c="cyan", marker="o")
    ax.set_xticks(range(Lb), labels=list(names_b), rotation=90, fontsize=7)
    ax.set_yticks(range(La), labels=list(names_a), fontsize=7)
    ax.set(xlabel=label_b, ylabel=label_a, title="linear CKA")
    fig.colorbar(im, ax=ax)
    save_figure(fig, path)
