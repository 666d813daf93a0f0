"""Kernel similarity S and the seed's phase labels.

S(A, B) = tr(A^T B) / (||A||_F ||B||_F), the normalised trace inner product (uncentred kernel
alignment). It is 1 for B = c A (c > 0), invariant to scaling either kernel, and in [0, 1] for
positive semi-definite kernels. The seed (shared/PROTOCOL.md, "Seed 2") labels a value:
chaotic S < 0.5, optimal 0.5 <= S < 0.9, lazy S >= 0.9.
"""
from __future__ import annotations

import torch

from ..errors import Lm2vError

CHAOTIC_BELOW = 0.5
LAZY_FROM = 0.9


def center(k: torch.Tensor) -> torch.Tensor:
    """H K H with H = I - 11^T / N, for a square (N, N) kernel."""
    if k.ndim != 2 or k.shape[0] != k.shape[1]:
        raise Lm2vError(f"centring needs a square kernel, got {tuple(k.shape)}")
    return k - k.mean(0, keepdim=True) - k.mean(1, keepdim=True) + k.mean()


def kernel_similarity(a: torch.Tensor, b: torch.Tensor, centered: bool = False) -> float:
    """S = tr(A^T B) / (||A||_F ||B||_F) of two kernels of one shape (any contraction).

    ``centered``: the same on H A H and H B H (centred kernel alignment, as CKA). Not the seed's
    definition; NTKs share a large constant part, which the uncentred S counts as agreement.
    """
    if a.shape != b.shape:
        raise Lm2vError(f"kernels differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    a, b = a.detach().double(), b.detach().double()
    if centered:
        a, b = center(a), center(b)
    a, b = a.flatten(), b.flatten()
    denom = a.norm() * b.norm()
    if denom == 0:
        raise Lm2vError("kernel similarity of an all-zero kernel is undefined")
    return float((a @ b) / denom)


def kernel_similarity_t(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Differentiable S (a tensor) for penalties: gradients flow into both kernels."""
    a, b = a.flatten(), b.flatten()
    return (a @ b) / (a.norm() * b.norm()).clamp_min(torch.finfo(a.dtype).tiny)


def phase_label(s: float) -> str:
    """chaotic (S < 0.5) / optimal (0.5 <= S < 0.9) / lazy (S >= 0.9), as the seed defines."""
    if s < CHAOTIC_BELOW:
        return "chaotic"
    return "optimal" if s < LAZY_FROM else "lazy"
