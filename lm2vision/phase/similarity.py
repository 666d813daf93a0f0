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


def kernel_similarity(a: torch.Tensor, b: torch.Tensor) -> float:
    """S = tr(A^T B) / (||A||_F ||B||_F) of two kernels of one shape (any contraction)."""
    if a.shape != b.shape:
        raise Lm2vError(f"kernels differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    a, b = a.detach().double().flatten(), b.detach().double().flatten()
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
