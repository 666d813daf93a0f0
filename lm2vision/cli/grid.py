"""``lm2v grid``: a sweep of bridge settings, each followed by stage 2, beside its unbridged twin.

    lm2v grid --out runs/grid --sweep labels.ratio=[0.15,1.0] --sweep model.pretrained=[true,false] \\
        --sweep trainable.blocks=[all,first:2] optim.epochs=50 --probe-mode linear

Every cell is **one** config (defaults, ``--config``, the overrides, the cell's sweep values) from
which both stages are derived (:func:`lm2vision.train.recipe.probe_of`): the probe runs on the
cell's data, optimiser settings, model and seed, unless ``--probe-mode``, ``--probe-epochs`` or
``--probe key=value`` say otherwise. Each cell is a bridge run (``NAME/bridge``) and a probe run
(``NAME/probe``). For every initialisation (the cell's values of axes that are not stage-1-only,
i.e. not ``labels.*``, ``trainable.*``, ``phase.*``) one unbridged probe (``direct_.../probe``) runs
on the same config, so the table shows bridged vs direct side by side. ``--seeds 0,1,2`` runs every
cell once per seed (``CELL/seedS/{bridge,probe}``); the summary gives each cell's test accuracy with
its 95% interval over seeds and every comparison that matters (bridged vs direct, each axis value
vs the axis's first) as a paired difference with a bootstrap interval over seeds and test images
and a one-line verdict. ``--resume`` skips finished runs and continues unfinished ones from their
last checkpoint.

``--launcher local --jobs N`` runs N cells at once (one GPU each; ``--gpus-per-cell K``: K GPUs under
torchrun), ``--launcher slurm --slurm slurm_partition=gpu --slurm timeout_min=600`` one SLURM job per
cell through submitit (requeued on preemption, resuming from its checkpoints). How the cells run is
not part of the grid: ``--resume`` may use another launcher.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from ..config import parse_override
from ..data.config import recipe_overrides
from ..errors import Lm2vError
from ..experiments import Experiment, Stage2, parse_seeds, run_and_summarize
from ..experiments.design import check_seed_axes
from ..experiments.launch import CellsFailed
from ..experiments.runner import check_configs
from ..experiments.sweep import sweep_arms, sweep_comparisons
from ..train import RunConfig
from ..train.recipe import stage_config
from ..train.rundir import open_run
from ..utils.io import atomic_write_text
from .args import add_launch_args, launch_of


def parse_sweep(items: list[str]) -> dict[str, list]:
    """``key=[v1,v2]`` -> {key: [v1, v2]}, values read as the overrides are (YAML 1.2: ``off`` stays a word)."""
    axes: dict[str, list] = {}
    for item in items:
        if "=" not in item:
            raise Lm2vError(f"--sweep must look like key=[v1,v2], got {item!r}")
        key, values = parse_override(item)
        if not isinstance(values, list) or not values:
            raise Lm2vError(f"--sweep {key} needs a non-empty list like {key}=[a,b]")
        axes[key] = values
    return axes


def register(sub) -> None:
    p = sub.add_parser("grid", help="sweep bridge settings (label ratio, init, trainable blocks) x seeds, then stage 2 each")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="applied to every cell (both stages)")
    p.add_argument("--sweep", action="append", default=[], metavar="key=[a,b]", help="an axis of the grid")
    p.add_argument("--seeds", metavar="0,1,2", help="run every cell once per seed (runtime.seed, labels.seed, "
                   "model.init_seed); the test images stay the same")
    p.add_argument("--config", help="YAML file for every cell (both stages)")
    p.add_argument("--recipe", help="a named augmentation recipe (cifar, imagenet, none) before the overrides")
    p.add_argument("--probe-mode", default="linear", choices=["reinit", "linear", "finetune"])
    p.add_argument("--probe-epochs", type=int, default=None, help="stage-2 epochs (default: the cell's optim.epochs)")
    p.add_argument("--probe", action="append", default=[], metavar="key=value",
                   help="an override for stage 2 only, e.g. --probe optim.blr=1e-3 (repeatable)")
    p.add_argument("--no-direct", action="store_true", help="skip the unbridged probe of each initialisation")
    p.add_argument("--out", required=True)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--resume", action="store_true", help="skip finished runs, continue unfinished ones")
    g.add_argument("--overwrite", action="store_true")
    add_launch_args(p)
    p.set_defaults(func=run)


def grid_record(args: argparse.Namespace, axes: dict, seeds: list[int] | None) -> dict:
    """What defines a grid (saved as ``config.yaml``; ``--resume`` must match it). The launcher
    options are how it runs, not what it is: they are not part of it."""
    file = yaml.safe_load(Path(args.config).read_text()) if args.config else None
    return {"axes": axes, "seeds": seeds, "overrides": list(args.overrides), "recipe": args.recipe, "config": file,
            "probe_mode": args.probe_mode, "probe_epochs": args.probe_epochs, "probe": list(args.probe),
            "direct": not args.no_direct}


def grid_experiment(args: argparse.Namespace, axes: dict, seeds: list[int] | None) -> Experiment:
    """The grid as an experiment: its arms, seeds, stage-2 options and comparisons."""
    check_seed_axes(list(axes) + [o.split("=")[0] for o in args.overrides], seeds)
    arms = sweep_arms(axes, lambda point: cell_config(args, point), direct=not args.no_direct)
    return Experiment(arms, seeds, Stage2(args.probe_mode, args.probe_epochs, list(args.probe)),
                      sweep_comparisons(axes, arms))


def run(args: argparse.Namespace) -> int:
    axes = parse_sweep(args.sweep)
    if not axes:
        raise Lm2vError("give at least one --sweep axis, e.g. --sweep labels.ratio=[0,1.0]")
    seeds = parse_seeds(args.seeds)
    out, record = Path(args.out), grid_record(args, axes, seeds)
    exp, launch = grid_experiment(args, axes, seeds), launch_of(args)
    check_configs(exp, out)  # every config checked before any run
    if args.resume:
        _check_resumable(out, record)
    with open_run(out, resume=args.resume, overwrite=args.overwrite, kind="grid"):
        if not args.resume:
            atomic_write_text(out / "config.yaml", yaml.safe_dump(record, sort_keys=False))
        try:
            text = run_and_summarize(exp, out, title="lm2v grid", launch=launch)
        except CellsFailed as e:
            print(e, file=sys.stderr)
            return 1
    if text is not None:
        print("\n" + text)
    return 0


def cell_config(args: argparse.Namespace, point: dict) -> RunConfig:
    """The one config of a cell: defaults, --recipe, --config, the overrides, then the cell's sweep values."""
    recipe = recipe_overrides(args.recipe)
    return stage_config("bridge", args.config, list(args.overrides) + [f"{k}={v}" for k, v in point.items()],
                        presets=recipe)


def _check_resumable(out: Path, record: dict) -> None:
    path = out / "config.yaml"
    if not path.is_file():
        raise Lm2vError(f"nothing to resume in {out}: no grid config.yaml")
    saved = yaml.safe_load(path.read_text())
    how = lambda rec: {**rec, "overrides": [o for o in rec.get("overrides", []) if not o.startswith("runtime.")]}
    changed = [k for k in record if how(saved).get(k) != how(record)[k]]  # how it runs may change
    if changed:
        raise Lm2vError(f"--resume: this grid's {', '.join(changed)} differ from {path}; use the same "
                        "arguments, or --overwrite / another --out to start a new grid")
