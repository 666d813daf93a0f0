"""Experiments: arms x seeds run through the stages, answered with their uncertainty.

``design`` (what an experiment is), ``sweep`` (arms from sweep axes), ``presets`` (the paper's
experiments and scales), ``runner`` (run or resume every run), ``results`` (intervals, paired
comparisons, claims, summary files), ``plots`` (the figure). Used by ``lm2v grid``, ``lm2v demo``
and ``lm2v reproduce``.
"""
from __future__ import annotations

from pathlib import Path

from .design import Arm, Claim, Comparison, Experiment, Stage2, parse_seeds
from .results import collect, write_summary
from .runner import run_experiment

__all__ = ["Arm", "Claim", "Comparison", "Experiment", "Stage2", "parse_seeds", "run_and_summarize"]


def run_and_summarize(exp: Experiment, out: Path, title: str, stage2=None, summarize=None,
                      **summary_options) -> str | None:
    """Run (or continue) every run of ``exp`` under ``out`` and write its summary; returns the summary
    text, or None when a run stopped early (``runtime.stop_after``: run the same command again).

    ``stage2`` / ``summarize(exp, out, title)``: another second stage and its summary (the dense
    presets, :mod:`lm2vision.experiments.dense`); by default the probe and :func:`write_summary`."""
    stopped = run_experiment(exp, out, stage2)
    if stopped is not None:
        print(f"stopped in {stopped} (runtime.stop_after); run the same command again to continue")
        return None
    if summarize is not None:
        return summarize(exp, out, title)
    return write_summary(out, exp, collect(exp, out), title=title, **summary_options)
