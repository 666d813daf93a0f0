"""``lm2v bridge | probe | train``: one stage each, configured by YAML + ``key=value`` overrides."""
from __future__ import annotations

import argparse
import os

from ..train import run_stage
from ..train.config import RunConfig
from ..train.recipe import stage_config
from ..train.rundir import check_target, resumed_config

HELP = {
    "bridge": "stage 1: train on images with random labels (partial training via trainable.blocks)",
    "probe": "stage 2: real labels on a (bridged) backbone: probe.mode=reinit|linear|finetune",
    "train": "supervised baseline with the correct labels, from pretrained or scratch",
}


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments every training command shares."""
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. model.pretrained=false")
    p.add_argument("--config", help="YAML config file (applied before the overrides)")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--init", help="start from this run directory's final weights (e.g. a bridge run)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    g.add_argument("--overwrite", action="store_true", help="replace an existing run in --out")


def register(sub) -> None:
    for stage, text in HELP.items():
        p = sub.add_parser(stage, help=text, description=text)
        add_run_arguments(p)
        p.set_defaults(func=run, stage=stage)


def run(args: argparse.Namespace) -> int:
    """Run (or resume) one stage; prints its final-epoch test accuracy."""
    if args.resume:  # the run's own config, with what the user gives on top (only runtime.* may differ)
        extra = [f"init={args.init}"] if args.init else []
        cfg = resumed_config(check_target(args.out), RunConfig, args.config, list(args.overrides) + extra)
    else:
        cfg = stage_config(args.stage, args.config, args.overrides, args.init)
    summary = run_stage(cfg, args.out, resume=args.resume, overwrite=args.overwrite)
    if os.environ.get("RANK", "0") != "0" or summary.get("stopped"):
        return 0
    if summary.get("finished_before"):
        print(f"{args.out} is already finished (test acc {summary['test_acc']:.4f}); nothing to resume")
    else:
        print(f"{args.stage} done: test acc {summary['test_acc']:.4f} (final epoch) -> {args.out}")
    return 0
