"""The experiment figure: test accuracy per arm with its interval over seeds as error bars."""
from __future__ import annotations

import math
from pathlib import Path


def _errors(rows: list[dict], metric: str) -> list[list[float]]:
    """Asymmetric error bars (below, above) from each row's interval; 0 where it is undefined (one seed)."""
    lo = [r[metric] - r["ci low"] if _finite(r["ci low"]) else 0.0 for r in rows]
    hi = [r["ci high"] - r[metric] if _finite(r["ci high"]) else 0.0 for r in rows]
    return [lo, hi]


def _finite(x) -> bool:
    return x is not None and not math.isnan(x)


def plot_arms(path: Path, rows: list[dict], x_axis: str | None = None, title: str = "",
              metric: str = "test acc") -> Path:
    """Lines of ``metric`` (a column of the rows, with ``ci low`` / ``ci high``) against the numeric ``x_axis`` (one line per combination of the other
    coordinates), or one bar per arm; error bars are the 95% intervals over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    if x_axis and all(isinstance(r.get(x_axis), (int, float)) for r in rows if r["bridged"]):
        groups: dict = {}
        for r in (r for r in rows if r["bridged"]):
            key = ", ".join(f"{k.split('.')[-1]}={v}" for k, v in r.items()
                            if k not in (x_axis, "arm", "bridged") and k in _coords(rows))
            groups.setdefault(key or "bridged", []).append(r)
        for label, rs in groups.items():
            rs = sorted(rs, key=lambda r: r[x_axis])
            ax.errorbar([r[x_axis] for r in rs], [r[metric] for r in rs], yerr=_errors(rs, metric), marker="o",
                        capsize=4, label=label)
        for i, r in enumerate(r for r in rows if not r["bridged"]):
            ax.axhline(r[metric], ls="--", color=f"C{i}", lw=1, label=f"{r['arm']} (no bridge)")
        ax.set(xlabel=x_axis)
        ax.legend(fontsize=8)
    else:
        ax.bar(range(len(rows)), [r[metric] for r in rows], yerr=_errors(rows, metric), capsize=4,
               color=["C0" if r["bridged"] else "C7" for r in rows])
        ax.set_xticks(range(len(rows)), [r["arm"] for r in rows], rotation=20, fontsize=8, ha="right")
    n = max((r["seeds"] for r in rows), default=1)
    ax.set(ylabel="test top-1 (final epoch)" if metric == "test acc" else metric, title=f"{title}\n{n} seed(s); bars: 95% interval over seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _coords(rows: list[dict]) -> set[str]:
    """The coordinate columns (sweep axes) of the rows: keys with a dot, e.g. labels.ratio."""
    return {k for r in rows for k in r if "." in k}
