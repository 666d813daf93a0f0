"""Empirical neural tangent kernel of any ``nn.Module`` with ``torch.func``.

Theta_ij = <d f(x_i) / d theta, d f(x_j) / d theta>, for a network ``net`` mapping a batch
(B, ...) to outputs (B, O). With the per-sample Jacobians J_i (O, P) three contractions exist
(as in the torch.func NTK tutorial):

- ``full``:     Theta[i, j] = J_i J_j^T                 -> (N, M, O, O)
- ``trace``:    sum_o of the O x O block's diagonal      -> (N, M)       (the default)
- ``diagonal``: the O x O block's diagonal               -> (N, M, O)

Three methods, chosen by size unless named (``NTKConfig.method``):

- ``jacobian``: per-sample Jacobians by ``vmap(jacrev)``, held in memory, then contracted. Exact;
  memory (N + M) * O * P floats.
- ``vjp``: NTK-vector products. Rows' Jacobians come chunk by chunk from ``vjp`` (``jacrev``), and
  each is pushed through the columns' network by ``jvp``; nothing of size M * P is kept. Exact;
  memory ``chunk * O * P`` floats, but the work grows as N * M * O.
- ``projection``: per-sample gradients sketched to ``proj_dim`` numbers by a fixed count-sketch
  (a sparse random projection S with one +-1 per parameter, E[S^T S] = I), so
  Theta ~= (J S^T)(J S^T)^T. Unbiased; relative error ~ sqrt(2 / proj_dim). Memory
  ``chunk * O * P`` floats while a chunk is sketched, then (N + M) * O * proj_dim.

Samples must not interact inside ``net`` (eval mode, no batch norm in training mode): every
method evaluates each sample on its own under ``vmap``.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
import torch.nn as nn
from torch.func import functional_call, jacrev, jvp, vmap
from torch.utils._pytree import tree_flatten, tree_map

from ..config import bounds, choices, validate
from ..errors import Lm2vError

METHODS = ("auto", "jacobian", "vjp", "projection")
CONTRACTIONS = ("trace", "diagonal", "full")

Params = dict[str, torch.Tensor]
SampleFn = Callable[[Params, Any], torch.Tensor]  # (params, one sample) -> (O,)


@dataclass
class NTKConfig:
    """How to compute an empirical NTK.

    method: auto | jacobian | vjp | projection (auto: ``jacobian`` when the Jacobians fit in
        ``memory_budget`` bytes, else ``vjp`` when N * M * O * P <= ``vjp_max_work``, else
        ``projection``).
    contraction: trace | diagonal | full (see the module docstring).
    chunk: samples per ``vmap`` call; 0 picks the largest chunk whose Jacobian fits in
        ``memory_budget``.
    proj_dim: width k of the count-sketch for ``projection``.
    memory_budget: bytes allowed for Jacobians held at once.
    vjp_max_work: the largest N * M * O * P for which ``auto`` picks the exact ``vjp`` method.
    seed: seeds the count-sketch (same seed = same projection, so kernels of two checkpoints compare).
    """

    method: str = field(default="auto", metadata=choices(*METHODS))
    contraction: str = field(default="trace", metadata=choices(*CONTRACTIONS))
    chunk: int = field(default=0, metadata=bounds(ge=0))
    proj_dim: int = field(default=4096, metadata=bounds(ge=1))
    memory_budget: float = field(default=2e9, metadata=bounds(gt=0))
    vjp_max_work: float = field(default=1e9, metadata=bounds(ge=0))
    seed: int = 0


# -- functional view of a module ------------------------------------------------------------------
def sample_fn(net: nn.Module, names: list[str] | None = None, detach: bool = True) -> tuple[SampleFn, Params]:
    """A per-sample function f(params, x_i) -> (O,) of ``net`` and the parameters to differentiate.

    ``names``: parameters of the kernel (default: those with ``requires_grad``). Every other
    parameter and buffer is held fixed. ``x_i`` is one sample (any pytree of tensors, no batch dim).
    ``detach=False`` keeps the live parameters, so a kernel built from them can be backpropagated
    (used by phase penalties).
    """
    named = dict(net.named_parameters())
    names = [n for n, p in named.items() if p.requires_grad] if names is None else list(names)
    missing = [n for n in names if n not in named]
    if missing:
        raise Lm2vError(f"no parameter named {missing[0]!r} in the model")
    if not names:
        raise Lm2vError("the NTK needs at least one parameter (none requires grad)")
    params = {n: named[n].detach() if detach else named[n] for n in names}
    fixed = {n: p.detach() for n, p in named.items() if n not in params}
    fixed.update(dict(net.named_buffers()))

    def f(p: Params, x: Any) -> torch.Tensor:
        batch = tree_map(lambda t: t.unsqueeze(0), x)
        args = batch if isinstance(batch, tuple) else (batch,)
        return functional_call(net, {**fixed, **p}, args)[0]  # (O,)

    return f, params


def num_samples(x: Any) -> int:
    """Batch size of a pytree of tensors (all leaves share dim 0)."""
    leaves = tree_flatten(x)[0]
    sizes = {t.shape[0] for t in leaves}
    if len(sizes) != 1:
        raise Lm2vError(f"inputs disagree on the number of samples: {sorted(sizes)}")
    return sizes.pop()


def _chunks(x: Any, size: int) -> Iterator[Any]:
    n = num_samples(x)
    for start in range(0, n, size):
        yield tree_map(lambda t: t[start:start + size], x)


def _num_params(params: Params) -> int:
    return sum(p.numel() for p in params.values())


def _out_dim(f: SampleFn, params: Params, x: Any) -> int:
    with torch.no_grad():
        return f(params, tree_map(lambda t: t[0], x)).numel()


def auto_chunk(cfg: NTKConfig, n_params: int, out_dim: int) -> int:
    """Samples per vmap call: ``cfg.chunk`` or the most whose Jacobians fit ``memory_budget``."""
    if cfg.chunk:
        return cfg.chunk
    return max(1, int(cfg.memory_budget // (4 * out_dim * n_params)))


def choose_method(cfg: NTKConfig, n_params: int, out_dim: int, n1: int, n2: int) -> str:
    """The method ``auto`` resolves to for P = ``n_params``, O = ``out_dim`` and N x M samples."""
    if cfg.method != "auto":
        return cfg.method
    if 4.0 * (n1 + n2) * out_dim * n_params <= cfg.memory_budget:
        return "jacobian"
    if float(n1) * n2 * out_dim * n_params <= cfg.vjp_max_work:
        return "vjp"
    return "projection"


# -- per-sample Jacobians ------------------------------------------------------------------------
@contextlib.contextmanager
def math_attention() -> Iterator[None]:
    """The math SDPA kernel: fused kernels have no vmap batching rule (slow fallback) and no jvp."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.MATH):
        yield


def jacobians(f: SampleFn, params: Params, x: Any, chunk: int) -> Iterator[Params]:
    """Per-sample Jacobians chunk by chunk: each a dict name -> (c, O, *param.shape)."""
    jac = vmap(jacrev(f), in_dims=(None, 0))
    for xc in _chunks(x, chunk):
        with math_attention():
            out = jac(params, xc)
        yield out


def _flat(jac: Params) -> torch.Tensor:
    """Dict of (c, O, *shape) -> one (c, O, P) tensor (parameter order of the dict)."""
    return torch.cat([j.flatten(2) for j in jac.values()], dim=2)


def contract(j1: torch.Tensor, j2: torch.Tensor, contraction: str) -> torch.Tensor:
    """Kernel of two flat Jacobians j1 (N, O, P) and j2 (M, O, P) under ``contraction``."""
    if contraction == "full":
        return torch.einsum("nop,mqp->nmoq", j1, j2)  # (N, M, O, O)
    if contraction == "diagonal":
        return torch.einsum("nop,mop->nmo", j1, j2)  # (N, M, O)
    return torch.einsum("nop,mop->nm", j1, j2)  # (N, M)


def _ntk_jacobian(f, params, x1, x2, cfg, chunk) -> torch.Tensor:
    j1 = torch.cat([_flat(j) for j in jacobians(f, params, x1, chunk)])  # (N, O, P)
    j2 = j1 if x2 is None else torch.cat([_flat(j) for j in jacobians(f, params, x2, chunk)])
    return contract(j1, j2, cfg.contraction)


# -- NTK-vector products -------------------------------------------------------------------------


def _jvp_rows(f: SampleFn, params: Params, tangents: Params, xc: Any) -> torch.Tensor:
    """J_j t for every tangent t (R of them) and sample j of ``xc``: (c, R, O)."""

    def one(x: Any) -> torch.Tensor:
        push = lambda t: jvp(lambda p: f(p, x), (params,), (t,))[1]  # noqa: E731  (O,)
        return vmap(push)(tangents)  # (R, O)

    return vmap(one)(xc)


VJP_CHUNK = 4  # default samples per block for vjp: its jvp batch is (chunk * O) tangents x chunk samples


def _ntk_vjp(f, params, x1, x2, cfg, chunk) -> torch.Tensor:
    x2 = x1 if x2 is None else x2
    chunk = cfg.chunk or min(chunk, VJP_CHUNK)
    rows = []
    with math_attention():
        for jac in jacobians(f, params, x1, chunk):
            a, O = next(iter(jac.values())).shape[:2]
            tangents = {k: v.reshape(a * O, *v.shape[2:]) for k, v in jac.items()}  # (a*O, *shape)
            cols = [_jvp_rows(f, params, tangents, xc) for xc in _chunks(x2, chunk)]
            prod = torch.cat(cols).reshape(-1, a, O, O)  # (M, a, O_row, O_col)
            rows.append(prod.permute(1, 0, 2, 3))  # (a, M, O, O)
    full = torch.cat(rows)  # (N, M, O, O)
    if cfg.contraction == "full":
        return full
    diag = torch.diagonal(full, dim1=2, dim2=3)  # (N, M, O)
    return diag if cfg.contraction == "diagonal" else diag.sum(-1)


# -- random projection ---------------------------------------------------------------------------
class CountSketch:
    """A fixed sparse random projection R^P -> R^k: coordinate p goes to bucket h(p) with sign s(p).

    E[<S g, S h>] = <g, h>; built per parameter tensor from ``seed`` so that two checkpoints of one
    architecture share it.
    """

    def __init__(self, params: Params, dim: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        self.dim = dim
        self.buckets, self.signs = {}, {}
        for name, p in params.items():
            n = p.numel()
            self.buckets[name] = torch.randint(0, dim, (n,), generator=g, dtype=torch.int32).to(p.device)
            self.signs[name] = (torch.randint(0, 2, (n,), generator=g) * 2 - 1).to(p.device, p.dtype)

    def __call__(self, jac: Params) -> torch.Tensor:
        """Per-sample Jacobians dict of (c, O, *shape) -> sketches (c, O, k)."""
        first = next(iter(jac.values()))
        out = first.new_zeros(*first.shape[:2], self.dim)
        for name, j in jac.items():
            out.index_add_(2, self.buckets[name], j.flatten(2) * self.signs[name])
        return out


def projected_gradients(f: SampleFn, params: Params, x: Any, sketch: CountSketch, chunk: int) -> torch.Tensor:
    """Count-sketched per-sample Jacobians (N, O, k)."""
    return torch.cat([sketch(jac) for jac in jacobians(f, params, x, chunk)])


def _ntk_projection(f, params, x1, x2, cfg, chunk) -> torch.Tensor:
    sketch = CountSketch(params, cfg.proj_dim, cfg.seed)
    z1 = projected_gradients(f, params, x1, sketch, chunk)  # (N, O, k)
    z2 = z1 if x2 is None else projected_gradients(f, params, x2, sketch, chunk)
    return contract(z1, z2, cfg.contraction)


_METHOD_FNS = {"jacobian": _ntk_jacobian, "vjp": _ntk_vjp, "projection": _ntk_projection}


# -- public entry points -------------------------------------------------------------------------
def empirical_ntk_fn(f: SampleFn, params: Params, x1: Any, x2: Any = None,
                     cfg: NTKConfig | None = None) -> torch.Tensor:
    """Empirical NTK of a per-sample function between ``x1`` (N samples) and ``x2`` (M; default x1)."""
    cfg = cfg or NTKConfig()
    validate(cfg, "ntk")  # also for configs built in Python (the phase controller's)
    P, O = _num_params(params), _out_dim(f, params, x1)
    n1 = num_samples(x1)
    n2 = n1 if x2 is None else num_samples(x2)
    method = choose_method(cfg, P, O, n1, n2)
    return _METHOD_FNS[method](f, params, x1, x2, cfg, auto_chunk(cfg, P, O))


def empirical_ntk(net: nn.Module, x1: Any, x2: Any = None, cfg: NTKConfig | None = None,
                  names: list[str] | None = None, differentiable: bool = False) -> torch.Tensor:
    """Empirical NTK of ``net`` (batch (B, ...) -> (B, O)) over its parameters ``names``.

    Returns (N, M) for ``trace``, (N, M, O) for ``diagonal``, (N, M, O, O) for ``full``.
    ``differentiable``: build the kernel from the live parameters so it can be backpropagated
    (``jacobian`` and ``projection`` only).
    """
    f, params = sample_fn(net, names, detach=not differentiable)
    return empirical_ntk_fn(f, params, x1, x2, cfg)


def ntk_diagonal(net: nn.Module, x: Any, chunk: int = 16, names: list[str] | None = None) -> torch.Tensor:
    """Theta_ii = ||J_i||_F^2 for each sample (N,), without any N x N work; its sum is tr(Theta)."""
    f, params = sample_fn(net, names)
    out = [sum(j.flatten(1).pow(2).sum(1) for j in jac.values()) for jac in jacobians(f, params, x, chunk)]
    return torch.cat(out)  # (N,)


def ntk_trace(net: nn.Module, x: Any, chunk: int = 16, names: list[str] | None = None) -> float:
    """tr(Theta) = sum_i ||J_i||_F^2 (the trace-NTK used for large models)."""
    return float(ntk_diagonal(net, x, chunk, names).sum())
