"""Training curves of a run's metrics records (``lm2vision.train.rundir.read_metrics``): train /
validation per epoch and the final test point, plotted and summed up."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

from ..errors import Lm2vError

METRICS = ("loss", "acc")


def epoch_records(records: Sequence[dict]) -> list[dict]:
    """The per-epoch records (those with an ``epoch`` and no ``event``)."""
    return [r for r in records if "epoch" in r and "event" not in r]


def test_record(records: Sequence[dict]) -> dict | None:
    """The last ``"event": "test"`` record, if any."""
    tests = [r for r in records if r.get("event") == "test"]
    return tests[-1] if tests else None


def final_numbers(records: Sequence[dict]) -> dict:
    """Last-epoch train / val numbers and the test numbers (final epoch, never the best)."""
    out: dict = {}
    epochs = epoch_records(records)
    if epochs:
        last = epochs[-1]
        out["epochs"] = last["epoch"]
        out.update({k: last[k] for k in last if k.startswith(("train_", "val_")) and isinstance(last[k], (int, float))})
    test = test_record(records)
    if test:
        out.update({k: v for k, v in test.items() if k.startswith("test_") and isinstance(v, (int, float))})
    return out


def plot_curves(runs: Mapping[str, Sequence[dict]], path: str | Path) -> None:
    """Loss and accuracy vs epoch for one or several runs (train solid, val dashed, test a star)."""
    from .plotting import new_figure, save_figure

    if not runs:
        raise Lm2vError("no runs to plot curves for")
    fig, axes = new_figure(ncols=2)
    for i, (label, records) in enumerate(runs.items()):
        color = f"C{i % 10}"
        epochs = epoch_records(records)
        test = test_record(records)
        for ax, metric in zip(axes, METRICS):
            for split, ls in (("train", "-"), ("val", "--")):
                pts = [(r["epoch"], r[f"{split}_{metric}"]) for r in epochs if f"{split}_{metric}" in r]
                if pts:
                    ax.plot(*zip(*pts), ls=ls, color=color, label=f"{label} {split}")
            if test and f"test_{metric}" in test and epochs:
                ax.plot([epochs[-1]["epoch"]], [test[f"test_{metric}"]], "*", color=color, ms=10, label=f"{label} test")
    for ax, metric in zip(axes, METRICS):
        ax.set(xlabel="epoch", ylabel=metric, title=metric)
        ax.legend(fontsize=7)
    save_figure(fig, path)
