"""Argument-parsing helpers shared by the sub-commands."""
from __future__ import annotations

import argparse

from ..config import parse_override
from ..errors import Lm2vError
from ..experiments.launch import LAUNCHERS, Launch


class TrailingOverrides(argparse.ArgumentParser):
    """Lets ``key=value`` overrides also follow options: with a positional (RUN_DIR, EXPERIMENT) before
    them, plain argparse binds the (empty) override list there and rejects later ``key=value`` words."""

    def parse_known_args(self, args=None, namespace=None):
        ns, rest = super().parse_known_args(args, namespace)
        extra = [a for a in rest if "=" in a and not a.startswith("-")]
        ns.overrides = list(getattr(ns, "overrides", None) or []) + extra
        return ns, [a for a in rest if a not in extra]


def allow_trailing_overrides(parser: argparse.ArgumentParser) -> None:
    """Give ``parser`` (a sub-command's, already built) the :class:`TrailingOverrides` behaviour."""
    parser.__class__ = type("TrailingOverrides" + type(parser).__name__, (TrailingOverrides, type(parser)), {})


def add_launch_args(parser: argparse.ArgumentParser) -> None:
    """``--launcher``, ``--jobs``, ``--gpus-per-cell``, ``--slurm``: how an experiment's cells run
    (:mod:`lm2vision.experiments.launch`), never part of what it is."""
    g = parser.add_argument_group("launching (how the cells run; running again may change it)")
    g.add_argument("--launcher", default="serial", choices=LAUNCHERS,
                   help="serial: one cell after another here; local: --jobs cells at once as subprocesses; slurm: "
                   "one submitit job per cell, requeued on preemption; submitit-local: submitit on this machine")
    g.add_argument("--jobs", type=int, metavar="N",
                   help="local: cells at once (default: the visible GPUs, 1 on CPU)")
    g.add_argument("--gpus-per-cell", type=int, default=1, metavar="K",
                   help="GPUs of each cell, run under torchrun with K processes (slurm: gpus_per_node and tasks_per_node)")
    g.add_argument("--slurm", action="append", default=[], metavar="key=value",
                   help="a submitit executor parameter, e.g. slurm_partition=gpu timeout_min=600 (repeatable)")


def launch_of(args: argparse.Namespace):
    """The :class:`~lm2vision.experiments.launch.Launch` of the parsed ``args`` (checked: submitit present)."""
    bad = [s for s in args.slurm if "=" not in s]
    if bad:
        raise Lm2vError(f"--slurm must look like key=value (e.g. slurm_partition=gpu), got {bad[0]!r}")
    return Launch(args.launcher, args.jobs, args.gpus_per_cell, dict(parse_override(s) for s in args.slurm))
