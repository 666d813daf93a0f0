"""``lm2v detect`` and ``lm2v segment``: dense heads on a language-model backbone.

Examples::

    lm2v detect --synthetic 256 --out runs/det model.name=tiny-bert model.pretrained=false
    lm2v detect --data /data/coco --out runs/detr init=runs/bridge   # backbone (and its ModelConfig) from a bridge run
    lm2v segment --data /data/ADEChallengeData2016 --out runs/seg data.layout=ade20k head.init_from_lm_blocks=2
    lm2v segment --synthetic 256 --out runs/seg head.decoder=linear
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ..config import load_config
from ..errors import Lm2vError

_SYNTHETIC = {
    "detect": ["data.layout=coco", "data.images_dir=images/{split}", "data.ann_file=annotations/instances_{split}.json"],
    "segment": ["data.layout=folder"],
}


def register(subparsers) -> None:
    """Add the ``detect`` and ``segment`` sub-commands."""
    for name, help_ in (("detect", "DETR-style detection (COCO format, COCO mAP)"),
                        ("segment", "Segmenter-style semantic segmentation (mIoU, pixel accuracy)")):
        p = subparsers.add_parser(name, help=help_, description=help_ + ".\n\n" + __doc__.split("\n\n", 1)[1],
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("--config", help="YAML config file (DetectConfig / SegmentConfig fields)")
        p.add_argument("--out", required=True, help="run directory")
        p.add_argument("--data", help="dataset root (same as data.root=...)")
        p.add_argument("--synthetic", type=int, metavar="N",
                       help="generate N training (+ N/4 validation) synthetic images under RUN/synthetic and use them")
        p.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
        p.add_argument("--resume", action="store_true", help="continue RUN from checkpoints/last")
        p.add_argument("overrides", nargs="*", help="key=value config overrides, e.g. optim.epochs=10")
        p.set_defaults(func=run, task=name)


def _config(args, run: Path):
    from ..dense.config import DetectConfig, SegmentConfig
    from ..train.rundir import check_target, resumed_config

    cls = DetectConfig if args.task == "detect" else SegmentConfig
    overrides = list(_SYNTHETIC[args.task]) if args.synthetic else []
    if args.data:
        overrides.append(f"data.root={args.data}")
    if args.resume:  # the run's own config, with what the user gives on top (only runtime.* may differ)
        return resumed_config(check_target(run), cls, args.config, overrides + list(args.overrides))
    return load_config(cls, args.config, overrides + list(args.overrides))


def _synthetic(args, cfg, run: Path):
    """Point ``cfg.data.root`` at RUN/synthetic; returns the writer ``run_dense`` calls on the main
    process once RUN exists (it keeps a set already there, e.g. on --resume)."""
    from ..dense.synthetic import make_synthetic_dense

    if args.synthetic < 1:
        raise Lm2vError(f"--synthetic needs N >= 1, got {args.synthetic}")
    if args.data:
        raise Lm2vError("--synthetic and --data exclude each other")
    root = run / "synthetic"
    cfg.data.root = str(root)

    def write(_run: Path) -> None:
        if not (root / "classes.txt").is_file():
            print(f"writing {args.synthetic} synthetic training images to {root}")
            make_synthetic_dense(root, args.synthetic, max(args.synthetic // 4, 4), cfg.model.image_size,
                                 cfg.runtime.seed)

    return write


def run(args: argparse.Namespace) -> int:
    """Train and evaluate one dense run; prints the final metrics."""
    from ..dense.engine import run_dense

    run_dir = Path(args.out)
    cfg = _config(args, run_dir)
    prepare = _synthetic(args, cfg, run_dir) if args.synthetic else None
    summary = run_dense(cfg, run_dir, resume=args.resume, overwrite=args.overwrite, prepare=prepare)
    if summary.get("stopped"):
        return 0
    final = summary["final"]
    if summary.get("finished_before"):
        print(f"{run_dir} is already finished; nothing to resume")
        return 0
    print(f"{args.task} done: " + " ".join(f"{k}={v:.4f}" for k, v in final.items()) + f"  ({run_dir})")
    return 0
