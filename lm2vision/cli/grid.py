"""``lm2v grid``: a sweep of bridge settings, each followed by stage 2, run in sequence.

    lm2v grid --out runs/grid --sweep labels.ratio=[0,0.15,0.3,1.0] --sweep model.pretrained=[true,false] \\
        --sweep trainable.blocks=[all,first:2] optim.epochs=50 --probe-mode linear

Every cell is a bridge run (``NAME/bridge``) and a probe run (``NAME/probe``); one summary table
(``summary.md``, ``summary.json``) closes the sweep. A finished cell is skipped on a re-run with
``--resume``, so a long sweep can be continued.
"""
from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import yaml
from omegaconf import OmegaConf

from ..errors import Lm2vError
from ..train import read_summary, run_stage
from ..train.rundir import prepare_run_dir
from ..utils.io import atomic_write_json, atomic_write_text
from .report import comparison_table
from .stages import build_config


def parse_sweep(items: list[str]) -> dict[str, list]:
    """``key=[v1,v2]`` (OmegaConf list syntax) -> {key: [v1, v2]}."""
    axes: dict[str, list] = {}
    for item in items:
        key, sep, _ = item.partition("=")
        if not sep:
            raise Lm2vError(f"--sweep must look like key=[v1,v2], got {item!r}")
        values = OmegaConf.to_container(OmegaConf.from_dotlist([item]))
        for part in key.split("."):
            values = values[part]
        if not isinstance(values, list) or not values:
            raise Lm2vError(f"--sweep {key} needs a non-empty list like {key}=[a,b]")
        axes[key] = values
    return axes


def cell_name(point: dict) -> str:
    """A directory name for one grid point, e.g. ratio1.0_pretrainedTrue_blocksfirst:2 -> safe chars."""
    text = "_".join(f"{k.split('.')[-1]}{v}" for k, v in point.items())
    return "".join(c if c.isalnum() or c in "._-" else "-" for c in text)


def register(sub) -> None:
    p = sub.add_parser("grid", help="sweep bridge settings (label ratio, init, trainable blocks), then stage 2 each")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="applied to every bridge run")
    p.add_argument("--sweep", action="append", default=[], metavar="key=[a,b]", help="an axis of the grid")
    p.add_argument("--config", help="YAML file for the bridge runs")
    p.add_argument("--probe-mode", default="linear", choices=["reinit", "linear", "finetune"])
    p.add_argument("--probe-epochs", type=int, default=None, help="stage-2 epochs (default: the bridge's)")
    p.add_argument("--out", required=True)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--resume", action="store_true", help="skip finished cells of an existing grid")
    g.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    axes = parse_sweep(args.sweep)
    if not axes:
        raise Lm2vError("give at least one --sweep axis, e.g. --sweep labels.ratio=[0,1.0]")
    out = Path(args.out)
    if not args.resume:
        prepare_run_dir(out, overwrite=args.overwrite)
        atomic_write_text(out / "config.yaml", yaml.safe_dump({"axes": axes, "overrides": args.overrides}))
    rows = [_run_cell(args, out, dict(zip(axes, values))) for values in itertools.product(*axes.values())]
    table = comparison_table(rows)
    atomic_write_text(out / "summary.md", table + "\n")
    atomic_write_json(out / "summary.json", rows)
    print("\n" + table)
    return 0


def _run_cell(args: argparse.Namespace, out: Path, point: dict) -> dict:
    cell = out / cell_name(point)
    sweep = [f"{k}={v}" for k, v in point.items()]
    bridge_cfg = build_config("bridge", args.config, list(args.overrides) + sweep)
    if not (cell / "bridge" / "summary.json").is_file():
        run_stage(bridge_cfg, cell / "bridge", overwrite=args.resume)
    if not (cell / "probe" / "summary.json").is_file():
        probe_over = [f"probe.mode={args.probe_mode}", f"optim.epochs={args.probe_epochs or bridge_cfg.optim.epochs}",
                      f"optim.batch_size={bridge_cfg.optim.batch_size}", f"runtime.seed={bridge_cfg.runtime.seed}"]
        probe_over += [o for o in args.overrides if o.startswith(("data.", "runtime."))]
        run_stage(build_config("probe", None, probe_over, init=str(cell / "bridge")), cell / "probe", overwrite=args.resume)
    b, p = read_summary(cell / "bridge"), read_summary(cell / "probe")
    return {**point, "bridge train acc": b["train_acc"], "probe val acc": p["val_acc"], "probe test acc": p["test_acc"]}
