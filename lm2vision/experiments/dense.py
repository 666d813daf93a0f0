"""The dense comparisons (``lm2v reproduce dense-segment | dense-detect``): each arm's stage 1 as in
every experiment, then a Segmenter / DETR run on its backbone instead of a classification probe.

Every seed of every arm trains on the same dense data (a synthetic set written once under
``OUT/data`` offline, or ``--data`` with a real set), so arms are paired by seed. Dense metrics are
not per-image accuracies, so the interval of a comparison is the t-interval of the per-seed
differences (paired over seeds only); with few seeds it is wide, and says so.
"""
from __future__ import annotations

from pathlib import Path

from ..config import load_config, to_dict
from ..stats import Interval, seed_summary
from ..train.rundir import read_summary
from ..utils.io import atomic_write_json, atomic_write_text
from .design import Experiment, seed_dir, seeded
from .plots import plot_arms
from .results import claim_rows, comparison_rows, summary_markdown

# task -> (metric in summary["final"], its name, the layout of the synthetic set)
TASKS = {
    "segment": ("miou", "validation mIoU", ["data.layout=folder"]),
    "detect": ("map", "validation box mAP", ["data.layout=coco", "data.images_dir=images/{split}",
                                             "data.ann_file=annotations/instances_{split}.json"]),
}


def dense_config(task: str, cell, init: str | None, root: str | None, overrides: list[str]):
    """The dense run of one arm and seed: the bridge run's backbone (``init``) or the cell's model,
    the cell's seed, the data at ``root`` (None: ``overrides`` give it)."""
    from ..dense.config import DetectConfig, SegmentConfig

    cls = SegmentConfig if task == "segment" else DetectConfig
    base = {"init": init} if init else {"model": to_dict(cell.model)}
    data = TASKS[task][2] + ([f"data.root={root}"] if root else [])
    rt = cell.runtime
    same = [f"runtime.seed={rt.seed}", f"runtime.progress={str(rt.progress).lower()}",
            f"runtime.tensorboard={str(rt.tensorboard).lower()}", f"runtime.device={rt.device}"]
    return load_config(cls, None, data + same + list(overrides), base=base)


def write_synthetic(out: Path, image_size: int, n: int) -> str:
    """The synthetic dense set every run of the experiment shares (written once, seed 0; its layout
    serves both tasks)."""
    from ..dense.synthetic import make_synthetic_dense

    root = out / "data"
    if not (root / "classes.txt").is_file():
        make_synthetic_dense(root, n, max(n // 4, 4), image_size, 0)
    return str(root)


def dense_stage(task: str, root: str, overrides: list[str]):
    """The second stage of every arm as ``task`` on the data at ``root``, in ``WHERE/TASK``, for
    :func:`lm2vision.experiments.runner.run_experiment`."""
    from ..dense.engine import run_dense

    def stage2(arm, seed, where: Path):
        init = str(where / "bridge") if arm.bridged else None
        return dense_config(task, seeded(arm.cell, seed), init, root, overrides), where / task, run_dense
    return stage2


def seed_interval(a: list[float], b: list[float], level: float = 0.95) -> Interval:
    """Arm a minus arm b, paired by seed: the mean difference and its t-interval over seeds."""
    s = seed_summary([x - y for x, y in zip(a, b)], level)
    return Interval(s["mean"], s["ci_low"], s["ci_high"], level, n_seeds=s["n"])


def summarize_dense(exp: Experiment, out: Path, task: str, title: str, level: float = 0.95) -> str:
    """Per-arm metric over seeds, paired comparisons and claims: ``summary.json`` / ``summary.md``."""
    key, name, _ = TASKS[task]
    values = {a.name: [read_summary(seed_dir(out, a, s) / task)["final"][key] for s in exp.seed_list()] for a in exp.arms}
    arms = []
    for a in exp.arms:
        s = seed_summary(values[a.name], level)
        arms.append({"arm": a.name, **a.point, "bridged": a.bridged, "seeds": s["n"], name: s["mean"], "std": s["std"],
                     "ci low": s["ci_low"], "ci high": s["ci_high"]})
    effect = lambda c: seed_interval(values[c.a], values[c.b], level)  # noqa: E731
    comps, claims = comparison_rows(exp.comparisons, effect, metric=name), claim_rows(exp.claims, effect)
    atomic_write_json(out / "summary.json", {"level": level, "metric": name, "arms": arms, "comparisons": comps,
                                             "claims": claims, "per_seed": values})
    text = summary_markdown(title, f"Final {name} over seeds (mean, std, {level:.0%} t-interval):", arms, comps,
                            claims, f"Paired by seed ({level:.0%} t-interval of the per-seed differences):")
    atomic_write_text(out / "summary.md", text + "\n")
    plot_arms(out / "results.png", arms, title=title, metric=name)
    return text
