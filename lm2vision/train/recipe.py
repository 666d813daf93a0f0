"""How a stage's config is assembled, in one place, for the CLI, the grid and the demo.

Layers, lowest first: the dataclass defaults, the stage preset (``STAGE_PRESETS``), the stage's
own defaults that depend on the config (stage 2's ``trainable`` for its ``probe.mode``; the
``--init`` run's model), the user's YAML file, then ``key=value`` overrides. Whatever the user
sets wins, and whatever cannot be honoured is refused in one line, never replaced silently.

A grid cell or a demo cell is one bridge config; its stage 2 is *derived* from it
(:func:`probe_of`), so the probe runs on the bridge's data, optimiser settings and seed unless the
caller says otherwise.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

import numpy as np

from ..config import load_config, to_dict
from ..errors import Lm2vError
from ..models import export_model_section
from ..models.factory import check_export_fields
from .config import PROBE_TRAINABLE, STAGE_PRESETS, LabelConfig, PhaseConfig, RunConfig
from .rundir import read_run_config

# ModelConfig fields that define the architecture and where its weights come from: with --init they
# are the init run's, and an override that changes one is refused (the weights would not fit it).
INIT_MODEL_FIELDS = ("name", "pretrained", "image_size", "patch_size", "positions", "pooling", "attention")


def stage_config(stage: str, path: str | Path | None = None, overrides: Sequence[str] = (),
                 init: str | None = None, presets: Sequence[str] = ()) -> RunConfig:
    """The config of one ``lm2v bridge | probe | train`` command.

    With ``init`` (a run directory or an exported folder, ``lm2v export``) the model starts as that
    run's: its architecture fields are kept (an override of one is an error), the rest (dropout,
    gradient checkpointing, attention kernels, ``init_seed``) may be set for this stage. A
    ``model.name`` that is an export gives its model section the same way (an override of an
    architecture field is refused too; ``model.pretrained=false`` keeps the architecture with fresh
    weights). Stage 2's ``trainable`` starts as its mode's
    default (``PROBE_TRAINABLE``) and honours the user's ``trainable.*``. ``presets`` (e.g. a named
    augmentation recipe, :data:`lm2vision.data.config.RECIPES`) go under the user's file and overrides.
    """
    if stage not in STAGE_PRESETS:
        raise Lm2vError(f"stage must be one of {list(STAGE_PRESETS)}, got {stage!r}")
    overrides = list(overrides) + ([f"init={init}"] if init else [])
    base: dict = {}
    presets = STAGE_PRESETS[stage] + list(presets)
    first = load_config(RunConfig, path, overrides, presets=presets)
    if first.init:
        base["model"] = init_model(first.init)
    elif (exported := export_model_section(first.model.name)) is not None:
        base["model"] = exported
    if stage == "probe":
        base["trainable"] = dataclasses.asdict(PROBE_TRAINABLE.get(first.probe.mode, PROBE_TRAINABLE["reinit"]))
    if not base:
        return first
    cfg = load_config(RunConfig, path, overrides, presets=presets, base=base)
    if cfg.init:
        check_init_model(cfg, base["model"])
    elif "model" in base:
        check_export_fields(cfg.model, base["model"])
    return cfg


def init_model(run: str | Path) -> dict:
    """The model section of a run directory's saved config, or of an exported folder (the
    architecture ``--init`` loads)."""
    exported = export_model_section(str(run)) if Path(run).is_dir() else None
    return exported if exported is not None else to_dict(read_run_config(run).model)


def check_init_model(cfg: RunConfig, init: dict | None = None) -> None:
    """Refuse a config whose architecture differs from its ``--init`` run's, naming the field."""
    if not cfg.init:
        return
    init = init if init is not None else init_model(cfg.init)
    for key in INIT_MODEL_FIELDS:
        ours = getattr(cfg.model, key)
        if ours != init[key]:
            raise Lm2vError(f"model.{key}={ours} differs from the --init run's {init[key]!r} ({cfg.init}): "
                            "its weights fit only its own architecture; drop the override")


def probe_of(cell: RunConfig, init: str | None, mode: str | None = None, epochs: int | None = None,
             overrides: Sequence[str] = ()) -> RunConfig:
    """Stage 2 derived from a stage-1 config: same model, data, optimiser and runtime (seed
    included), real labels, no phase-aware terms, the mode's default ``trainable``; then
    ``mode`` / ``epochs`` / ``overrides`` (the caller's own stage-2 options) on top.

    ``init=None`` gives the unbridged ("direct") probe of the same initialisation.
    """
    d = to_dict(cell)
    mode = mode or cell.probe.mode
    d.update(stage="probe", init=init, labels=to_dict(LabelConfig()), phase=to_dict(PhaseConfig()))
    d["probe"]["mode"] = mode
    d["trainable"] = dataclasses.asdict(PROBE_TRAINABLE[mode]) if mode in PROBE_TRAINABLE else d["trainable"]
    if epochs is not None:
        d["optim"]["epochs"] = epochs
    cfg = load_config(RunConfig, None, list(overrides), base=d)
    check_init_model(cfg, to_dict(cell.model) if init else None)
    return cfg


def stage_seed(cfg: RunConfig, salt: int) -> int:
    """A seed for a stage's freshly drawn parts (stage 2's re-initialised patch embedding and head):
    a function of (model.init_seed, runtime.seed, salt), so it differs from the bridge's own starting
    weights (drawn from init_seed alone) and varies with the run's seed."""
    state = np.random.SeedSequence([cfg.model.init_seed, cfg.runtime.seed, salt, 11]).generate_state(1)
    return int(state[0])
