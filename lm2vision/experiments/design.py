"""What an experiment is: arms, seeds, stage-2 options, and the paired comparisons and claims.

An **arm** is one stage-1 (bridge) config, or the unbridged ("direct") probe of that config's
initialisation. Every arm runs once per **seed**; a seed sets ``runtime.seed`` (batch order,
augmentation, the fresh stage-2 parts), ``labels.seed`` (the random-label draw) and
``model.init_seed`` (a scratch model's weights), never ``data.split_seed``: every seed is tested on
the same test images, so two arms can be compared image by image and seed by seed (paired).

Run directories: ``OUT/ARM/seedS/bridge`` and ``OUT/ARM/seedS/probe``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from ..config import load_config, to_dict
from ..errors import Lm2vError
from ..stats import CLAIM_KINDS
from ..train.config import RunConfig
from ..train.recipe import probe_of

SEED_KEYS = ("runtime.seed", "labels.seed", "model.init_seed")  # what one seed of an experiment sets


@dataclass
class Stage2:
    """Stage-2 options of every arm (None: the arm's own config, see :func:`probe_of`)."""

    mode: str | None = None
    epochs: int | None = None
    overrides: list[str] = field(default_factory=list)


@dataclass
class Arm:
    """One arm: ``cell`` is its stage-1 config; ``bridged=False`` probes the cell's initialisation."""

    name: str  # directory name under the experiment's folder
    point: dict  # the arm's coordinates (axis -> value), shown in tables
    cell: RunConfig
    bridged: bool = True


@dataclass
class Comparison:
    """Arm ``a`` minus arm ``b`` in test accuracy, paired by seed and test image."""

    subject: str  # what differs, as a phrase: "bridging (pretrained)"
    a: str
    b: str


@dataclass
class Claim:
    """A claim tested by one comparison: ``a`` is better than / worse than / matches ``b``."""

    text: str
    comparison: Comparison
    kind: str = "better"  # one of lm2vision.stats.CLAIM_KINDS
    margin: float = 0.01  # "match": the effect must lie within +-margin (a fraction: 0.01 = 1 point)


@dataclass
class Experiment:
    """Arms x seeds, stage 2 for every arm, and what the summary compares."""

    arms: list[Arm]
    seeds: list[int] | None  # None: one run per arm with the config's own seeds
    stage2: Stage2 = field(default_factory=Stage2)
    comparisons: list[Comparison] = field(default_factory=list)
    claims: list[Claim] = field(default_factory=list)

    def __post_init__(self) -> None:
        names = [a.name for a in self.arms]
        if len(set(names)) != len(names):
            raise Lm2vError(f"two arms share a name: {sorted(n for n in names if names.count(n) > 1)[0]}")
        for c in self.comparisons + [c.comparison for c in self.claims]:
            missing = [x for x in (c.a, c.b) if x not in names]
            if missing:
                raise Lm2vError(f"comparison {c.subject!r} names an unknown arm {missing[0]!r}")
        for c in self.claims:
            if c.kind not in CLAIM_KINDS:
                raise Lm2vError(f"claim {c.text!r}: kind must be one of {CLAIM_KINDS}, got {c.kind!r}")

    def arm(self, name: str) -> Arm:
        """The arm called ``name``."""
        return next(a for a in self.arms if a.name == name)

    def seed_list(self) -> list[int | None]:
        """The seeds to run (``[None]``: the configs' own)."""
        return list(self.seeds) if self.seeds else [None]


def parse_seeds(text: str | Sequence[int] | None) -> list[int] | None:
    """``"0,1,2"`` -> [0, 1, 2]; None stays None. Duplicates and non-integers are one-line errors."""
    if text is None:
        return None
    items = [str(t).strip() for t in (text.split(",") if isinstance(text, str) else text)]
    try:
        seeds = [int(t) for t in items if t]
    except ValueError:
        raise Lm2vError(f"--seeds must be a comma list of integers like 0,1,2, got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise Lm2vError(f"--seeds must list distinct integers like 0,1,2, got {text!r}")
    return seeds


def check_seed_axes(keys: Sequence[str], seeds: list[int] | None) -> None:
    """Seeds are an axis of their own: refuse ``--seeds`` beside an override or sweep of a seed key."""
    clash = [k for k in keys if k in SEED_KEYS]
    if seeds and clash:
        raise Lm2vError(f"--seeds sets {', '.join(SEED_KEYS)} itself; drop the {clash[0]} sweep or override")


def seeded(cell: RunConfig, seed: int | None) -> RunConfig:
    """``cell`` with one experiment seed applied (``None``: unchanged)."""
    if seed is None:
        return cell
    return load_config(RunConfig, None, [f"{k}={seed}" for k in SEED_KEYS], base=to_dict(cell))


def seed_dir(out: Path, arm: Arm, seed: int | None) -> Path:
    """``OUT/ARM/seedS``: where one arm's runs of one seed live."""
    s = arm.cell.runtime.seed if seed is None else seed
    return Path(out) / arm.name / f"seed{s}"


def stage_configs(exp: Experiment, arm: Arm, seed: int | None, where: Path) -> tuple[RunConfig | None, RunConfig]:
    """(bridge config or None, probe config) of one arm and seed whose runs go under ``where``."""
    cell = seeded(arm.cell, seed)
    s2 = exp.stage2
    init = str(where / "bridge") if arm.bridged else None
    return (cell if arm.bridged else None), probe_of(cell, init, mode=s2.mode, epochs=s2.epochs,
                                                     overrides=s2.overrides)
