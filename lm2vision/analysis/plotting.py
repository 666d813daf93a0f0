"""Matplotlib on the Agg backend (no display needed) and one way to save figures."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ..utils.io import atomic_write  # noqa: E402


def new_figure(ncols: int = 1, width: float = 5.5, height: float = 4.0, **kw):
    """A figure with ``ncols`` axes side by side; returns (fig, ax) or (fig, axes)."""
    fig, ax = plt.subplots(1, ncols, figsize=(width * ncols, height), **kw)
    return fig, ax


def save_figure(fig, path: str | Path, dpi: int = 110) -> Path:
    """Save ``fig`` as PNG atomically and close it."""
    path = Path(path)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format="png"))
    plt.close(fig)
    return path
