"""``lm2v phase``: NTK stability, AGOP and alignment of every vision x language pair.

Examples::

    lm2v phase --vision minilm runs/bridge --language minilm --out runs/phase
    lm2v phase --vision minilm --language gpt2-medium bert-base-uncased --samples 576 --ntk-samples 64 \\
        ntk.method=projection ntk.proj_dim=8192 --device cuda

    lm2v phase --preset seed2 data.dataset=cifar10 --device cuda      # the phase paper's 12 x 12 hub models
    lm2v phase --vision tiny-bert --language tiny-gpt2 --align-results runs/align/results.json

Writes ``table.csv``, ``table.md``, ``results.json`` (per-model details, AGOP spectra, layer geometry,
by-family and predictor tables), ``predictors.csv``/``.md``, ``phase_landscape.png``, ``report.html``
(self-contained) + ``report.md`` and the resolved ``config.yaml`` to ``--out``, and prints the pair
and predictor tables.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ..config import load_config, save_config
from ..errors import Lm2vError


def register(subparsers) -> None:
    """Add the ``phase`` sub-command."""
    p = subparsers.add_parser("phase", help="NTK stability, AGOP and alignment of vision x language pairs")
    p.add_argument("--vision", nargs="+", metavar="MODEL",
                   help="vision models: backbone name for create_backbone (minilm, tiny-*, hub id, path) or run dir")
    p.add_argument("--language", nargs="+", metavar="MODEL", help="language models: minilm, tiny-*, hub id or path")
    p.add_argument("--preset", help="a published model list (seed2: the phase paper's 12 x 12 hub ids); "
                   "--vision / --language replace its sides")
    p.add_argument("--align-results", metavar="FILE",
                   help="results.json of lm2v align: its per-method table goes into the report")
    p.add_argument("--samples", type=int, help="paired samples for the alignment score (default 576)")
    p.add_argument("--ntk-samples", type=int, help="pairs for the NTK kernels (default 64)")
    p.add_argument("--agop-samples", type=int, help="samples for the AGOP (default 64)")
    p.add_argument("--method", choices=["auto", "jacobian", "vjp", "projection"], help="NTK method (default auto)")
    p.add_argument("--device", help="auto | cpu | cuda[:i]")
    p.add_argument("--out", default="runs/phase", help="output directory (default runs/phase)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    p.add_argument("--config", help="YAML file with ScreenConfig fields")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("overrides", nargs="*", help="key=value overrides of ScreenConfig, e.g. ntk.proj_dim=8192")
    p.set_defaults(func=run_phase)


def _split_overrides(models: list[str] | None) -> tuple[list[str] | None, list[str]]:
    """``--vision a b k=v`` swallows trailing overrides: give them back (model names hold no '=')."""
    if models is None:
        return None, []
    return [m for m in models if "=" not in m], [m for m in models if "=" in m]


def build_config(args: argparse.Namespace):
    """ScreenConfig from defaults, --config, flags, then key=value overrides."""
    from ..phase.screen import ScreenConfig

    vision, extra_v = _split_overrides(args.vision)
    language, extra_l = _split_overrides(args.language)
    flags = [f"{key}={getattr(args, attr)}" for attr, key in
             (("samples", "samples"), ("ntk_samples", "ntk_samples"), ("agop_samples", "agop_samples"),
              ("method", "ntk.method"), ("device", "device")) if getattr(args, attr) is not None]
    cfg = load_config(ScreenConfig, args.config, flags + list(args.overrides or []) + extra_v + extra_l)
    if getattr(args, "preset", None):
        from ..phase.presets import get_preset

        preset = get_preset(args.preset)
        cfg.vision, cfg.language = list(preset.vision), list(preset.language)
    if vision:
        cfg.vision = vision
    if language:
        cfg.language = language
    return cfg


def _print_and_write(rows: list[dict], details: dict, cfg, out: Path, align_rows: list[dict] | None) -> None:
    from ..phase.report import write_outputs

    print(write_outputs(rows, details, cfg, out, align_rows), end="")
    print(f"wrote {out}/report.html, table.csv, table.md, predictors.csv, predictors.md, results.json, "
          "phase_landscape.png")


def run_phase(args: argparse.Namespace) -> int:
    """Screen every pair, write the table, results and plot to ``--out`` and print the table."""
    from ..phase.presets import check_available
    from ..phase.report import load_align_results
    from ..phase.screen import check_screen_config, screen
    from ..train.rundir import open_run

    cfg = build_config(args)
    if not cfg.vision or not cfg.language:
        raise Lm2vError("give at least one --vision and one --language model (or set them in --config)")
    if getattr(args, "preset", None):
        check_available(cfg.vision, cfg.language, args.preset)  # before any output or computation
    check_screen_config(cfg)
    align_rows = load_align_results(args.align_results) if getattr(args, "align_results", None) else None
    inputs = [m for m in (*cfg.vision, *cfg.language) if Path(m).expanduser().exists()]
    with open_run(args.out, overwrite=args.overwrite, inputs=inputs, kind="phase") as out:
        save_config(cfg, out / "config.yaml")
        rows, details = screen(cfg, progress=not args.no_progress)
        _print_and_write(rows, details, cfg, out, align_rows)
    return 0
