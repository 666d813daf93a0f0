"""An experiment's answer with its uncertainty, read back from its run directories.

Per arm: the final-epoch test accuracy over seeds (mean, standard deviation, 95% t-interval). Per
comparison: the paired difference in test accuracy with a bootstrap interval over seeds and test
images (:func:`lm2vision.stats.paired_bootstrap`) and a plain-language verdict. Per claim:
supported / contradicted / inconclusive (:func:`lm2vision.stats.claim_status`). The best test
accuracy over epochs (the authors' way of reporting, present when ``runtime.test_each_epoch`` was
on) is shown beside the final-epoch figure, labelled, and never used to select anything.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..errors import Lm2vError, Lm2vWarning
from ..stats import Interval, claim_status, paired_bootstrap, seed_summary, verdict
from ..train.rundir import read_predictions, read_summary
from ..utils.io import atomic_write_json, atomic_write_text
from ..utils.tables import markdown_table
from .design import Arm, Claim, Comparison, Experiment, seed_dir

Effect = Callable[[Comparison], "Interval | None"]  # a comparison's interval, None when it cannot be made
AUTHORS_COLUMN = "best-epoch test acc (authors' reporting; not used to select)"


@dataclass
class ArmResult:
    """One arm's finished runs: per-seed summaries and the (seeds, test images) correctness matrix."""

    arm: Arm
    probe: list[dict]  # stage-2 summary.json per seed
    bridge: list[dict | None]  # stage-1 summary.json per seed (None: a direct arm)
    correct: np.ndarray  # (S, N): 1.0 where seed s classified test image i correctly
    labels: torch.Tensor  # (N,) the test labels, the same for every seed
    seeds: list | None = None  # the seed of each row (runtime.seed), when known


def collect(exp: Experiment, out: Path) -> dict[str, ArmResult]:
    """Read every arm's finished runs (in the order of ``exp.seed_list()``)."""
    results = {}
    for arm in exp.arms:
        probe, bridge, rows, labels = [], [], [], None
        for seed in exp.seed_list():
            where = seed_dir(out, arm, seed)
            probe.append(read_summary(where / "probe"))
            bridge.append(read_summary(where / "bridge") if arm.bridged else None)
            pred, label = read_predictions(where / "probe")
            if labels is not None and not torch.equal(labels, label):
                raise Lm2vError(f"{where / 'probe'} was tested on other images than seed "
                                f"{exp.seed_list()[0]} of {arm.name}: the test split must not depend on the seed")
            labels = label
            rows.append((pred == label).numpy().astype(np.float64))
        results[arm.name] = ArmResult(arm, probe, bridge, np.stack(rows), labels, exp.seed_list())
    return results


def arm_rows(results: dict[str, ArmResult], level: float = 0.95) -> list[dict]:
    """One row per arm: its coordinates, then test accuracy over seeds with its interval."""
    rows = []
    for name, r in results.items():
        acc = seed_summary([s["test_acc"] for s in r.probe], level)
        row = {"arm": name, **r.arm.point, "bridged": r.arm.bridged, "seeds": acc["n"], "test acc": acc["mean"],
               "std": acc["std"], "ci low": acc["ci_low"], "ci high": acc["ci_high"],
               "val acc": _mean(s.get("val_acc") for s in r.probe)}
        if r.arm.bridged and all(b is not None for b in r.bridge):
            row["bridge train acc"] = _mean(b.get("train_acc") for b in r.bridge)
        best = [s.get("test_acc_best_epoch") for s in r.probe]
        if all(b is not None for b in best):
            row[AUTHORS_COLUMN] = float(np.mean(best))
        rows.append(row)
    return rows


def _mean(values) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def paired_effect(results: dict[str, ArmResult], c: Comparison, n_boot: int, level: float):
    """The paired bootstrap interval of arm a minus arm b, or None (with a warning) when the two arms
    were not tested on the same images."""
    a, b = results[c.a], results[c.b]
    if a.correct.shape != b.correct.shape or not torch.equal(a.labels, b.labels):
        warnings.warn(f"comparison {c.subject!r} skipped: {c.a} and {c.b} were tested on different images", Lm2vWarning)
        return None
    return paired_bootstrap(a.correct, b.correct, n_boot=n_boot, level=level, seed=0)


def paired_effects(results: dict[str, ArmResult], n_boot: int = 2000, level: float = 0.95) -> Effect:
    """The effect of a comparison on classification arms: :func:`paired_effect`, computed once per
    pair of arms (a claim often tests a comparison the table already shows)."""
    done: dict[tuple[str, str], Interval | None] = {}

    def effect(c: Comparison) -> Interval | None:
        if (c.a, c.b) not in done:
            done[c.a, c.b] = paired_effect(results, c, n_boot, level)
        return done[c.a, c.b]

    return effect


def comparison_rows(comparisons: list[Comparison], effect: Effect, metric: str = "test accuracy") -> list[dict]:
    """One row per comparison whose ``effect`` is known: effect in points, its interval, the verdict line."""
    rows = []
    for c in comparisons:
        iv = effect(c)
        if iv is not None:
            rows.append({"comparison": c.subject, "a": c.a, "b": c.b, **points(iv),
                         "verdict": verdict(c.subject, iv, metric=metric)})
    return rows


def claim_rows(claims: list[Claim], effect: Effect) -> list[dict]:
    """One row per claim: the measured effect, its interval and supported / contradicted / inconclusive."""
    rows = []
    for claim in claims:
        iv = effect(claim.comparison)
        if iv is None:
            continue
        test = f"within +-{100 * claim.margin:.1f} points" if claim.kind == "match" else f"{claim.kind} (CI excludes 0)"
        rows.append({"claim": claim.text, "a": claim.comparison.a, "b": claim.comparison.b, "test": test,
                     **points(iv), "status": claim_status(iv, claim.kind, claim.margin)})
    return rows


def points(iv: Interval) -> dict:
    """An interval's JSON/table columns, in percentage points (``images`` when images were resampled)."""
    return {"effect (points)": 100 * iv.estimate, "ci low": 100 * iv.low, "ci high": 100 * iv.high,
            "seeds": iv.n_seeds, **({"images": iv.n_images} if iv.n_images else {})}


def summary_markdown(title: str, arms_text: str, arms: list[dict], comps: list[dict], claims: list[dict],
                     pairing: str, extra: list[str] = ()) -> str:
    """``summary.md``: the per-arm table (then ``extra`` lines), the paired comparisons with their
    verdicts, and the claims table."""
    parts = [f"# {title}", "", arms_text, "", markdown_table(arms), *extra]
    if comps:
        parts += ["", pairing, "", markdown_table([{k: v for k, v in c.items() if k != "verdict"} for c in comps]),
                  "", *[f"- {c['verdict']}" for c in comps]]
    if claims:
        parts += ["", "Claims of the paper, as this data says:", "", markdown_table(claims)]
    return "\n".join(parts)


def pivot(rows: list[dict], row_axis: str, col_axis: str) -> list[dict]:
    """The paper-style table: ``row_axis`` down, ``col_axis`` across, "mean ± std (n)" in each cell."""
    table: dict = {}
    for r in rows:
        if row_axis in r and col_axis in r:
            cell = f"{100 * r['test acc']:.1f} ± {100 * r['std']:.1f} (n={r['seeds']})"
            table.setdefault(r[row_axis], {row_axis: r[row_axis]})[f"{col_axis}={r[col_axis]}"] = cell
    return list(table.values())


def write_summary(out: Path, exp: Experiment, results: dict[str, ArmResult], *, title: str,
                  paper_table: tuple[str, str] | None = None, x_axis: str | None = None,
                  n_boot: int = 2000, level: float = 0.95) -> str:
    """``summary.json``, ``summary.md`` and ``results.png`` in ``out``; returns the text to print."""
    from .plots import plot_arms

    arms = arm_rows(results, level)
    effect = paired_effects(results, n_boot, level)
    comps, claims = comparison_rows(exp.comparisons, effect), claim_rows(exp.claims, effect)
    per_seed = {n: {"seeds": exp.seed_list(), "test_acc": [s["test_acc"] for s in r.probe]} for n, r in results.items()}
    atomic_write_json(out / "summary.json", {"level": level, "n_boot": n_boot, "arms": arms, "comparisons": comps,
                                             "claims": claims, "per_seed": per_seed})
    extra = ["", "Paper-style table (test accuracy %, mean ± std over seeds):", "",
             markdown_table(pivot(arms, *paper_table))] if paper_table else []
    text = summary_markdown(title, f"Final-epoch test accuracy over seeds (mean, std, {level:.0%} t-interval):",
                            arms, comps, claims, f"Paired comparisons (same seeds, same test images; {level:.0%} "
                            "bootstrap interval over seeds and images):", extra)
    atomic_write_text(out / "summary.md", text + "\n")
    plot_arms(out / "results.png", arms, x_axis=x_axis, title=title)
    return text
