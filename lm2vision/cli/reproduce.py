"""``lm2v reproduce EXPERIMENT``: one of the paper's experiments, run end to end, answered with intervals.

    lm2v reproduce label-ratio --scale smoke --seeds 0,1,2
    lm2v reproduce partial --scale small --data ../shared/data/cifar10_jpg.tar.gz --out runs/partial

Every cell runs stage 1 and stage 2 (the paper's ``reinit``) once per seed, beside one unbridged
("direct") arm per initialisation. Kill it and run the same command again: finished runs are kept,
an unfinished one continues from its last checkpoint. It ends with the per-arm table (final-epoch
test accuracy, mean, std and 95% interval over seeds), the paper-style table, a figure with error
bars, the paired comparisons with their verdicts, and the claims table: each of the paper's claims
with its measured effect, interval and supported / contradicted / inconclusive.

``--launcher local --jobs N``, ``--launcher slurm --slurm key=value``: the cells (arm x seed) run in
parallel (see ``lm2v grid``); running again may use another launcher.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from ..data.config import recipe_overrides
from ..errors import Lm2vError
from ..experiments import Experiment, Stage2, parse_seeds, run_and_summarize
from ..experiments.design import check_seed_axes
from ..experiments.launch import CellsFailed, Launch
from ..experiments.presets import PRESETS, SCALES, claims_of, preset, scale
from ..experiments.runner import check_configs
from ..experiments.sweep import sweep_arms, sweep_comparisons
from ..train.recipe import stage_config
from ..train.rundir import open_run
from ..utils.io import atomic_write_text
from .args import add_launch_args, allow_trailing_overrides, launch_of


def register(sub) -> None:
    p = sub.add_parser("reproduce", help="one of the paper's experiments x seeds, ending with its claims table")
    p.add_argument("experiment", choices=list(PRESETS), help="; ".join(f"{k}: {v.description}" for k, v in PRESETS.items()))
    p.add_argument("overrides", nargs="*", metavar="key=value", help="applied to every run, e.g. optim.blr=5e-4")
    p.add_argument("--scale", default="smoke", choices=list(SCALES),
                   help="; ".join(f"{k}: {v.note}" for k, v in SCALES.items()))
    p.add_argument("--model", help="model.name (default: the embedded MiniLM)")
    p.add_argument("--data", help="data.dataset: bundled, cifar10, cifar100, or a folder / archive")
    p.add_argument("--seeds", help="comma list (default: the scale's, 0,1,2)")
    p.add_argument("--recipe", help="a named augmentation recipe (cifar, imagenet, none)")
    p.add_argument("--margin", type=float, default=1.0, help="'match' claims: the effect must lie within +-MARGIN "
                   "points (default 1)")
    p.add_argument("--out", help="output directory (default runs/reproduce/EXPERIMENT-SCALE)")
    p.add_argument("--overwrite", action="store_true", help="start again in an existing directory")
    add_launch_args(p)
    p.set_defaults(func=run)
    allow_trailing_overrides(p)


def record_of(args: argparse.Namespace, seeds: list[int]) -> dict:
    """What defines the experiment (``config.yaml``); running again continues only if it matches.
    The launcher options are how it runs, not what it is: they are not part of it."""
    return {"experiment": args.experiment, "scale": args.scale, "model": args.model, "data": args.data,
            "seeds": seeds, "recipe": args.recipe, "margin": args.margin,
            "overrides": [o for o in args.overrides if not o.startswith("runtime.")]}


def build(args: argparse.Namespace, seeds: list[int]) -> Experiment:
    """The preset at the scale, with --model / --data / the overrides, as an experiment."""
    p, sc = preset(args.experiment), scale(args.scale)
    presets = p.overrides + sc.overrides + recipe_overrides(args.recipe)
    dense = p.task is not None  # --data is then the dense set's root; stage 1 reads the bundled images
    mine = ([f"model.name={args.model}"] if args.model else []) + \
        ([f"data.dataset={args.data}"] if args.data and not dense else [])
    check_seed_axes([o.split("=")[0] for o in args.overrides], seeds)
    clash = [o for o in args.overrides if o.split("=")[0] in p.axes]
    if clash:
        raise Lm2vError(f"{clash[0]} sets an axis of {args.experiment} ({', '.join(p.axes)}); use lm2v grid to sweep it yourself")
    cell = lambda point: stage_config("bridge", None, mine + list(args.overrides) + [f"{k}={v}" for k, v in point.items()],
                                      presets=presets)
    arms = sweep_arms(p.axes, cell)
    comparisons = sweep_comparisons(p.axes, arms)
    return Experiment(arms, seeds, Stage2("reinit", sc.stage2_epochs), comparisons, claims_of(p, args.margin / 100))


def run(args: argparse.Namespace) -> int:
    seeds = parse_seeds(args.seeds or scale(args.scale).seeds)
    out = Path(args.out or f"runs/reproduce/{args.experiment}-{args.scale}")
    record = record_of(args, seeds)
    exp, launch = build(args, seeds), launch_of(args)
    check_configs(exp, out)
    again = (out / "config.yaml").is_file() and not args.overwrite
    if again:
        _check_same(out, record)
    with open_run(out, resume=again, overwrite=args.overwrite, kind="reproduce"):
        if not again:
            atomic_write_text(out / "config.yaml", yaml.safe_dump(record, sort_keys=False))
        p = preset(args.experiment)
        title = f"lm2v reproduce {args.experiment} --scale {args.scale}"
        try:
            if p.task:
                text = _run_dense(args, exp, out, p.task, title, launch)
            else:
                text = run_and_summarize(exp, out, title=title, launch=launch, paper_table=p.paper_table,
                                         x_axis=p.x_axis)
        except CellsFailed as e:
            print(e, file=sys.stderr)
            return 1
    if text is not None:
        print("\n" + text + f"\n\nsummary: {out / 'summary.md'}  figure: {out / 'results.png'}")
    return 0


def _run_dense(args: argparse.Namespace, exp: Experiment, out: Path, task: str, title: str,
               launch: Launch) -> str | None:
    """A dense preset: stage 1 on the classification data, then the dense task on the same dense set
    for every arm and seed (``--data`` is the dense set's root; offline, a synthetic set in OUT/data)."""
    from ..experiments.dense import dense_stage, summarize_dense, write_synthetic
    from ..experiments.presets import DENSE_SCALES

    root = args.data or write_synthetic(out, exp.arms[0].cell.model.image_size, 64)
    return run_and_summarize(exp, out, title, stage2=dense_stage(task, root, DENSE_SCALES[args.scale]),
                             summarize=lambda e, o, t: summarize_dense(e, o, task, t), launch=launch)


def _check_same(out: Path, record: dict) -> None:
    saved = yaml.safe_load((out / "config.yaml").read_text()) or {}
    changed = [k for k in record if saved.get(k) != record[k]]
    if changed:
        raise Lm2vError(f"{out} holds this experiment with other {', '.join(changed)}: run the same command to "
                        "continue it, or use --overwrite / another --out")
