"""``lm2v analyze RUN_DIR`` (every analysis, one report) and ``lm2v compare RUN_DIR...`` (one table,
overlaid curves).

Examples::

    lm2v analyze runs/bridge --skip landscape --samples 500
    lm2v analyze runs/bridge --grid 21 --directions training landscape.samples=128
    lm2v analyze runs/bridge --compare-model google/vit-base-patch16-224 --compare-model runs/scratch
    lm2v analyze runs/bridge --compare-model runs/vision_trained --skip landscape,features layer_pooling=model
    lm2v compare runs/ratio_0 runs/ratio_0.15 runs/ratio_0.3 runs/ratio_1 --out runs/ratio_grid
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import Lm2vError
from .args import allow_trailing_overrides


def register(subparsers) -> None:
    """Add the ``analyze`` and ``compare`` sub-commands."""
    p = subparsers.add_parser("analyze", help="weights, loss landscape, features, covariance alignment, "
                              "layer CKA, curves -> report")
    p.add_argument("run_dir", help="an lm2v run directory")
    p.add_argument("--out", help="report directory (default RUN_DIR/analysis)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing report")
    p.add_argument("--config", help="YAML file with AnalyzeConfig fields")
    p.add_argument("--skip", action="append", default=[], help="part(s) to skip, comma list or repeated: "
                   "curves, weights, landscape, features, alignment, layers, geometry")
    p.add_argument("--samples", type=int, help="images for t-SNE / cluster numbers / layer CKA (default 1000)")
    p.add_argument("--grid", type=int, help="landscape grid side (default 11)")
    p.add_argument("--range", type=float, help="landscape half-range of a and b (default 1.0)")
    p.add_argument("--directions", choices=["random", "filter", "training"], help="landscape directions")
    p.add_argument("--compare-model", action="append", default=[], metavar="NAME_OR_PATH",
                   help="extra model for the weight comparison and, if it takes images, the layer CKA "
                        "(LM name[@scratch], HF vision model, run dir)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("overrides", nargs="*", help="key=value overrides of AnalyzeConfig, e.g. landscape.samples=128")
    p.set_defaults(func=run_analyze)
    allow_trailing_overrides(p)

    c = subparsers.add_parser("compare", help="one table and overlaid curves across runs")
    c.add_argument("run_dirs", nargs="+", help="lm2v run directories")
    c.add_argument("--out", required=True, help="report directory")
    c.add_argument("--overwrite", action="store_true", help="replace an existing report")
    c.set_defaults(func=run_compare)


def _flag_overrides(args: argparse.Namespace) -> list[str]:
    """Command-line flags as ``key=value`` overrides (they win over --config, lose to explicit overrides)."""
    out = []
    skip = [s.strip() for item in args.skip for s in item.split(",") if s.strip()]
    if skip:
        out.append(f"skip=[{','.join(skip)}]")
    for flag, key in (("samples", "samples"), ("grid", "landscape.grid"), ("range", "landscape.range"),
                      ("directions", "landscape.directions")):
        if getattr(args, flag) is not None:
            out.append(f"{key}={getattr(args, flag)}")
    if args.compare_model:
        out.append("compare_models=[" + ",".join(f'"{m}"' for m in args.compare_model) + "]")
    if args.no_progress:
        out.append("progress=false")
    return out




def run_analyze(args: argparse.Namespace) -> int:
    """Build the config, run every part, write the report."""
    from ..analysis.run import AnalyzeConfig, analyze_run
    from ..config import load_config, save_config
    from ..train.rundir import open_run

    run = Path(args.run_dir)
    if not (run / "config.yaml").is_file():
        raise Lm2vError(f"{run} is not an lm2v run directory (no config.yaml)")
    cfg = load_config(AnalyzeConfig, args.config, _flag_overrides(args) + list(args.overrides))
    with open_run(Path(args.out) if args.out else run / "analysis", overwrite=args.overwrite, inputs=[run],
                  kind="report") as out:
        (out / "figures").mkdir()
        save_config(cfg, out / "analyze.yaml")
        analyze_run(run, out, cfg, log=lambda s: print(s, file=sys.stderr))
    print(out / "report.html")
    return 0


def run_compare(args: argparse.Namespace) -> int:
    """One table and overlaid curves across runs."""
    from ..analysis.run import compare_runs
    from ..train.rundir import open_run
    from ..utils.tables import markdown_table

    missing = [r for r in args.run_dirs if not (Path(r) / "config.yaml").is_file()]
    if missing:
        raise Lm2vError(f"{missing[0]} is not an lm2v run directory (no config.yaml)")
    with open_run(args.out, overwrite=args.overwrite, inputs=args.run_dirs, kind="report") as out:
        (out / "figures").mkdir()
        rows, groups, comps = compare_runs(args.run_dirs, out)
    for r in rows:
        print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()))
    if groups:
        print("\n" + markdown_table(groups))
    for c in comps:
        print(f"- {c['verdict']}")
    print(out / "report.html")
    return 0
