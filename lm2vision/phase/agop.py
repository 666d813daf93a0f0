"""Average gradient outer product (AGOP, Radhakrishnan et al. 2022) and its spectrum.

For f: R^D -> R^O, AGOP = (1/N) sum_i J_i^T J_i with J_i = d f(x_i) / d x (O, D); for f(x) = W x it
is W^T W. Inputs with positions (tokens (N, T, C), image patches) use the per-position form of
Beaglehole et al.: gradients with respect to each position's feature vector are summed over the
positions, AGOP = (1/N) sum_i sum_t g_it^T g_it (C x C, or 3p^2 x 3p^2 for p x p image patches).
Per layer, the gradient is taken with respect to that layer's input (forward pre-hooks).

Per-sample gradients come from one backward pass per output dimension over the whole batch, which
is exact when samples do not interact (eval mode; no batch norm in training mode).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import Lm2vError


@dataclass
class Spectrum:
    """Eigenvalues of an AGOP and the numbers the seed uses.

    ratio: largest / smallest non-negligible eigenvalue, "non-negligible" meaning
        > ``rel_tol`` * largest (the seed: ratios above 1e6 predict alignment failure).
    effective_rank: exp of the entropy of eigenvalues / their sum (Roy & Vetterli 2007).
    """

    eigenvalues: list[float]  # descending, clipped at 0
    ratio: float
    effective_rank: float
    rel_tol: float
    num_kept: int  # eigenvalues above rel_tol * largest


def _position_grads(grad: torch.Tensor, patch_size: int | None) -> torch.Tensor:
    """Per-sample input gradients -> (N, L, D): patches of images, positions of tokens, or (N, 1, D)."""
    if patch_size:
        if grad.ndim != 4:
            raise Lm2vError(f"patch AGOP needs images (N, 3, H, W), got {tuple(grad.shape)}")
        return F.unfold(grad, kernel_size=patch_size, stride=patch_size).transpose(1, 2)  # (N, L, 3p^2)
    if grad.ndim == 2:
        return grad[:, None]  # (N, 1, D)
    return grad.reshape(grad.shape[0], -1, grad.shape[-1])  # (N, L, C)


def _outer(g: torch.Tensor) -> torch.Tensor:
    g = g.double()
    return torch.einsum("nld,nle->de", g, g)  # (D, D), summed over samples and positions


def agop(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, patch_size: int | None = None) -> torch.Tensor:
    """AGOP of ``fn`` (batch (N, ...) -> (N, O)) with respect to its input ``x``: (D, D) float64.

    ``patch_size``: for images, the AGOP over non-overlapping p x p patches (D = 3 p^2).
    """
    x = x.detach().clone().requires_grad_(True)
    out = fn(x)  # (N, O)
    if out.ndim != 2:
        raise Lm2vError(f"AGOP needs outputs (N, O), got {tuple(out.shape)}")
    total = None
    for o in range(out.shape[1]):
        (g,) = torch.autograd.grad(out[:, o].sum(), x, retain_graph=o + 1 < out.shape[1])
        term = _outer(_position_grads(g, patch_size))
        total = term if total is None else total + term
    return total / x.shape[0]


def layer_agops(fn: Callable[[Any], torch.Tensor], inputs: Any, layers: dict[str, nn.Module]) -> dict[str, torch.Tensor]:
    """AGOP of ``fn(inputs)`` (N, O) with respect to each layer's input (its first tensor argument).

    The layer input (N, ..., C) is treated per position (summed over all but the first and last
    dims): each result is (C, C) float64.
    """
    captured: dict[str, torch.Tensor] = {}

    def hook_for(name: str):
        def hook(module, args, kwargs):
            h = args[0] if args else kwargs.get("hidden_states", next((v for v in kwargs.values() if torch.is_tensor(v)), None))
            captured[name] = h
        return hook

    handles = [m.register_forward_pre_hook(hook_for(n), with_kwargs=True) for n, m in layers.items()]
    try:
        with torch.enable_grad():
            out = fn(inputs)  # (N, O)
    finally:
        for h in handles:
            h.remove()
    missing = [n for n in layers if n not in captured or not captured[n].requires_grad]
    if missing:
        raise Lm2vError(f"layer {missing[0]!r} was not run or its input carries no gradient")
    names = list(layers)
    totals = {n: None for n in names}
    for o in range(out.shape[1]):
        grads = torch.autograd.grad(out[:, o].sum(), [captured[n] for n in names], retain_graph=o + 1 < out.shape[1])
        for n, g in zip(names, grads):
            term = _outer(_position_grads(g, None))
            totals[n] = term if totals[n] is None else totals[n] + term
    return {n: t / out.shape[0] for n, t in totals.items()}


def effective_rank(eigenvalues: torch.Tensor) -> float:
    """exp(H(p)), p = lambda / sum(lambda): 1 for rank one, D for a flat spectrum."""
    lam = eigenvalues.double().clamp_min(0)
    total = lam.sum()
    if total <= 0:
        return 0.0
    p = lam[lam > 0] / total
    return float(torch.exp(-(p * p.log()).sum()))


def spectrum(m: torch.Tensor, rel_tol: float = 1e-6) -> Spectrum:
    """Eigen-spectrum of a symmetric PSD matrix (an AGOP), its condition-style ratio and effective rank."""
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise Lm2vError(f"spectrum needs a square matrix, got {tuple(m.shape)}")
    if not 0 < rel_tol < 1:
        raise Lm2vError(f"rel_tol must be in (0, 1), got {rel_tol}")
    m = m.detach().double()
    lam = torch.linalg.eigvalsh((m + m.T) / 2).flip(0).clamp_min(0)  # descending
    top = float(lam[0])
    kept = lam[lam > rel_tol * top] if top > 0 else lam[:0]
    ratio = float(kept[0] / kept[-1]) if len(kept) else float("nan")
    return Spectrum(lam.tolist(), ratio, effective_rank(lam), rel_tol, len(kept))
