"""``lm2v``: one entry point, one module per sub-command under ``lm2vision.cli``.

Each command module exposes ``register(subparsers)``, which adds its parser and sets
``func=run`` on it. Bad input raises :class:`~lm2vision.errors.Lm2vError`; here it becomes one
line on stderr and exit code 2, as does a command line argparse refuses. Ctrl-C at any moment
(the command modules import torch and transformers, which takes seconds) is one line and 130.

This module imports nothing heavy at the top, so that all of that happens inside :func:`main`.
"""
from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import threading
import warnings
from contextlib import contextmanager
from typing import Iterator, NoReturn, Sequence

from ..errors import Lm2vError

# sub-command -> module under lm2vision.cli that registers it
COMMANDS = {
    "bridge": "stages",
    "probe": "stages",
    "train": "stages",
    "grid": "grid",
    "reproduce": "reproduce",
    "demo": "demo",
    "analyze": "analyze",
    "compare": "analyze",
    "phase": "phase",
    "align": "align",
    "detect": "dense",
    "segment": "dense",
    "export": "export",
}


class Parser(argparse.ArgumentParser):
    """An argparse parser whose errors are one line (no usage block), like every other ``lm2v`` error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The ``lm2v`` parser with every sub-command registered."""
    parser = Parser(prog="lm2v", description="Language-pretrained transformers as vision backbones.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in dict.fromkeys(COMMANDS.values()):
        importlib.import_module(f"lm2vision.cli.{module}").register(sub)
    return parser


def _exit_interrupted(signum: int, frame: object) -> None:
    sys.stderr.write("lm2v: interrupted\n")
    sys.stderr.flush()
    os._exit(130)


@contextmanager
def _exit_on_ctrl_c() -> Iterator[None]:
    """Ctrl-C exits at once (130) instead of raising: a KeyboardInterrupt inside the import of a C
    extension (numpy, torch) is swallowed or resurfaces later as an unrelated ImportError."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        yield
        return
    previous = signal.signal(signal.SIGINT, _exit_interrupted)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.default_int_handler)


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    """Warnings as ``lm2v: warning: ...`` on one line (no source line): they are for the user."""
    return f"lm2v: warning: {message}\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``lm2v`` with ``argv``; returns the exit code (0 ok, 2 bad input, 130 interrupted)."""
    fmt, warnings.formatwarning = warnings.formatwarning, _one_line_warning
    try:
        return _main(argv)
    finally:
        warnings.formatwarning = fmt


def _main(argv: Sequence[str] | None) -> int:
    prog = "lm2v"
    try:
        with _exit_on_ctrl_c():  # the command modules import torch, transformers, sklearn
            parser = build_parser()
        try:
            args = parser.parse_args(argv)
        except SystemExit as e:  # --help (0) or a refused command line (2, already printed)
            return e.code if isinstance(e.code, int) else 2
        prog = f"lm2v {args.command}"
        return int(args.func(args) or 0)
    except Lm2vError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lm2v: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
