"""Run directories, written and read back in one place: refuse to overwrite, log metrics to JSON
lines and TensorBoard; read a finished run's config, metrics, summary and model.

Layout of RUN/:
  config.yaml        resolved config         metrics.jsonl   one record per epoch, then "test"
  summary.json       final figures           model.safetensors  full final weights
  init.safetensors   trainable weights at the start (theta_0, for analyses)
  labels.safetensors the training labels used (stage 1)
  checkpoints/last.safetensors + last.json   for --resume          tb/   TensorBoard
"""
from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import load_file

from ..config import config_from_dict
from ..errors import Lm2vError
from ..models import VisionBackbone, create_backbone
from .checkpoint import load_full_model
from .config import RunConfig

MARKER = "config.yaml"


# -- writing -------------------------------------------------------------------------------------


def prepare_run_dir(path: str | Path, resume: bool = False, overwrite: bool = False) -> Path:
    """Create ``path`` for a new run, or check it for ``resume``.

    An existing non-empty directory is refused unless ``resume`` (it must hold a checkpoint) or
    ``overwrite`` (only a directory that looks like a run is wiped, never an arbitrary folder).
    """
    run = Path(path)
    if resume and overwrite:
        raise Lm2vError("--resume and --overwrite exclude each other")
    exists = run.exists() and any(run.iterdir()) if run.is_dir() else run.exists()
    if run.exists() and not run.is_dir():
        raise Lm2vError(f"run path {run} exists and is not a directory")
    if resume:
        if not (run / "checkpoints" / "last.json").is_file():
            raise Lm2vError(f"nothing to resume in {run}: no checkpoints/last.json")
        return run
    if exists and not overwrite:
        raise Lm2vError(f"run directory {run} already exists; use --resume to continue it or --overwrite to replace it")
    if exists:
        if not (run / MARKER).is_file():
            raise Lm2vError(f"refusing to overwrite {run}: it does not look like an lm2v run (no {MARKER})")
        shutil.rmtree(run)
    run.mkdir(parents=True, exist_ok=True)
    return run


class MetricsLogger:
    """Appends one JSON object per record to metrics.jsonl, mirrors scalars to TensorBoard."""

    def __init__(self, run: Path, tensorboard: bool = True, enabled: bool = True):
        self.path = run / "metrics.jsonl"
        self.enabled = enabled
        self.tb = None
        if enabled and tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run / "tb"))

    def log(self, record: dict) -> None:
        """Write ``record`` (numbers, strings); scalars also go to TensorBoard at its epoch."""
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
            f.flush()
        if self.tb is not None:
            step = int(record.get("epoch", 0))
            prefix = record.get("stage", "run")
            for k, v in record.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "epoch":
                    self.tb.add_scalar(f"{prefix}/{k}", v, step)
            self.tb.flush()

    def truncate_after(self, epoch: int) -> None:
        """On resume, drop records of epochs after the checkpoint (a crash may have left some)."""
        if not self.enabled or not self.path.is_file():
            return
        keep = [l for l in self.path.read_text().splitlines() if l and json.loads(l).get("epoch", 0) <= epoch
                and json.loads(l).get("event") != "test"]
        self.path.write_text("".join(l + "\n" for l in keep))

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


# -- reading -------------------------------------------------------------------------------------
def is_run_dir(path: str | Path) -> bool:
    """Whether ``path`` is a directory holding a run's ``config.yaml``."""
    return (Path(path) / MARKER).is_file()


def read_run_config(run: str | Path, cls: type = RunConfig) -> Any:
    """The resolved config saved in ``run/config.yaml``, as ``cls`` (dense runs: DetectConfig /
    SegmentConfig)."""
    if not is_run_dir(run):
        raise Lm2vError(f"{run} is not an lm2v run directory (no {MARKER})")
    return config_from_dict(cls, yaml.safe_load((Path(run) / MARKER).read_text()))


def read_metrics(run: str | Path) -> list[dict]:
    """All records of a run's metrics.jsonl, in order (epochs, then the ``"event": "test"`` record)."""
    path = Path(run) / "metrics.jsonl"
    if not path.is_file():
        raise Lm2vError(f"no metrics.jsonl in {run}")
    records = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise Lm2vError(f"{path} line {i} is not JSON: {e}") from None
    return records


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
    if weights not in ("model.safetensors", "init.safetensors"):
        raise Lm2vError(f"weights must be model.safetensors or init.safetensors, got {weights!r}")
    run = Path(run)
    cfg = read_run_config(run)
    model = build_architecture(cfg)
    load_full_model(run / "model.safetensors", model)
    if weights == "init.safetensors":
        load_init_weights(run, model)
    return model, cfg


def load_init_weights(run: str | Path, model: VisionBackbone) -> None:
    """Overwrite the trainable tensors with their values at the start of the run (theta_0)."""
    path = Path(run) / "init.safetensors"
    if not path.is_file():
        raise Lm2vError(f"{run} has no init.safetensors")
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in load_file(str(path)).items():
            if name not in params or params[name].shape != value.shape:
                raise Lm2vError(f"{path}: tensor {name} does not match the model")
            params[name].copy_(value)
