"""``lm2v demo``: the method end to end on the embedded default, offline, with its uncertainty.

MiniLM (from the PyPI package) pretrained vs the same architecture from scratch, each with and
without random-label bridge training (stage 1), then stage 2 on the real labels, for several seeds.
It ends with each arm's test accuracy over seeds (mean, std, 95% interval), a figure with error
bars, and one verdict line per comparison that matters (bridging, pretraining), each a paired
difference (same seeds, same test images) with a bootstrap interval. Every run directory stays under
``--out`` for ``lm2v analyze``.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import List

from ..config import bounds, load_config, save_config
from ..data import DataConfig
from ..experiments import Arm, Comparison, Experiment, Stage2, parse_seeds, run_and_summarize
from ..models import ModelConfig
from ..models.freeze import TrainableSpec
from ..train.config import LabelConfig, OptimConfig, ProbeConfig, RunConfig, RuntimeConfig
from ..train.rundir import open_run


@dataclass
class DemoConfig:
    """The demo's settings: small enough for 2 CPU cores in under 10 minutes, seeds included."""

    model: ModelConfig = field(default_factory=lambda: ModelConfig(name="minilm", image_size=32, patch_size=8))
    data: DataConfig = field(default_factory=lambda: DataConfig(max_train_per_class=200))
    seeds: List[int] = field(default_factory=lambda: [0, 1, 2], metadata=bounds(ge=0))
    bridge_epochs: int = 4
    bridge_blocks: str = "first:2"  # partial bridge training, the paper's cheap setting
    label_ratio: float = 1.0
    batch_size: int = 64
    blr: float = 1e-3
    probe: ProbeConfig = field(default_factory=lambda: ProbeConfig(mode="linear"))
    probe_epochs: int = 4  # epochs of stage 2 when probe.mode is reinit or finetune
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)


def register(sub) -> None:
    p = sub.add_parser("demo", help="pretrained vs scratch, with and without bridge training, x seeds, with verdicts")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. bridge_epochs=2 seeds=[0,1] data.max_train_per_class=50")
    p.add_argument("--config", help="YAML file for the demo config")
    p.add_argument("--out", default="runs/demo", help="output directory (default runs/demo)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing demo directory")
    p.set_defaults(func=run)


def cell_config(d: DemoConfig, pretrained: bool) -> RunConfig:
    """The stage-1 config of one initialisation (stage 2 is derived from it)."""
    model = ModelConfig(**{**vars(d.model), "pretrained": pretrained})
    return RunConfig(stage="bridge", model=model, data=d.data, labels=LabelConfig(ratio=d.label_ratio),
                     trainable=TrainableSpec(blocks=d.bridge_blocks), probe=d.probe,
                     optim=OptimConfig(epochs=d.bridge_epochs, batch_size=d.batch_size, blr=d.blr), runtime=d.runtime)


def demo_experiment(d: DemoConfig) -> Experiment:
    """Four arms (pretrained / scratch x bridged / direct) x ``d.seeds``, and the four comparisons."""
    arms = []
    for init in ("pretrained", "scratch"):
        cell = cell_config(d, init == "pretrained")
        for bridged in (True, False):
            arms.append(Arm(f"{init}_{'bridged' if bridged else 'direct'}",
                            {"init": init, "bridge": f"r={d.label_ratio}, {d.bridge_blocks}" if bridged else "-"},
                            cell, bridged))
    comparisons = [Comparison("bridging (pretrained)", "pretrained_bridged", "pretrained_direct"),
                   Comparison("bridging (scratch)", "scratch_bridged", "scratch_direct"),
                   Comparison("language pre-training (bridged)", "pretrained_bridged", "scratch_bridged"),
                   Comparison("language pre-training (no bridge)", "pretrained_direct", "scratch_direct")]
    return Experiment(arms, parse_seeds(d.seeds), Stage2(d.probe.mode, d.probe_epochs), comparisons)


def run(args: argparse.Namespace) -> int:
    d = load_config(DemoConfig, args.config, args.overrides)
    exp = demo_experiment(d)
    with open_run(args.out, overwrite=args.overwrite, kind="demo") as out:
        save_config(d, out / "config.yaml")
        text = run_and_summarize(exp, out, title="lm2v demo: MiniLM pretrained vs scratch, with and without bridging")
    if text is not None:
        print("\n" + text)
        print(f"\nfigure: {out / 'results.png'}\nruns: {out}/ARM/seedS/{{bridge,probe}}  "
              f"(lm2v analyze {out}/pretrained_bridged/seed{exp.seed_list()[0]}/bridge)")
    return 0
