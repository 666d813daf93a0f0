"""``lm2v``: one entry point, one module per sub-command under ``lm2vision.cli``.

Each command module exposes ``register(subparsers)``, which adds its parser and sets
``func=run`` on it. Bad input raises :class:`~lm2vision.errors.Lm2vError`; here it becomes one
line on stderr and exit code 2.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from ..errors import Lm2vError

# sub-command -> module under lm2vision.cli that registers it
COMMANDS = {
    "bridge": "stages",
    "probe": "stages",
    "train": "stages",
    "grid": "grid",
    "demo": "demo",
    "analyze": "analyze",
    "compare": "analyze",
    "phase": "phase",
    "detect": "dense",
    "segment": "dense",
}


def build_parser() -> argparse.ArgumentParser:
    """The ``lm2v`` parser with every sub-command registered."""
    parser = argparse.ArgumentParser(prog="lm2v", description="Language-pretrained transformers as vision backbones.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in dict.fromkeys(COMMANDS.values()):
        importlib.import_module(f"lm2vision.cli.{module}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``lm2v`` with ``argv``; returns the exit code (0 ok, 2 bad input)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.func(args)
    except Lm2vError as e:
        print(f"lm2v {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"lm2v {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
