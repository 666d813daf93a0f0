"""2-D loss-landscape slices L(theta + a d1 + b d2) around a model's weights theta.

Directions (dicts name -> tensor over the trainable parameters by default):
- "random": Gaussian, each scaled to unit global norm (the authors), d2 Gram-Schmidt'ed against d1;
- "filter": Gaussian, filter-normalised (Li et al. 2018): each row (output filter) of a tensor gets the
  norm of the same row of theta; 1-D tensors (biases, norms) get the norm of the whole tensor;
- "training": d1 = theta_T - theta_0 (so a = -1 is the initial weights when centred at theta_T), d2 random,
  per-tensor scaled to the norm of d1's tensor, then made orthogonal to d1.

The grid is evaluated without autograd; ``chunk > 1`` evaluates that many grid points in one call with
``torch.func.vmap`` over ``functional_call`` (stacked parameters, the batch tensors shared).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch
from torch import nn
from torch.func import functional_call, vmap

from ..errors import Lm2vError

Params = dict[str, torch.Tensor]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
DIRECTIONS = ("random", "filter", "training")


@dataclass
class Landscape:
    """A loss grid: ``loss[i, j] = L(theta + alphas[i] d1 + betas[j] d2)``."""

    alphas: torch.Tensor  # (A,)
    betas: torch.Tensor  # (B,)
    loss: torch.Tensor  # (A, B)
    directions: str

    def numbers(self) -> dict:
        """Centre loss, grid minimum, and a flatness number (mean rise over the grid relative to the centre)."""
        i0 = int(self.alphas.abs().argmin())
        j0 = int(self.betas.abs().argmin())
        centre = float(self.loss[i0, j0])
        return {
            "directions": self.directions,
            "grid": f"{len(self.alphas)}x{len(self.betas)}",
            "loss_centre": centre,
            "loss_min": float(self.loss.min()),
            "loss_max": float(self.loss.max()),
            "mean_rise": float((self.loss - centre).mean()),
        }


def trainable_params(model: nn.Module, trainable_only: bool = True) -> Params:
    """The parameters to perturb, detached (all of them with ``trainable_only=False``)."""
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad or not trainable_only}
    if not params:
        raise Lm2vError("the model has no trainable parameters to perturb")
    return params


def dot(d1: Mapping[str, torch.Tensor], d2: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Global inner product of two directions (float64)."""
    return sum((d1[n].double() * d2[n].double()).sum() for n in d1)


def global_norm(d: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Global L2 norm of a direction."""
    return dot(d, d).sqrt()


def scale(d: Mapping[str, torch.Tensor], s: float | torch.Tensor) -> Params:
    """``s * d``."""
    return {n: v * float(s) for n, v in d.items()}


def gaussian_like(theta: Mapping[str, torch.Tensor], generator: torch.Generator) -> Params:
    """Standard normal tensors shaped like ``theta`` (drawn on CPU from ``generator``)."""
    return {n: torch.randn(t.shape, generator=generator).to(t) for n, t in theta.items()}


def filter_normalize(d: Mapping[str, torch.Tensor], theta: Mapping[str, torch.Tensor]) -> Params:
    """Li et al. 2018: each output filter (row) of d scaled to the norm of the same row of theta."""
    out = {}
    for n, v in d.items():
        t = theta[n]
        if v.ndim <= 1:
            out[n] = v * (t.norm() / v.norm().clamp(min=1e-12))
            continue
        rows_v = v.reshape(v.shape[0], -1)  # (out, in*...)
        rows_t = t.reshape(t.shape[0], -1)
        ratio = rows_t.norm(dim=1, keepdim=True) / rows_v.norm(dim=1, keepdim=True).clamp(min=1e-12)
        out[n] = (rows_v * ratio).reshape(v.shape)
    return out


def orthogonalize(d: Mapping[str, torch.Tensor], ref: Mapping[str, torch.Tensor]) -> Params:
    """d minus its projection on ref (global inner product)."""
    c = dot(d, ref) / dot(ref, ref).clamp(min=1e-30)
    return {n: d[n] - float(c) * ref[n] for n in d}


def random_directions(theta: Mapping[str, torch.Tensor], kind: str = "random", seed: int = 0) -> tuple[Params, Params]:
    """Two directions of kind "random" (unit global norm, d2 orthogonal to d1) or "filter" (Li et al.)."""
    g = torch.Generator().manual_seed(seed)
    d1, d2 = gaussian_like(theta, g), gaussian_like(theta, g)
    if kind == "filter":
        return filter_normalize(d1, theta), filter_normalize(d2, theta)
    if kind != "random":
        raise Lm2vError(f"unknown direction kind {kind!r}; choose from {DIRECTIONS}")
    d1 = scale(d1, 1 / global_norm(d1))
    d2 = orthogonalize(d2, d1)
    return d1, scale(d2, 1 / global_norm(d2))


def training_directions(
    theta_0: Mapping[str, torch.Tensor], theta_T: Mapping[str, torch.Tensor], seed: int = 0
) -> tuple[Params, Params]:
    """d1 = theta_T - theta_0; d2 random, per-tensor scaled to d1's tensor norms, orthogonal to d1."""
    missing = [n for n in theta_T if n not in theta_0]
    if missing:
        raise Lm2vError(f"initial weights lack {len(missing)} tensors, e.g. {missing[0]!r}")
    d1 = {n: theta_T[n] - theta_0[n].to(theta_T[n]) for n in theta_T}
    if float(global_norm(d1)) == 0:
        raise Lm2vError("initial and final weights are identical: no training direction")
    g = torch.Generator().manual_seed(seed)
    r = gaussian_like(theta_T, g)
    r = {n: r[n] * (d1[n].norm() / r[n].norm().clamp(min=1e-12)) for n in r}
    d2 = orthogonalize(r, d1)
    return d1, scale(d2, global_norm(d1) / global_norm(d2))


def _grid_points(alphas: torch.Tensor, betas: torch.Tensor) -> torch.Tensor:
    """All (a, b) pairs, row-major: (A*B, 2)."""
    a, b = torch.meshgrid(alphas, betas, indexing="ij")
    return torch.stack([a.flatten(), b.flatten()], dim=1)


def _point_params(theta: Params, d1: Params, d2: Params, ab: torch.Tensor) -> Params:
    """Stacked parameters for G grid points ``ab`` (G, 2): each (G, *shape)."""
    out = {}
    for n, t in theta.items():
        shape = (-1,) + (1,) * t.ndim
        a = ab[:, 0].to(t).view(shape)
        b = ab[:, 1].to(t).view(shape)
        out[n] = t.unsqueeze(0) + a * d1[n].unsqueeze(0) + b * d2[n].unsqueeze(0)
    return out


def _loss_of(model: nn.Module, loss_fn: LossFn) -> Callable:
    """(params, x, y) -> loss, with the model's other parameters and buffers taken as they are."""

    def f(params: Params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return loss_fn(functional_call(model, params, (x,), strict=False), y)

    return f


def evaluate_grid(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
    d1: Params,
    d2: Params,
    alphas: torch.Tensor,
    betas: torch.Tensor,
    chunk: int = 1,
    directions: str = "custom",
    progress: bool = True,
) -> Landscape:
    """Loss averaged over ``batches`` (weighted by size) at every grid point around the model's weights.

    ``loss_fn(logits, y)`` must return the batch mean. The model is evaluated in eval mode and left as found.
    """
    from tqdm import tqdm

    if not batches:
        raise Lm2vError("no batches to evaluate the landscape on")
    if chunk < 1:
        raise Lm2vError(f"chunk must be >= 1, got {chunk}")
    params = dict(model.named_parameters())
    theta = {n: params[n].detach() for n in d1}
    f = _loss_of(model, loss_fn)
    f_many = vmap(f, in_dims=(0, None, None)) if chunk > 1 else None
    points = _grid_points(alphas.double(), betas.double())
    n_total = sum(len(y) for _, y in batches)
    losses = []
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for ab in tqdm(points.split(chunk), desc="landscape", disable=not progress, leave=False):
                p = _point_params(theta, d1, d2, ab)
                total = torch.zeros(len(ab), dtype=torch.float64)
                for x, y in batches:
                    if f_many is not None:
                        lb = f_many(p, x, y)
                    else:
                        lb = f({n: v[0] for n, v in p.items()}, x, y).reshape(1)
                    total += lb.double().cpu() * len(y)
                losses.append(total / n_total)
    finally:
        model.train(was_training)
    loss = torch.cat(losses).reshape(len(alphas), len(betas))
    return Landscape(alphas=alphas.double(), betas=betas.double(), loss=loss, directions=directions)


def plot_landscape(land: Landscape, contour_path: str | Path, surface_path: str | Path) -> None:
    """A contour plot and a 3-D surface of the loss grid."""
    from .plotting import new_figure, save_figure

    A, B = torch.meshgrid(land.alphas, land.betas, indexing="ij")
    A, B, L = A.numpy(), B.numpy(), land.loss.numpy()
    fig, ax = new_figure()
    cs = ax.contourf(A, B, L, levels=30, cmap="viridis")
    ax.contour(A, B, L, levels=15, colors="k", linewidths=0.3)
    fig.colorbar(cs, ax=ax, label="loss")
    ax.plot([0], [0], "r+", ms=10)
    ax.set(xlabel="alpha (d1)", ylabel="beta (d2)", title=f"Loss landscape ({land.directions})")
    save_figure(fig, contour_path)
    fig, ax = new_figure(subplot_kw={"projection": "3d"})
    ax.plot_surface(A, B, L, cmap="viridis", linewidth=0, antialiased=True)
    ax.set(xlabel="alpha", ylabel="beta", zlabel="loss", title=f"Loss surface ({land.directions})")
    save_figure(fig, surface_path)
