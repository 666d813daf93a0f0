"""Arms from sweep axes (``lm2v grid``, ``lm2v reproduce``): one bridged arm per point of the axes'
product, one direct arm per initialisation, and the comparisons that matter between them."""
from __future__ import annotations

import itertools
from typing import Callable

from ..train.config import RunConfig
from .design import Arm, Comparison

# sweep axes that only change stage 1: cells that differ only in these share one direct probe
BRIDGE_ONLY = ("labels.", "trainable.", "phase.")


def cell_name(point: dict) -> str:
    """A directory name for one grid point, e.g. ratio1.0_pretrainedTrue_blocksfirst:2 -> safe chars."""
    text = "_".join(f"{k.split('.')[-1]}{v}" for k, v in point.items())
    return "".join(c if c.isalnum() or c in "._-" else "-" for c in text)


def direct_point(point: dict) -> dict:
    """The initialisation of a cell: its values of the axes that also shape an unbridged probe."""
    return {k: v for k, v in point.items() if not k.startswith(BRIDGE_ONLY)}


def direct_name(point: dict) -> str:
    """The directory name of the direct arm of ``point``'s initialisation."""
    return "direct_" + (cell_name(direct_point(point)) or "all")


def points_of(axes: dict[str, list]) -> list[dict]:
    """Every point of the axes' product, first axis slowest."""
    return [dict(zip(axes, values)) for values in itertools.product(*axes.values())]


def sweep_arms(axes: dict[str, list], cell_config: Callable[[dict], RunConfig], direct: bool = True) -> list[Arm]:
    """A bridged arm per point (config from ``cell_config(point)``), then (``direct``) one unbridged
    arm per initialisation, probing the config of its first cell."""
    arms = [Arm(cell_name(p), p, cell_config(p)) for p in points_of(axes)]
    if direct:
        seen: dict[str, Arm] = {}
        for arm in list(arms):
            name = direct_name(arm.point)
            if name not in seen:
                seen[name] = Arm(name, direct_point(arm.point), arm.cell, bridged=False)
        arms += list(seen.values())
    return arms


def _describe(point: dict) -> str:
    return ", ".join(f"{k.split('.')[-1]}={v}" for k, v in point.items())


def sweep_comparisons(axes: dict[str, list], arms: list[Arm]) -> list[Comparison]:
    """Bridged vs direct for every cell that has a direct arm; then, per axis, each later value vs
    the axis's first value, the other coordinates held fixed (bridged arms only)."""
    names = {a.name for a in arms}
    out = []
    for arm in (a for a in arms if a.bridged):
        d = direct_name(arm.point)
        if d in names:
            out.append(Comparison(f"bridging ({_describe(arm.point)})", arm.name, d))
    for axis, values in axes.items():
        for p in points_of(axes):
            if p[axis] == values[0]:
                continue
            ref = {**p, axis: values[0]}
            rest = _describe({k: v for k, v in p.items() if k != axis})
            out.append(Comparison(f"{axis.split('.')[-1]}={p[axis]} instead of {values[0]}" + (f" ({rest})" if rest else ""),
                                  cell_name(p), cell_name(ref)))
    return out
