"""``lm2v demo``: the method end to end on the embedded default, offline.

MiniLM (from the PyPI package) pretrained vs the same architecture from scratch, each with and
without random-label bridge training (stage 1), then stage 2 on the real labels; one comparison
table, a plot of the curves, and every run directory under ``--out`` for ``lm2v analyze``.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

from ..config import load_config, save_config
from ..data import DataConfig
from ..models import ModelConfig
from ..train import read_summary, run_stage
from ..train.config import LabelConfig, OptimConfig, ProbeConfig, RunConfig, RuntimeConfig
from ..models.freeze import TrainableSpec
from ..train.recipe import probe_of
from ..train.rundir import open_run
from ..utils.io import atomic_write_text
from ..utils.tables import markdown_table
from .report import plot_demo


@dataclass
class DemoConfig:
    """The demo's settings: small enough for 2 CPU cores in a few minutes."""

    model: ModelConfig = field(default_factory=lambda: ModelConfig(name="minilm", image_size=32, patch_size=8))
    data: DataConfig = field(default_factory=lambda: DataConfig(max_train_per_class=200))
    bridge_epochs: int = 4
    bridge_blocks: str = "first:2"  # partial bridge training, the paper's cheap setting
    label_ratio: float = 1.0
    batch_size: int = 64
    blr: float = 1e-3
    probe: ProbeConfig = field(default_factory=lambda: ProbeConfig(mode="linear"))
    probe_epochs: int = 4  # epochs of stage 2 when probe.mode is reinit or finetune
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)


def register(sub) -> None:
    p = sub.add_parser("demo", help="pretrained vs scratch, with and without bridge training, on the embedded default")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. bridge_epochs=2 data.max_train_per_class=50")
    p.add_argument("--config", help="YAML file for the demo config")
    p.add_argument("--out", default="runs/demo", help="output directory (default runs/demo)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing demo directory")
    p.set_defaults(func=run)


def stage_configs(d: DemoConfig, pretrained: bool, bridged: bool, bridge_dir: Path) -> tuple[RunConfig | None, RunConfig]:
    """The (bridge, probe) configs of one cell: one stage-1 config, stage 2 derived from it."""
    model = ModelConfig(**{**vars(d.model), "pretrained": pretrained})
    cell = RunConfig(stage="bridge", model=model, data=d.data, labels=LabelConfig(ratio=d.label_ratio),
                     trainable=TrainableSpec(blocks=d.bridge_blocks), probe=d.probe,
                     optim=OptimConfig(epochs=d.bridge_epochs, batch_size=d.batch_size, blr=d.blr), runtime=d.runtime)
    probe = probe_of(cell, str(bridge_dir) if bridged else None, epochs=d.probe_epochs)
    return (cell if bridged else None), probe


def run(args: argparse.Namespace) -> int:
    d = load_config(DemoConfig, args.config, args.overrides)
    with open_run(args.out, overwrite=args.overwrite, kind="demo") as out:
        save_config(d, out / "config.yaml")
        return run_demo(d, out)


def run_demo(d: DemoConfig, out: Path) -> int:
    """The four cells, the table and the plot, into ``out``."""
    rows = []
    for pretrained in (True, False):
        init = "pretrained" if pretrained else "scratch"
        for bridged in (False, True):
            name = f"{init}_{'bridged' if bridged else 'direct'}"
            bridge, probe = stage_configs(d, pretrained, bridged, out / f"{init}_bridge")
            if bridge is not None:
                run_stage(bridge, out / f"{init}_bridge")
            run_stage(probe, out / name)
            rows.append(_row(name, init, bridged, out, d))
    table = markdown_table(rows)
    print("\n" + table)
    atomic_write_text(out / "results.md", table + "\n")
    plot_demo(out, rows)
    print(f"\nplot: {out / 'curves.png'}\nruns: {out}/*  (lm2v analyze {out}/pretrained_bridge)")
    return 0


def _row(name: str, init: str, bridged: bool, out: Path, d: DemoConfig) -> dict:
    s = read_summary(out / name)
    row = {"run": name, "init": init, "bridge": f"{d.bridge_epochs} ep, r={d.label_ratio}, {d.bridge_blocks}" if bridged else "-",
           "stage 2": d.probe.mode, "val acc": s["val_acc"], "test acc": s["test_acc"]}
    if bridged:
        b = read_summary(out / f"{init}_bridge")
        row["bridge train acc"] = b["train_acc"]
    return row
