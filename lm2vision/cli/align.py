"""``lm2v align``: contrastive alignment training of a vision and a language model with the seed's four
phase-aware methods (baseline, adaptive, regularized, compatible), compared as the seed's Table 2.

Examples::

    lm2v align --vision tiny-bert --language tiny-gpt2 --out runs/align
    lm2v align --vision runs/bridge --language minilm --methods baseline compatible --steps 2000 \\
        data.dataset=svhn data.download=true vision_trainable.blocks=last:2 --device cuda

Writes ``config.yaml``, ``curves/<method>.jsonl`` (one line per measurement), ``table.md``,
``table.csv``, ``results.json`` and ``align_curves.png`` to ``--out`` and prints the table.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

from ..config import load_config, save_config, to_dict

FLAGS = (("vision", "vision"), ("language", "language"), ("steps", "steps"), ("target", "target"),
         ("pairs", "pairs"), ("lr", "lr"), ("device", "device"))


def register(subparsers) -> None:
    """Add the ``align`` sub-command."""
    p = subparsers.add_parser("align", help="contrastive vision-language alignment, four phase-aware methods")
    p.add_argument("--vision", metavar="MODEL",
                   help="vision model: backbone name (tiny-*, minilm, hub id, path) or run dir")
    p.add_argument("--language", metavar="MODEL", help="language model: tiny-*, minilm, hub id or path")
    p.add_argument("--methods", nargs="+", metavar="METHOD",
                   help="any of baseline adaptive regularized compatible (default: all four)")
    p.add_argument("--steps", type=int, help="optimiser steps per method (default 100)")
    p.add_argument("--target", type=float, help="held-out top-1 to reach, in (0, 1] (default 0.3)")
    p.add_argument("--pairs", type=int, help="image/caption pairs drawn (default 576)")
    p.add_argument("--lr", type=float, help="eta_0 (default 1e-3)")
    p.add_argument("--device", help="auto | cpu | cuda[:i]")
    p.add_argument("--out", default="runs/align", help="output directory (default runs/align)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory lm2v made")
    p.add_argument("--config", help="YAML file with AlignConfig fields")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("overrides", nargs="*",
                   help="key=value overrides of AlignConfig, e.g. vision_trainable.blocks=last:2")
    p.set_defaults(func=run_align)


def build_config(args: argparse.Namespace):
    """AlignConfig from defaults, --config, flags, then key=value overrides."""
    from ..phase.align import AlignConfig

    flags = [f"{key}={getattr(args, attr)}" for attr, key in FLAGS if getattr(args, attr) is not None]
    if args.methods is not None:
        flags.append(f"methods=[{','.join(args.methods)}]")
    return load_config(AlignConfig, args.config, flags + list(args.overrides or []))


def _write(rows: list[dict], curves: dict, cfg, out: Path) -> None:
    from ..phase.align import plot_curves, to_csv, to_markdown
    from ..utils.io import atomic_write_json, atomic_write_text

    for method, curve in curves.items():
        atomic_write_text(out / "curves" / f"{method}.jsonl", "".join(f"{_json(r)}\n" for r in curve))
    md = to_markdown(rows, cfg.target)
    atomic_write_text(out / "table.md", md)
    atomic_write_text(out / "table.csv", to_csv(rows))
    clean = {m: [_clean(r) for r in c] for m, c in curves.items()}
    atomic_write_json(out / "results.json", {"rows": rows, "curves": clean, "config": to_dict(cfg)})
    plot_curves(curves, cfg.target, out / "align_curves.png")
    print(md, end="")
    print(f"wrote {out}/table.md, table.csv, results.json, curves/*.jsonl, align_curves.png")


def _clean(row: dict) -> dict:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}


def _json(row: dict) -> str:
    import json

    return json.dumps(_clean(row))


def run_align(args: argparse.Namespace) -> int:
    """Train every method, write curves, table, results and figure to ``--out``, print the table."""
    from ..models.factory import resolve_source
    from ..phase.align import align, check_align_config, prepare
    from ..train.rundir import open_run

    cfg = build_config(args)
    check_align_config(cfg)
    for name in (cfg.vision, cfg.language):
        resolve_source(name)  # a missing local folder is one line before anything runs
    prepared = prepare(cfg)  # bad selectors, data or models fail here, before the run directory exists
    inputs = [m for m in (cfg.vision, cfg.language) if Path(m).expanduser().exists()]
    with open_run(args.out, overwrite=args.overwrite, inputs=inputs, kind="align") as out:
        save_config(cfg, out / "config.yaml")
        (out / "curves").mkdir(exist_ok=True)
        rows, curves = align(cfg, prepared, progress=not args.no_progress)
        _write(rows, curves, cfg, out)
    return 0
