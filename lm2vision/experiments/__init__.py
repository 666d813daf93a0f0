"""Experiments: arms x seeds run through the stages, answered with their uncertainty.

``design`` (what an experiment is), ``sweep`` (arms from sweep axes), ``presets`` (the paper's
experiments and scales), ``runner`` (run or resume every run), ``launch`` / ``cell`` (cells in
parallel: local subprocesses, torchrun, submitit and SLURM), ``results`` (intervals, paired
comparisons, claims, summary files), ``plots`` (the figure). Used by ``lm2v grid``, ``lm2v demo``
and ``lm2v reproduce``.
"""
from __future__ import annotations

from pathlib import Path

from .design import Arm, Claim, Comparison, Experiment, Stage2, parse_seeds
from .results import collect, write_summary
from .launch import Launch, run_cells
from .runner import probe_stage, run_experiment

__all__ = ["Arm", "Claim", "Comparison", "Experiment", "Launch", "Stage2", "parse_seeds", "run_and_summarize"]


def run_and_summarize(exp: Experiment, out: Path, title: str, stage2=None, summarize=None,
                      launch: Launch | None = None, **summary_options) -> str | None:
    """Run (or continue) every run of ``exp`` under ``out`` and write its summary; returns the summary
    text, or None when a run stopped early (``runtime.stop_after``: run the same command again).

    ``stage2`` / ``summarize(exp, out, title)``: another second stage and its summary (the dense
    presets, :mod:`lm2vision.experiments.dense`); by default the probe and :func:`write_summary`.
    ``launch``: how the cells run (:mod:`lm2vision.experiments.launch`; default: one after another
    in this process). Raises :class:`~lm2vision.experiments.launch.CellsFailed` when cells failed
    (the summary needs every cell: the same command again continues)."""
    if launch is None or launch.launcher == "serial":
        stopped = run_experiment(exp, out, stage2)
    else:
        stopped = ", ".join(run_cells(exp, out, stage2 or probe_stage(exp), launch)) or None
    if stopped is not None:
        print(f"stopped in {stopped} (runtime.stop_after); run the same command again to continue")
        return None
    if summarize is not None:
        return summarize(exp, out, title)
    return write_summary(out, exp, collect(exp, out), title=title, **summary_options)
