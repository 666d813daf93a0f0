"""Argument-parsing helpers shared by the sub-commands."""
from __future__ import annotations

import argparse


class TrailingOverrides(argparse.ArgumentParser):
    """Lets ``key=value`` overrides also follow options: with a positional (RUN_DIR, EXPERIMENT) before
    them, plain argparse binds the (empty) override list there and rejects later ``key=value`` words."""

    def parse_known_args(self, args=None, namespace=None):
        ns, rest = super().parse_known_args(args, namespace)
        extra = [a for a in rest if "=" in a and not a.startswith("-")]
        ns.overrides = list(getattr(ns, "overrides", None) or []) + extra
        return ns, [a for a in rest if a not in extra]


def allow_trailing_overrides(parser: argparse.ArgumentParser) -> None:
    """Give ``parser`` (a sub-command's, already built) the :class:`TrailingOverrides` behaviour."""
    parser.__class__ = type("TrailingOverrides" + type(parser).__name__, (TrailingOverrides, type(parser)), {})
