"""Covariance alignment of the patch embedding with the input patches (Theorem 4.1, after Maennel et al. 2020).

With random labels the first-layer weight covariance Sigma_W = W^T W / C comes to share its eigenvectors
with the patch covariance Sigma_X, with eigenvalues mapped by a smooth function. We measure:

- energy: ||U_k^T V_k||_F^2 / k, the share of one top-k eigenspace captured by the other (1 = same
  subspace, chance level for random subspaces is k / D);
- max-cosine: mean over the top-k data eigenvectors u_i of max_{j<k} |u_i . v_j|;
- the eigenvalue mapping sigma_i -> tau_i = u_i^T Sigma_W u_i along the data eigenvectors, and the
  Spearman rank correlation between the two (a monotone mapping gives 1).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import Lm2vError


@dataclass
class Alignment:
    """Alignment numbers of one weight matrix against one patch covariance."""

    k: int
    dim: int  # D = 3 * p * p
    energy: float  # ||U_k^T V_k||_F^2 / k in [0, 1]
    max_cosine: float  # mean_i max_j |u_i . v_j| over the top k
    chance_energy: float  # k / D, the expectation for random subspaces
    spearman: float  # rank correlation of sigma_i and tau_i over all D directions
    sigma: list[float]  # eigenvalues of Sigma_X, descending
    tau: list[float]  # u_i^T Sigma_W u_i along the same eigenvectors

    def numbers(self) -> dict:
        """The scalar results (no spectra)."""
        return {k: getattr(self, k) for k in ("k", "dim", "energy", "max_cosine", "chance_energy", "spearman")}


def weight_matrix(conv_weight: torch.Tensor) -> torch.Tensor:
    """Patch-embedding Conv2d weight (C, 3, p, p) -> W (C, 3*p*p), in F.unfold's (c, kh, kw) order."""
    if conv_weight.ndim != 4:
        raise Lm2vError(f"patch embedding weight must be (C, 3, p, p), got {tuple(conv_weight.shape)}")
    return conv_weight.detach().reshape(conv_weight.shape[0], -1).double()


def extract_patches(images: torch.Tensor, patch: int) -> torch.Tensor:
    """Non-overlapping patches of normalised images (N, 3, H, W) -> (N * T, 3*p*p), T = (H/p)(W/p)."""
    if images.ndim != 4 or images.shape[-1] % patch or images.shape[-2] % patch:
        raise Lm2vError(f"images {tuple(images.shape)} do not tile into {patch}x{patch} patches")
    cols = F.unfold(images.float(), kernel_size=patch, stride=patch)  # (N, D, T)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1]).double()  # (N*T, D)


def patch_covariance(patches: torch.Tensor) -> torch.Tensor:
    """Sigma_X: covariance (D, D) of the rows of ``patches`` (N, D), mean removed."""
    if patches.shape[0] < 2:
        raise Lm2vError("need at least two patches for a covariance")
    z = patches.double() - patches.double().mean(0)
    return z.T @ z / (z.shape[0] - 1)


def weight_covariance(W: torch.Tensor) -> torch.Tensor:
    """Sigma_W = W^T W / C for W (C, D) (uncentred, as in the theorem)."""
    W = W.double()
    return W.T @ W / W.shape[0]


def eigh_desc(S: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (descending) and eigenvectors (columns) of a symmetric matrix."""
    vals, vecs = torch.linalg.eigh(0.5 * (S + S.T))
    return vals.flip(0), vecs.flip(1)


def spearman(x: torch.Tensor, y: torch.Tensor) -> float:
    """Spearman rank correlation (scipy; 0 when either input is constant)."""
    from scipy.stats import spearmanr

    if x.unique().numel() < 2 or y.unique().numel() < 2:
        return 0.0
    return float(spearmanr(x.numpy(), y.numpy()).statistic)


def covariance_alignment(sigma_w: torch.Tensor, sigma_x: torch.Tensor, k: int = 10) -> Alignment:
    """Compare the eigenbases of Sigma_W and Sigma_X (both (D, D)) over their top ``k`` eigenvectors."""
    D = sigma_x.shape[0]
    if sigma_w.shape != (D, D):
        raise Lm2vError(f"covariances differ in shape: {tuple(sigma_w.shape)} vs {tuple(sigma_x.shape)}")
    if not 1 <= k <= D:
        raise Lm2vError(f"k must be in [1, {D}], got {k}")
    sig, U = eigh_desc(sigma_x.double())  # data basis
    _, V = eigh_desc(sigma_w.double())  # weight basis
    C = (U[:, :k].T @ V[:, :k]).abs()  # (k, k) |cosines|
    tau = torch.einsum("di,de,ei->i", U, sigma_w.double(), U)  # u_i^T Sigma_W u_i
    return Alignment(
        k=k,
        dim=D,
        energy=float(C.pow(2).sum() / k),
        max_cosine=float(C.max(dim=1).values.mean()),
        chance_energy=k / D,
        spearman=spearman(sig, tau),
        sigma=sig.tolist(),
        tau=tau.tolist(),
    )


def patch_embed_alignment(conv_weight: torch.Tensor, images: torch.Tensor, k: int = 10) -> Alignment:
    """Alignment of a patch-embedding Conv2d weight (C, 3, p, p) with the patches of ``images``."""
    W = weight_matrix(conv_weight)
    p = conv_weight.shape[-1]
    sigma_x = patch_covariance(extract_patches(images, p))
    return covariance_alignment(weight_covariance(W), sigma_x, k)


def plot_eigen_mapping(results: dict[str, Alignment], path: str | Path) -> None:
    """sigma_i -> tau_i (log-log) for several weight states (e.g. before / after bridge training)."""
    from .plotting import new_figure, save_figure

    fig, ax = new_figure()
    for label, a in results.items():
        sig = torch.tensor(a.sigma).clamp(min=1e-12)
        tau = torch.tensor(a.tau).clamp(min=1e-12)
        ax.scatter(sig.numpy(), tau.numpy(), s=10, label=f"{label} (energy@{a.k}={a.energy:.2f})")
    ax.set(xscale="log", yscale="log", xlabel="sigma_i (eigenvalue of Sigma_X)",
           ylabel="tau_i = u_i^T Sigma_W u_i", title="Eigenvalue mapping")
    ax.legend(fontsize=8)
    save_figure(fig, path)
