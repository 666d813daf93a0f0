"""What a task brings to the one trainer (:func:`lm2vision.train.trainer.fit`): its model, its
batches, its loss and its evaluation. Classification (the stages bridge, probe, train) lives here;
detection and segmentation in :mod:`lm2vision.dense.engine`. Everything else (runtime, amp,
accumulation, checkpoints, resume, divergence stop, ``stop_after``, torchrun) is the trainer's.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Protocol

import torch
import torch.nn as nn

from ..data import DataSplits, ImageSet
from ..data.stream import LazyImageSet
from ..errors import Lm2vError
from .config import RunConfig
from .distributed import Runtime
from .loop import ClassificationSteps, DeviceSet, StreamSet, device_set, evaluate
from .rundir import save_predictions


class Task(Protocol):
    """The interface :func:`~lm2vision.train.trainer.fit` trains through.

    ``batches(epoch, accum)`` yields this rank's micro-batches of the epoch, ``steps_per_epoch * accum``
    of them, each ``1 / accum`` of this rank's share of one global batch; their order is a pure function
    of (seed, epoch), so a resumed run sees the same batches. ``loss(model, batch)`` returns the loss to
    minimise and a small tensor of sums (e.g. loss * b, correct, b) that the trainer adds up over the
    epoch and all-reduces once; ``train_metrics`` turns those totals into the record's ``train_*``
    numbers (``train_loss`` at least: the divergence check reads it).
    """

    name: str  # the "stage" of every metrics record: bridge | probe | train | detect | segment
    model: nn.Module  # the module that trains, on the device, not wrapped; its trainable tensors are checkpointed
    steps_per_epoch: int  # optimizer steps (global batches) per epoch, the same on every rank
    eval_every: int  # evaluate the validation split every N epochs, and always after the last
    test_split: str  # the split the final "test" record is measured on (written in that record)
    test_is_val: bool  # no test labels (COCO, ADE20K): the final figures are the last validation's

    def batches(self, epoch: int, accum: int) -> Iterator: ...

    def loss(self, model: nn.Module, batch) -> tuple[torch.Tensor, torch.Tensor]: ...

    def train_metrics(self, sums: list[float]) -> dict: ...

    def evaluate(self, model: nn.Module, split: str) -> dict:
        """Metrics (numbers, keys without a split prefix) of ``split`` ("val" or "test") on every rank."""

    def summary(self, last: dict, test: dict) -> dict:
        """``summary.json`` from the last epoch's record and the final test metrics."""


@dataclass
class ClassificationTask(ClassificationSteps):
    """Image classification on device-resident or streamed data: validation every epoch, test once at the end."""

    name: str = "train"
    model: nn.Module | None = None
    val: DeviceSet | StreamSet | None = None
    test: DeviceSet | StreamSet | None = None
    cfg: RunConfig | None = None
    eval_every: int = 1
    test_split: str = "test"
    test_is_val: bool = False
    run: Path | None = None  # where the final test predictions go (predictions.safetensors)
    test_pred: torch.Tensor | None = None  # the latest test evaluation's predictions

    def evaluate(self, model: nn.Module, split: str) -> dict:
        data = self.val if split == "val" else self.test
        out = evaluate(model, data, self.image_size, self.dcfg, self.rt, self.cfg.runtime.eval_batch_size,
                       predictions=split == "test")
        self.test_pred = out.pop("pred", self.test_pred)
        return out

    def summary(self, last: dict, test: dict) -> dict:
        if self.run is not None and self.rt.is_main and self.test_pred is not None:
            save_predictions(self.run, self.test_pred, self.test.labels)
        return classification_summary(self.cfg, self.model, last, test)


def classification_task(cfg: RunConfig, model: nn.Module, train: ImageSet | LazyImageSet, splits: DataSplits,
                        rt: Runtime, run: Path | None = None) -> ClassificationTask:
    """The stage's task: ``train`` (its labels already chosen) on the device, ``splits.val`` and
    ``splits.test`` for evaluation (in memory or streamed, as the splits are: :func:`device_set`); the
    final test predictions are saved in ``run``."""
    dtrain, dval, dtest = (device_set(s, rt.device, cfg.data) for s in (train, splits.val, splits.test))
    if len(dtrain) < cfg.optim.batch_size:
        raise Lm2vError(f"batch size {cfg.optim.batch_size} exceeds the {len(dtrain)} training images")
    return ClassificationTask(dtrain, cfg.data, cfg.model.image_size, cfg.runtime.seed, cfg.optim.batch_size,
                              cfg.optim.label_smoothing, rt, name=cfg.stage, model=model, val=dval, test=dtest,
                              cfg=cfg, run=run)


def classification_summary(cfg: RunConfig, model: nn.Module, last: dict, test: dict) -> dict:
    """A stage's ``summary.json``: what ran, and its final train / validation / test figures."""
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"stage": cfg.stage, "mode": cfg.probe.mode if cfg.stage == "probe" else None, "model": cfg.model.name,
            "pretrained": cfg.model.pretrained, "init": cfg.init, "label_ratio": cfg.labels.ratio,
            "trainable_blocks": cfg.trainable.blocks, "trainable_params": n_train, "epochs": cfg.optim.epochs,
            "train_acc": last.get("train_acc"), "val_acc": last.get("val_acc"),
            "test_acc": test["acc"], "test_loss": test["loss"]}
