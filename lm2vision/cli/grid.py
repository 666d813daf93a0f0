"""``lm2v grid``: a sweep of bridge settings, each followed by stage 2, beside its unbridged twin.

    lm2v grid --out runs/grid --sweep labels.ratio=[0.15,1.0] --sweep model.pretrained=[true,false] \\
        --sweep trainable.blocks=[all,first:2] optim.epochs=50 --probe-mode linear

Every cell is **one** config (defaults, ``--config``, the overrides, the cell's sweep values) from
which both stages are derived (:func:`lm2vision.train.recipe.probe_of`): the probe runs on the
cell's data, optimiser settings, model and seed, unless ``--probe-mode``, ``--probe-epochs`` or
``--probe key=value`` say otherwise. Each cell is a bridge run (``NAME/bridge``) and a probe run
(``NAME/probe``). For every initialisation (the cell's values of axes that are not stage-1-only,
i.e. not ``labels.*``, ``trainable.*``, ``phase.*``) one unbridged probe (``direct_.../probe``) runs
on the same config, so the table shows bridged vs direct side by side. ``--resume`` skips finished
runs and continues unfinished ones from their last checkpoint.
"""
from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import yaml

from ..config import parse_override
from ..errors import Lm2vError
from ..train import RunConfig, read_run_config, read_summary, run_stage
from ..train.recipe import probe_of, stage_config
from ..train.checkpoint import has_checkpoint
from ..train.rundir import is_finished, is_run_dir, open_run, result_changes
from ..utils.io import atomic_write_json, atomic_write_text
from ..utils.tables import markdown_table

# sweep axes that only change stage 1: cells that differ only in these share one direct probe
BRIDGE_ONLY = ("labels.", "trainable.", "phase.")


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


def cell_name(point: dict) -> str:
    """A directory name for one grid point, e.g. ratio1.0_pretrainedTrue_blocksfirst:2 -> safe chars."""
    text = "_".join(f"{k.split('.')[-1]}{v}" for k, v in point.items())
    return "".join(c if c.isalnum() or c in "._-" else "-" for c in text)


def direct_point(point: dict) -> dict:
    """The initialisation of a cell: its values of the axes that also shape an unbridged probe."""
    return {k: v for k, v in point.items() if not k.startswith(BRIDGE_ONLY)}


def register(sub) -> None:
    p = sub.add_parser("grid", help="sweep bridge settings (label ratio, init, trainable blocks), then stage 2 each")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="applied to every cell (both stages)")
    p.add_argument("--sweep", action="append", default=[], metavar="key=[a,b]", help="an axis of the grid")
    p.add_argument("--config", help="YAML file for every cell (both stages)")
    p.add_argument("--probe-mode", default="linear", choices=["reinit", "linear", "finetune"])
    p.add_argument("--probe-epochs", type=int, default=None, help="stage-2 epochs (default: the cell's optim.epochs)")
    p.add_argument("--probe", action="append", default=[], metavar="key=value",
                   help="an override for stage 2 only, e.g. --probe optim.blr=1e-3 (repeatable)")
    p.add_argument("--no-direct", action="store_true", help="skip the unbridged probe of each initialisation")
    p.add_argument("--out", required=True)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--resume", action="store_true", help="skip finished runs, continue unfinished ones")
    g.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=run)


def grid_record(args: argparse.Namespace, axes: dict) -> dict:
    """What defines a grid (saved as ``config.yaml``; ``--resume`` must match it)."""
    file = yaml.safe_load(Path(args.config).read_text()) if args.config else None
    return {"axes": axes, "overrides": list(args.overrides), "config": file, "probe_mode": args.probe_mode,
            "probe_epochs": args.probe_epochs, "probe": list(args.probe), "direct": not args.no_direct}


def run(args: argparse.Namespace) -> int:
    axes = parse_sweep(args.sweep)
    if not axes:
        raise Lm2vError("give at least one --sweep axis, e.g. --sweep labels.ratio=[0,1.0]")
    out, record = Path(args.out), grid_record(args, axes)
    points = [dict(zip(axes, values)) for values in itertools.product(*axes.values())]
    cells = {cell_name(p): cell_config(args, p) for p in points}  # every config checked before any run
    if args.resume:
        _check_resumable(out, record)
    with open_run(out, resume=args.resume, overwrite=args.overwrite, kind="grid"):
        if not args.resume:
            atomic_write_text(out / "config.yaml", yaml.safe_dump(record, sort_keys=False))
        return run_grid(args, out, points, cells)


def run_grid(args: argparse.Namespace, out: Path, points: list[dict], cells: dict[str, RunConfig]) -> int:
    """Every cell in turn (finished ones skipped, unfinished ones continued), then the table."""
    direct: dict[str, dict] = {}
    rows = []
    for point in points:
        name = cell_name(point)
        result = run_cell(args, out / name, cells[name])
        if result is None:
            return _stopped(out / name)
        row = {**point, **result}
        if not args.no_direct:
            dname = "direct_" + (cell_name(direct_point(point)) or "all")
            if dname not in direct:
                direct[dname] = run_direct(args, out / dname, cells[name])
            if direct[dname] is None:
                return _stopped(out / dname)
            row["direct test acc"] = direct[dname]["test_acc"]
            row["bridged - direct"] = row["probe test acc"] - row["direct test acc"]
        rows.append(row)
    table = markdown_table(rows)
    atomic_write_text(out / "summary.md", table + "\n")
    atomic_write_json(out / "summary.json", rows)
    print("\n" + table)
    return 0


def cell_config(args: argparse.Namespace, point: dict) -> RunConfig:
    """The one config of a cell: defaults, --config, the overrides, then the cell's sweep values."""
    return stage_config("bridge", args.config, list(args.overrides) + [f"{k}={v}" for k, v in point.items()])


def stage2_config(args: argparse.Namespace, cell: RunConfig, init: str | None) -> RunConfig:
    """The cell's stage 2 (``init=None``: its unbridged twin), with the grid's probe options on top."""
    return probe_of(cell, init, mode=args.probe_mode, epochs=args.probe_epochs, overrides=args.probe)


def run_cell(args: argparse.Namespace, cell_dir: Path, cell: RunConfig) -> dict | None:
    """Bridge then probe one cell (each skipped if finished, continued if unfinished); None if a
    stage stopped early (``runtime.stop_after``)."""
    if not run_or_resume(cell, cell_dir / "bridge"):
        return None
    if not run_or_resume(stage2_config(args, cell, str(cell_dir / "bridge")), cell_dir / "probe"):
        return None
    b, p = read_summary(cell_dir / "bridge"), read_summary(cell_dir / "probe")
    return {"bridge train acc": b["train_acc"], "probe val acc": p["val_acc"], "probe test acc": p["test_acc"]}


def run_direct(args: argparse.Namespace, direct_dir: Path, cell: RunConfig) -> dict | None:
    """The unbridged probe of a cell's initialisation (None if it stopped early)."""
    if not run_or_resume(stage2_config(args, cell, None), direct_dir / "probe"):
        return None
    return read_summary(direct_dir / "probe")


def _stopped(run: Path) -> int:
    print(f"grid stopped in {run} (runtime.stop_after); continue with the same command and --resume")
    return 0


def run_or_resume(cfg: RunConfig, run: Path) -> bool:
    """Run ``cfg`` into ``run``: nothing if it finished, resume from its checkpoint if it has one,
    restart it if it stopped before its first checkpoint. A run started with another config is
    refused. True when the run is finished."""
    if is_finished(run):
        return True
    started = is_run_dir(run)
    changes = result_changes(read_run_config(run), cfg) if started else []
    if changes:
        raise Lm2vError(f"{run} was started with another config than this grid's cell ({'; '.join(changes)}): "
                        "rerun the grid with --overwrite (or another --out)")
    resume = started and has_checkpoint(run)
    summary = run_stage(cfg, run, resume=resume, overwrite=started and not resume)
    return not summary.get("stopped")


def _check_resumable(out: Path, record: dict) -> None:
    path = out / "config.yaml"
    if not path.is_file():
        raise Lm2vError(f"nothing to resume in {out}: no grid config.yaml")
    saved = yaml.safe_load(path.read_text())
    how = lambda rec: {**rec, "overrides": [o for o in rec["overrides"] if not o.startswith("runtime.")]}
    changed = [k for k in record if how(saved).get(k) != how(record)[k]]  # how it runs may change
    if changed:
        raise Lm2vError(f"--resume: this grid's {', '.join(changed)} differ from {path}; use the same "
                        "arguments, or --overwrite / another --out to start a new grid")
