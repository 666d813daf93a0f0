"""Random labels for bridge training (stage 1): a seeded share of the training labels is redrawn."""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..errors import Lm2vError
from ..utils.io import atomic_write

SCHEMES = ("wrong", "uniform")


def random_labels(labels: torch.Tensor, num_classes: int, ratio: float, scheme: str = "wrong",
                  seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Redraw the labels of exactly round(ratio * N) images, chosen with ``seed``.

    scheme "wrong": each chosen label is drawn uniformly from the OTHER num_classes - 1 classes, so it
    always changes (ratio 1 makes every label wrong; the method's authors do this).
    scheme "uniform": drawn from all classes, so about 1/num_classes of them keep their true label.

    Returns (new_labels (N,) int64, changed_mask (N,) bool); the mask marks the chosen images.
    """
    if scheme not in SCHEMES:
        raise Lm2vError(f"random-label scheme must be one of {SCHEMES}, got {scheme!r}")
    if not 0.0 <= ratio <= 1.0:
        raise Lm2vError(f"random-label ratio must be in [0, 1], got {ratio}")
    if num_classes < 2:
        raise Lm2vError(f"random labels need at least 2 classes, got {num_classes}")
    y = labels.detach().cpu().long()  # (N,)
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise Lm2vError(f"labels must lie in [0, {num_classes}), got [{int(y.min())}, {int(y.max())}]")
    n = y.numel()
    k = round(ratio * n)
    g = torch.Generator().manual_seed(seed)
    chosen = torch.randperm(n, generator=g)[:k]  # (k,)
    if scheme == "wrong":
        shift = torch.randint(1, num_classes, (k,), generator=g)  # 1..C-1: never the true class
        drawn = (y[chosen] + shift) % num_classes
    else:
        drawn = torch.randint(0, num_classes, (k,), generator=g)
    new = y.clone()
    new[chosen] = drawn
    mask = torch.zeros(n, dtype=torch.bool)
    mask[chosen] = True
    return new, mask


def save_labels(path: str | Path, labels: torch.Tensor, changed_mask: torch.Tensor) -> None:
    """Write the labels used and the changed mask as safetensors (keys ``labels``, ``changed``)."""
    tensors = {"labels": labels.detach().cpu().long().contiguous(),
               "changed": changed_mask.detach().cpu().bool().contiguous()}
    atomic_write(Path(path), lambda tmp: save_file(tensors, tmp))


def load_labels(path: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Read back (labels, changed_mask) written by :func:`save_labels`."""
    p = Path(path)
    if not p.is_file():
        raise Lm2vError(f"labels file not found: {p}")
    t = load_file(str(p))
    if set(t) != {"labels", "changed"}:
        raise Lm2vError(f"{p} is not a labels file (keys {sorted(t)})")
    return t["labels"], t["changed"]
