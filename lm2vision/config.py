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
    cls: type[T], path: str | Path | None = None, overrides: Sequence[str] = (), presets: Sequence[str] = (),
    base: dict | None = None,
) -> T:
    """Build ``cls`` from its defaults, ``presets`` (a command's own defaults), ``base`` (a nested
    dict, e.g. the model of an ``--init`` run), an optional YAML file and ``a.b=value`` overrides,
    in that order.

    Unknown keys, wrongly typed values and values outside a field's declared choices or bounds
    (:func:`validate`) raise :class:`Lm2vError` with a one-line message.
    """
    layers = [OmegaConf.structured(cls), OmegaConf.from_dotlist(list(presets))]
    if base:
        layers.append(OmegaConf.create(base))
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
        cfg = OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        msg = str(e).splitlines()[0]
        raise Lm2vError(f"bad config: {msg}") from None
    validate(cfg)
    return cfg  # type: ignore[return-value]


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
        cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(cls), OmegaConf.create(data)))
    except OmegaConfBaseException as e:
        raise Lm2vError(f"bad saved config: {str(e).splitlines()[0]}") from None
    validate(cfg)
    return cfg  # type: ignore[return-value]


# -- declared choices and ranges ------------------------------------------------------------------
# A config field states what it accepts in its metadata, next to its default:
#     mode: str = field(default="reinit", metadata=choices("reinit", "linear", "finetune"))
#     ratio: float = field(default=0.0, metadata=bounds(ge=0, le=1))
# and :func:`validate` checks every such field of a config and of the configs nested in it. The
# per-config ``check_*`` functions keep only the rules that tie several fields together.
# (OmegaConf also enforces typing.Literal annotations, but in its own words, without ranges, and
# not for configs built in Python.)


def choices(*allowed: Any) -> dict:
    """Field metadata: the value (or, for a list, each item) must be one of ``allowed``."""
    return {"choices": allowed}


def bounds(ge: float | None = None, gt: float | None = None, le: float | None = None,
           lt: float | None = None) -> dict:
    """Field metadata: a number within these bounds (``ge`` >=, ``gt`` >, ``le`` <=, ``lt`` <).
    None always passes: in an Optional field it means "unset"."""
    return {"bounds": {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)) if v is not None}}


def validate(cfg: Any, path: str = "") -> None:
    """Check the declared choices and bounds of every field of ``cfg`` and of the configs nested in
    it; the first violation raises :class:`Lm2vError` naming the field by its dotted path."""
    for f in dataclasses.fields(cfg):
        name, value = f"{path}.{f.name}" if path else f.name, getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            validate(value, name)
        if "choices" in f.metadata:
            _check_choice(name, value, f.metadata["choices"])
        if "bounds" in f.metadata and value is not None:
            _check_bounds(name, value, f.metadata["bounds"])


def _check_choice(name: str, value: Any, allowed: tuple) -> None:
    items, what = (value, f"{name} items") if isinstance(value, (list, tuple)) else ([value], name)
    for item in items:
        if item not in allowed:
            raise Lm2vError(f"{what} must be one of {', '.join(map(str, allowed))}, got {item!r}")


_RELATIONS = {"ge": (">=", lambda v, b: v >= b), "gt": (">", lambda v, b: v > b),
              "le": ("<=", lambda v, b: v <= b), "lt": ("<", lambda v, b: v < b)}


def _check_bounds(name: str, value: float, limits: dict) -> None:
    if all(_RELATIONS[k][1](value, b) for k, b in limits.items()):
        return
    low = next((k for k in ("ge", "gt") if k in limits), None)
    high = next((k for k in ("le", "lt") if k in limits), None)
    if low and high:  # an interval, written as in maths: [0, 1], [0, 1), (0, 1]
        left, right = "[" if low == "ge" else "(", "]" if high == "le" else ")"
        raise Lm2vError(f"{name} must be in {left}{limits[low]}, {limits[high]}{right}, got {value}")
    k = low or high
    raise Lm2vError(f"{name} must be {_RELATIONS[k][0]} {limits[k]}, got {value}")
