"""Run directories: refuse to overwrite, log metrics to JSON lines and TensorBoard.

Layout of RUN/:
  config.yaml        resolved config         metrics.jsonl   one record per epoch, then "test"
  summary.json       final figures           model.safetensors  full final weights
  init.safetensors   trainable weights at the start (theta_0, for analyses)
  labels.safetensors the training labels used (stage 1)
  checkpoints/last.safetensors + last.json   for --resume          tb/   TensorBoard
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from ..errors import Lm2vError

MARKER = "config.yaml"


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


def read_metrics(run: str | Path) -> list[dict]:
    """All records of a run's metrics.jsonl."""
    path = Path(run) / "metrics.jsonl"
    if not path.is_file():
        raise Lm2vError(f"no metrics.jsonl in {run}")
    return [json.loads(l) for l in path.read_text().splitlines() if l.strip()]
