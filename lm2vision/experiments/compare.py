"""``lm2v compare RUN...`` with uncertainty: runs that differ only in their seed form one group; each
group's test accuracy comes with its interval over seeds, and each later group is compared with the
first, paired by seed and test image, with a verdict line."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from ..config import to_dict
from ..errors import Lm2vError, Lm2vWarning
from ..train.rundir import read_predictions, read_run_config, read_summary
from .design import SEED_KEYS, Arm, Comparison
from .results import ArmResult, arm_rows, comparison_rows, paired_effects


def _without_seeds(cfg) -> dict:
    """A run's config without what a seed changes (and without how it ran, ``runtime.*``), keeping
    only whether it started from a bridge: runs equal in this are seeds of one arm."""
    d = to_dict(cfg)
    d.pop("runtime", None)
    for key in SEED_KEYS:
        section, _, name = key.partition(".")
        if isinstance(d.get(section), dict):
            d[section].pop(name, None)
    d["init"] = bool(d.get("init"))
    return d


def group_runs(runs: list[str | Path]) -> list[tuple[str, list[Path]]]:
    """Runs grouped by config up to the seed, in first-seen order: [(label, [run, ...]), ...]."""
    groups: list[tuple[dict, str, list[Path]]] = []
    for run in map(Path, runs):
        key = _without_seeds(read_run_config(run))
        match = next((m for k, _, m in groups if k == key), None)
        if match is not None:
            match.append(run)
        else:
            groups.append((key, str(run), [run]))
    return [(label if len(m) == 1 else f"{label} (+{len(m) - 1} seeds)", m) for _, label, m in groups]


def group_result(label: str, runs: list[Path]) -> ArmResult:
    """One group's runs as an arm, rows ordered by seed; two runs with one seed are an error."""
    cfgs = [read_run_config(r) for r in runs]
    seeds = [c.runtime.seed for c in cfgs]
    if len(set(seeds)) != len(seeds):
        raise Lm2vError(f"{label}: two runs have the same config and seed ({runs[0]}, ...): give each seed once")
    order = sorted(range(len(runs)), key=lambda i: seeds[i])
    rows, labels = [], None
    for i in order:
        pred, label_t = read_predictions(runs[i])
        if labels is not None and not torch.equal(labels, label_t):
            raise Lm2vError(f"{runs[i]} was tested on other images than {runs[order[0]]}, yet differs only in its seed")
        labels = label_t
        rows.append((pred == label_t).numpy().astype(np.float64))
    arm = Arm(label, {}, cfgs[0], bridged=bool(cfgs[0].init))
    return ArmResult(arm, [read_summary(runs[i]) for i in order], [None] * len(runs), np.stack(rows), labels,
                     [seeds[i] for i in order])


def compare_with_intervals(runs: list[str | Path], n_boot: int = 2000,
                           level: float = 0.95) -> tuple[list[dict], list[dict]]:
    """(one row per group with its interval over seeds, one paired comparison per later group vs
    the first). A group run with other seeds than the first cannot be paired: skipped, with a warning."""
    groups = group_runs(runs)
    results = {label: group_result(label, members) for label, members in groups}
    first = groups[0][0]
    comparisons = []
    for label, _ in groups[1:]:
        if results[label].seeds != results[first].seeds:
            warnings.warn(f"{label} left out of the paired comparisons: its seeds {results[label].seeds} are not "
                          f"those of {first} {results[first].seeds}", Lm2vWarning)
            continue
        comparisons.append(Comparison(f"{label} instead of {first}", label, first))
    return arm_rows(results, level), comparison_rows(comparisons, paired_effects(results, n_boot, level))
