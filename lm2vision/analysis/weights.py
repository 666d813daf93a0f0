"""Weight statistics: outlier shares (the authors' abs(w) > 1 and a scale-free z-score one), kurtosis,
per block and overall, and overlaid log-count histograms across models.

Every tensor is first put in (out, in, ...) layout: Hugging Face's ``Conv1D`` (GPT-2) stores its weight
as (in, out) and is transposed, so per-output-channel numbers mean the same thing for every family.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from ..errors import Lm2vError

# block index inside a parameter name: "blocks.3.", "h.3." (GPT-2), "layer.3." (BERT), "layers.3." (Llama, ViT)
_BLOCK_RE = re.compile(r"(?:^|\.)(?:blocks|h|layer|layers)\.(\d+)\.")


@dataclass
class TensorStats:
    """Outlier numbers of one weight tensor (layout already (out, in, ...))."""

    name: str
    block: str  # "block.3" or "other"
    numel: int
    abs_outliers: int  # count of |w| > threshold
    z_outliers: int  # count of |w - mean| > k * std
    kurtosis: float  # excess kurtosis (0 for a Gaussian)
    max_abs: float
    channel_outlier_share: float | None  # share of output channels holding an |w| > threshold (ndim >= 2)


@dataclass
class WeightStats:
    """Per-tensor stats plus their aggregates per block and overall."""

    threshold: float
    z_k: float
    tensors: list[TensorStats] = field(default_factory=list)

    def aggregate(self, block: str | None = None) -> dict:
        """Shares over all tensors (``block=None``) or over one block's tensors.

        Outlier shares are pooled counts / pooled numel; kurtosis is the numel-weighted mean of the
        per-tensor kurtoses (pooling raw moments across tensors of different scale is not scale-free).
        """
        rows = [t for t in self.tensors if block is None or t.block == block]
        n = sum(t.numel for t in rows)
        if n == 0:
            raise Lm2vError(f"no weight tensors in block {block!r}")
        return {
            "numel": n,
            "abs_outlier_share": sum(t.abs_outliers for t in rows) / n,
            "z_outlier_share": sum(t.z_outliers for t in rows) / n,
            "kurtosis": sum(t.kurtosis * t.numel for t in rows) / n,
            "max_abs": max(t.max_abs for t in rows),
        }

    def blocks(self) -> list[str]:
        """Block names in numeric order, then "other"."""
        names = {t.block for t in self.tensors}
        ordered = sorted((b for b in names if b.startswith("block.")), key=lambda b: int(b.split(".")[1]))
        return ordered + (["other"] if "other" in names else [])

    def summary(self) -> dict:
        """A JSON-able dict: overall, per block, and the per-tensor rows."""
        return {
            "threshold": self.threshold,
            "z_k": self.z_k,
            "overall": self.aggregate(),
            "per_block": {b: self.aggregate(b) for b in self.blocks()},
            "tensors": [asdict(t) for t in self.tensors],
        }


def conv1d_names(model: nn.Module) -> set[str]:
    """Names of parameters stored (in, out) by transformers' ``Conv1D`` (GPT-2 family)."""
    from transformers.pytorch_utils import Conv1D

    return {f"{m}.weight" if m else "weight" for m, mod in model.named_modules() if isinstance(mod, Conv1D)}


def model_weights(model: nn.Module, trainable_only: bool = True) -> dict[str, torch.Tensor]:
    """Weight tensors of ``model`` in (out, in, ...) layout, keyed by parameter name."""
    transposed = conv1d_names(model)
    out = {}
    for name, p in model.named_parameters():
        if trainable_only and not p.requires_grad:
            continue
        w = p.detach()
        out[name] = w.t() if name in transposed else w
    if not out:
        raise Lm2vError("the model has no (trainable) parameters to analyse")
    return out


def block_of(name: str) -> str:
    """The block a parameter belongs to ("block.<i>") or "other" (embeddings, head, final norm)."""
    m = _BLOCK_RE.search(name)
    return f"block.{m.group(1)}" if m else "other"


def excess_kurtosis(w: torch.Tensor) -> float:
    """Excess kurtosis E[(w-mu)^4]/sigma^4 - 3 of all entries (0 for a Gaussian; 0 if constant)."""
    x = w.detach().double().flatten()
    z = x - x.mean()
    var = z.pow(2).mean()
    if var == 0:
        return 0.0
    return float(z.pow(4).mean() / var**2 - 3.0)


def outlier_share(w: torch.Tensor, threshold: float = 1.0) -> float:
    """Share of entries with |w| > threshold (the authors' definition)."""
    return float((w.detach().abs() > threshold).double().mean())


def z_outlier_count(w: torch.Tensor, k: float = 6.0) -> int:
    """Number of entries with |w - mean| > k * std (std over the tensor; 0 for constant tensors)."""
    x = w.detach().double().flatten()
    if x.numel() < 2:
        return 0
    std = x.std()
    if std == 0:
        return 0
    return int(((x - x.mean()).abs() > k * std).sum())


def channel_outlier_share(w: torch.Tensor, threshold: float = 1.0) -> float | None:
    """Share of output channels (rows of an (out, in, ...) tensor) with any |w| > threshold."""
    if w.ndim < 2:
        return None
    rows = w.detach().reshape(w.shape[0], -1).abs()  # (out, in*...)
    return float((rows > threshold).any(dim=1).double().mean())


def tensor_stats(name: str, w: torch.Tensor, threshold: float = 1.0, z_k: float = 6.0) -> TensorStats:
    """All numbers of one tensor (``w`` in (out, in, ...) layout)."""
    return TensorStats(
        name=name,
        block=block_of(name),
        numel=w.numel(),
        abs_outliers=int((w.detach().abs() > threshold).sum()),
        z_outliers=z_outlier_count(w, z_k),
        kurtosis=excess_kurtosis(w),
        max_abs=float(w.detach().abs().max()),
        channel_outlier_share=channel_outlier_share(w, threshold),
    )


def weight_stats(
    weights: nn.Module | Mapping[str, torch.Tensor],
    threshold: float = 1.0,
    z_k: float = 6.0,
    trainable_only: bool = True,
    transposed: set[str] | frozenset[str] = frozenset(),
) -> WeightStats:
    """Outlier statistics of a model (Conv1D found and transposed) or of a state dict.

    For a state dict, ``transposed`` names the (in, out) tensors to transpose (see :func:`conv1d_names`).
    """
    if isinstance(weights, nn.Module):
        tensors = model_weights(weights, trainable_only)
    else:
        tensors = {n: (w.t() if n in transposed else w) for n, w in weights.items()}
    stats = WeightStats(threshold=threshold, z_k=z_k)
    for name, w in tensors.items():
        if w.is_floating_point() and w.numel() > 0:
            stats.tensors.append(tensor_stats(name, w, threshold, z_k))
    if not stats.tensors:
        raise Lm2vError("no floating-point weight tensors to analyse")
    return stats


def histogram(tensors: Mapping[str, torch.Tensor], edges: torch.Tensor) -> torch.Tensor:
    """Counts of all entries of ``tensors`` in bins ``edges`` (values outside are clamped into the end bins)."""
    counts = torch.zeros(len(edges) - 1, dtype=torch.float64)
    lo, hi = float(edges[0]), float(edges[-1])
    for w in tensors.values():
        x = w.detach().float().flatten().clamp(lo, hi)
        counts += torch.histc(x, bins=len(edges) - 1, min=lo, max=hi).double()
    return counts


def plot_weight_histograms(
    models: Mapping[str, Mapping[str, torch.Tensor]], path: str | Path, bins: int = 201, threshold: float = 1.0
) -> dict[str, list[float]]:
    """Overlay log-count histograms of several models' weights on shared bins; returns the counts."""
    from .plotting import new_figure, save_figure

    if not models:
        raise Lm2vError("no models to plot weight histograms for")
    r = max(max(float(w.detach().abs().max()) for w in ws.values()) for ws in models.values())
    r = max(r, threshold * 1.1)
    edges = torch.linspace(-r, r, bins + 1)
    centers = 0.5 * (edges[1:] + edges[:-1])
    fig, ax = new_figure()
    out = {}
    styles = ["-", "--", "-.", ":"]
    for i, (label, ws) in enumerate(models.items()):
        counts = histogram(ws, edges)
        out[label] = counts.tolist()
        ax.step(centers.numpy(), counts.clamp(min=0.5).numpy(), where="mid", label=label,
                ls=styles[i % len(styles)], lw=2.0 if i == 0 else 1.2, alpha=0.85)
    for s in (-threshold, threshold):
        ax.axvline(s, color="gray", ls=":", lw=1)
    ax.set(yscale="log", xlabel="weight value", ylabel="count (log)", title="Weight histograms")
    ax.legend(fontsize=8)
    save_figure(fig, path)
    return out
