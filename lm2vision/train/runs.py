"""Reading finished runs back: their config and their model."""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import yaml

from ..config import config_from_dict
from ..errors import Lm2vError
from ..models import VisionBackbone, create_backbone
from .checkpoint import load_full_model
from .config import RunConfig


def read_run_config(run: str | Path, cls: type = RunConfig) -> Any:
    """The resolved config saved in ``run/config.yaml``, as ``cls`` (dense runs: DetectConfig /
    SegmentConfig)."""
    path = Path(run) / "config.yaml"
    if not path.is_file():
        raise Lm2vError(f"{run} is not an lm2v run directory (no config.yaml)")
    return config_from_dict(cls, yaml.safe_load(path.read_text()))


def read_summary(run: str | Path) -> dict:
    """The final figures of a finished run (``summary.json``)."""
    path = Path(run) / "summary.json"
    if not path.is_file():
        raise Lm2vError(f"{run} has no summary.json (unfinished run?)")
    return json.loads(path.read_text())


def build_architecture(cfg: RunConfig) -> VisionBackbone:
    """The run's architecture, freshly initialised, without reading any pretrained weights."""
    model_cfg = copy.deepcopy(cfg.model)
    model_cfg.pretrained = False
    return create_backbone(model_cfg)


def load_run_model(run: str | Path, weights: str = "model.safetensors") -> tuple[VisionBackbone, RunConfig]:
    """Rebuild a finished run's backbone with its final weights (or ``init.safetensors`` merged in)."""
    run = Path(run)
    cfg = read_run_config(run)
    model = build_architecture(cfg)
    load_full_model(run / "model.safetensors", model)
    if weights == "init.safetensors":
        load_init_weights(run, model)
    elif weights != "model.safetensors":
        raise Lm2vError(f"weights must be model.safetensors or init.safetensors, got {weights!r}")
    return model, cfg


def load_init_weights(run: str | Path, model: VisionBackbone) -> None:
    """Overwrite the trainable tensors with their values at the start of the run (theta_0)."""
    import torch
    from safetensors.torch import load_file

    path = Path(run) / "init.safetensors"
    if not path.is_file():
        raise Lm2vError(f"{run} has no init.safetensors")
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in load_file(str(path)).items():
            if name not in params or params[name].shape != value.shape:
                raise Lm2vError(f"{path}: tensor {name} does not match the model")
            params[name].copy_(value)
