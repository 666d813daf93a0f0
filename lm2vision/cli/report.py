"""The plot of ``lm2v demo`` (its table: :func:`lm2vision.utils.tables.markdown_table`)."""
from __future__ import annotations

from pathlib import Path

from ..train.rundir import read_metrics


def plot_demo(out: Path, rows: list[dict]) -> Path:
    """Left: stage-1 curves (loss and accuracy on the random labels); right: stage-2 test accuracy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for init in ("pretrained", "scratch"):
        bridge = out / f"{init}_bridge"
        if (bridge / "metrics.jsonl").is_file():
            recs = [r for r in read_metrics(bridge) if "train_loss" in r]
            ax1.plot([r["epoch"] for r in recs], [r["train_loss"] for r in recs], marker="o", label=f"{init}: loss")
            ax1.plot([r["epoch"] for r in recs], [r["train_acc"] for r in recs], ls="--", marker="x", label=f"{init}: acc")
    ax1.set(title="stage 1: bridge training on random labels", xlabel="epoch")
    ax1.legend(fontsize=8)
    names = [r["run"] for r in rows]
    accs = [r["test acc"] for r in rows]
    bars = ax2.bar(range(len(rows)), accs, color=["C0", "C0", "C1", "C1"][: len(rows)])
    ax2.bar_label(bars, fmt="%.3f")
    ax2.set_xticks(range(len(rows)), names, rotation=15, fontsize=8)
    ax2.set(title="stage 2: test accuracy (final epoch)", ylabel="top-1")
    fig.tight_layout()
    path = out / "curves.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
