"""Typed configs: dataclass defaults, then a YAML file, then ``key=value`` overrides (OmegaConf).

Every run writes its resolved config as ``config.yaml`` beside its outputs, and checkpoints carry it
too, so a run can be rebuilt without the command line.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Sequence, TypeVar

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .errors import Lm2vError

T = TypeVar("T")


def load_config(
    cls: type[T], path: str | Path | None = None, overrides: Sequence[str] = (), presets: Sequence[str] = ()
) -> T:
    """Build ``cls`` from its defaults, ``presets`` (a command's own defaults), an optional YAML
    file and ``a.b=value`` overrides, in that order.

    Unknown keys and wrongly typed values raise :class:`Lm2vError` with a one-line message.
    """
    base = OmegaConf.structured(cls)
    layers = [base, OmegaConf.from_dotlist(list(presets))]
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise Lm2vError(f"config file not found: {p}")
        layers.append(OmegaConf.load(p))
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise Lm2vError(f"override must look like key=value, got {bad[0]!r}")
    layers.append(OmegaConf.from_dotlist(list(overrides)))
    try:
        merged = OmegaConf.merge(*layers)
        return OmegaConf.to_object(merged)  # type: ignore[return-value]
    except OmegaConfBaseException as e:
        msg = str(e).splitlines()[0]
        raise Lm2vError(f"bad config: {msg}") from None


def to_dict(cfg: Any) -> dict:
    """A plain nested dict of a dataclass config (for JSON/YAML and checkpoints)."""
    return dataclasses.asdict(cfg)


def save_config(cfg: Any, path: str | Path) -> None:
    """Write the resolved config as YAML (atomically)."""
    from .utils.io import atomic_write_text

    atomic_write_text(Path(path), yaml.safe_dump(to_dict(cfg), sort_keys=False))


def config_from_dict(cls: type[T], data: dict) -> T:
    """Rebuild a config saved by :func:`save_config` (unknown keys are an error)."""
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(cls), OmegaConf.create(data)))  # type: ignore
    except OmegaConfBaseException as e:
        raise Lm2vError(f"bad saved config: {str(e).splitlines()[0]}") from None
