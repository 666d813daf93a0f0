"""Detection and segmentation as tasks of the one trainer (:func:`lm2vision.train.trainer.fit`).

This module says only what differs between the dense tasks and classification: the model (a
backbone with a DETR or Segmenter head), the training batches (a DataLoader sharded per rank), the
loss and the evaluation (COCO box mAP; mIoU and pixel accuracy). The loop, amp, accumulation,
checkpoints, resume, ``stop_after`` and torchrun are the trainer's, as for ``lm2v bridge``.

A run directory holds ``config.yaml``, ``metrics.jsonl`` (one record per epoch, then an
``"event": "test"`` record on the validation split with the final weights), ``summary.json``,
``init.safetensors`` (trainable weights at the start), ``model.safetensors`` (all final weights),
``checkpoints/last.{safetensors,json}`` (resume) and ``tb/``.
"""
from __future__ import annotations

import copy
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm.auto import tqdm

from ..config import save_config
from ..data.fingerprint import fingerprint_path
from ..data.transforms import normalize
from ..errors import Lm2vError
from ..models import apply_trainable, create_backbone, trainable_summary
from ..train.checkpoint import load_full_model
from ..train.distributed import Runtime, setup_runtime, teardown
from ..train.loop import epoch_seed
from ..train.rundir import (MetricsLogger, check_data, check_target, load_run_model, open_run, read_run_config,
                            record_data, resume_state)
from ..train.trainer import fit, say
from .config import DetectConfig, SegmentConfig, check_dense_config
from .datasets import CocoDetection, SegmentationFolder, detection_collate, list_collate, segmentation_pairs
from .inference import detections_from_outputs, predict_segmentation
from .losses import detr_loss, segmentation_loss
from .metrics import coco_map, confusion_matrix, segmentation_scores
from .model import Detector, Segmenter

# ----------------------------------------------------------------------------- building


def build_backbone(cfg: DetectConfig | SegmentConfig) -> nn.Module:
    """The backbone: ``init`` (a run directory of lm2v bridge/probe/train) or ``create_backbone(cfg.model)``.

    With ``init`` the run's own ModelConfig is used and copied into ``cfg.model`` (so the saved
    config describes the model that was trained).
    """
    if cfg.init:
        backbone, run_cfg = load_run_model(cfg.init)
        cfg.model = run_cfg.model
    else:
        backbone = create_backbone(cfg.model)
    backbone.head.requires_grad_(False)  # the classifier is unused by dense heads
    return backbone


def _select_trainable(model: nn.Module, cfg, rt: Runtime) -> None:
    apply_trainable(model.backbone, cfg.trainable)
    model.backbone.head.requires_grad_(False)
    model.head.requires_grad_(True)
    n_head = sum(p.numel() for p in model.head.parameters())
    say(rt, f"{trainable_summary(model.backbone)}\n  dense head {n_head:>12,} train")


# ----------------------------------------------------------------------------- tasks


@dataclass
class DenseTask:
    """A dense task for :func:`~lm2vision.train.trainer.fit` (the ``Task`` interface).

    Training batches come from a DataLoader over this rank's shard (``DistributedSampler``, dropping
    the remainder), reshuffled by (seed, epoch); the datasets' augmentation draws from Python's
    ``random``, seeded by (seed, epoch, rank), so a resumed run sees the same batches. There are no
    test labels (COCO, ADE20K): the final figures are the validation split's, with the final weights.
    """

    name: str  # detect | segment
    model: nn.Module
    train_set: Dataset
    collate: Callable
    step_loss: Callable  # (model, batch) -> scalar loss
    evaluate_val: Callable  # (model) -> metrics of the validation split
    classes: list[str]
    cfg: DetectConfig | SegmentConfig
    rt: Runtime

    test_is_val = True

    @property
    def eval_every(self) -> int:
        return self.cfg.eval_every

    @property
    def test_split(self) -> str:
        return self.cfg.data.val_split

    @property
    def steps_per_epoch(self) -> int:
        W = self.rt.world_size
        return (len(self.train_set) // W) // (self.cfg.optim.batch_size // W)

    def batches(self, epoch: int, accum: int) -> Iterator:
        seed, rank = self.cfg.runtime.seed, self.rt.rank
        random.seed(epoch_seed(seed, epoch) + rank)  # flips, scales and crops of the datasets (worker 0 = none)
        sampler = DistributedSampler(self.train_set, num_replicas=self.rt.world_size, rank=rank, shuffle=True,
                                     seed=seed, drop_last=True)
        sampler.set_epoch(epoch)
        micro = self.cfg.optim.batch_size // (self.rt.world_size * accum)
        # the generator seeds the workers' own ``random`` (num_workers > 0) by (seed, epoch, rank) too
        return iter(DataLoader(self.train_set, batch_size=micro, sampler=sampler, drop_last=True,
                               collate_fn=self.collate, num_workers=self.cfg.data.num_workers,
                               pin_memory=self.rt.device.type == "cuda",
                               generator=torch.Generator().manual_seed(epoch_seed(seed, epoch) + rank)))

    def loss(self, model: nn.Module, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """The task's loss and the sums (loss, batches) of the epoch's mean train loss."""
        value = self.step_loss(model, batch)
        return value, torch.stack([value.detach().float(), torch.ones((), device=value.device)])

    def train_metrics(self, sums: list[float]) -> dict:
        return {"train_loss": sums[0] / max(sums[1], 1.0)}

    def evaluate(self, model: nn.Module, split: str) -> dict:
        """The validation split's metrics (``split`` "test" too: there are no test labels)."""
        return self.evaluate_val(model)

    def summary(self, last: dict, test: dict) -> dict:
        """Final figures; ``test_*`` are measured on the validation split with the final weights
        (COCO and ADE20K publish no test labels), never the best epoch."""
        cfg, model = self.cfg, self.model
        return {"stage": self.name, "model": cfg.model.name, "pretrained": cfg.model.pretrained, "init": cfg.init,
                "trainable_blocks": cfg.trainable.blocks, "epochs": cfg.optim.epochs, "split": cfg.data.val_split,
                "train_images": len(self.train_set), "params": sum(p.numel() for p in model.parameters()),
                "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
                "classes": list(self.classes), **{f"test_{k}": v for k, v in test.items()}, "final": dict(test)}


def _check_batch(cfg, n_train: int) -> None:
    if n_train < cfg.optim.batch_size:
        raise Lm2vError(f"batch size {cfg.optim.batch_size} exceeds the {n_train} training images")


def _coco_paths(cfg: DetectConfig, split: str) -> tuple[Path, Path]:
    root = Path(cfg.data.root)
    return root / cfg.data.images_dir.format(split=split), root / cfg.data.ann_file.format(split=split)


def detection_task(cfg: DetectConfig, rt: Runtime) -> DenseTask:
    """DETR on a COCO-format set; evaluation = COCO box mAP on the validation split."""
    backbone = build_backbone(cfg)
    S = backbone.cfg.image_size
    train_set = CocoDetection(*_coco_paths(cfg, cfg.data.train_split), S, train=True, max_items=cfg.data.max_train)
    val_set = CocoDetection(*_coco_paths(cfg, cfg.data.val_split), S, train=False, max_items=cfg.data.max_val)
    _check_batch(cfg, len(train_set))
    torch.manual_seed(cfg.runtime.seed)
    model = Detector(backbone, len(train_set.classes), cfg.head).to(rt.device)
    _select_trainable(model, cfg, rt)
    mean, std = cfg.data.mean, cfg.data.std

    def targets_on(targets):
        return [{"labels": t["labels"].to(rt.device), "boxes": t["boxes"].to(rt.device)} for t in targets]

    def step_loss(model, batch):
        imgs, targets = batch
        outputs = model(normalize(imgs.to(rt.device, non_blocking=True), mean, std))
        return detr_loss(outputs, targets_on(targets), cfg.loss)[0]

    @torch.no_grad()
    def evaluate(model):
        model.eval()
        loader = DataLoader(val_set, batch_size=cfg.runtime.eval_batch_size, collate_fn=detection_collate,
                            num_workers=cfg.data.num_workers)
        dets, losses = [], []
        for imgs, targets in tqdm(loader, desc="detect eval", disable=not (cfg.runtime.progress and rt.is_main),
                                  leave=False):
            with rt.autocast():
                outputs = model(normalize(imgs.to(rt.device), mean, std))
            losses.append(detr_loss(outputs, targets_on(targets), cfg.loss)[0].item())
            for t, d in zip(targets, detections_from_outputs(outputs, [t["orig_size"] for t in targets])):
                dets += _coco_results(t["image_id"], d, val_set.cat_ids)
        return {"loss": sum(losses) / max(len(losses), 1), **coco_map(val_set.coco, dets)}

    return DenseTask("detect", model, train_set, detection_collate, step_loss, evaluate, train_set.classes, cfg, rt)


def _coco_results(image_id: int, det: dict, cat_ids: list[int]) -> list[dict]:
    xyxy = det["boxes"].tolist()
    return [{"image_id": image_id, "category_id": cat_ids[int(c)], "score": float(s),
             "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]]}
            for s, c, b in zip(det["scores"], det["labels"], xyxy)]


def _seg_set(cfg: SegmentConfig, split: str, train: bool, image_size: int, max_items: int) -> SegmentationFolder:
    pairs, classes, reduce = segmentation_pairs(cfg.data.layout, cfg.data.root, split, cfg.data.num_classes)
    return SegmentationFolder(pairs[: max_items or None], classes, image_size, train, reduce,
                              cfg.data.min_scale, cfg.data.max_scale)


def segmentation_task(cfg: SegmentConfig, rt: Runtime) -> DenseTask:
    """Segmenter / linear decoder; evaluation = mIoU, pixel accuracy on the validation split."""
    backbone = build_backbone(cfg)
    S = backbone.cfg.image_size
    train_set = _seg_set(cfg, cfg.data.train_split, True, S, cfg.data.max_train)
    val_set = _seg_set(cfg, cfg.data.val_split, False, S, cfg.data.max_val)
    _check_batch(cfg, len(train_set))
    K = len(train_set.classes)
    torch.manual_seed(cfg.runtime.seed)
    model = Segmenter(backbone, K, cfg.head).to(rt.device)
    _select_trainable(model, cfg, rt)
    mean, std = cfg.data.mean, cfg.data.std

    def step_loss(model, batch):
        imgs, masks = batch
        logits = model(normalize(imgs.to(rt.device, non_blocking=True), mean, std))  # (B, K, S, S)
        return segmentation_loss(logits.float(), masks.to(rt.device))

    @torch.no_grad()
    def evaluate(model):
        model.eval()
        loader = DataLoader(val_set, batch_size=1, collate_fn=list_collate, num_workers=cfg.data.num_workers)
        cm = torch.zeros(K, K, dtype=torch.int64)
        for imgs, masks in tqdm(loader, desc="segment eval", disable=not (cfg.runtime.progress and rt.is_main),
                                leave=False):
            for img, mask in zip(imgs, masks):
                with rt.autocast():
                    logits = predict_segmentation(model, img, S, K, cfg.infer, mean, std)
                cm += confusion_matrix(logits.argmax(0).cpu(), mask, K)
        return {**segmentation_scores(cm), **majority_baseline(cm)}

    return DenseTask("segment", model, train_set, _stack_collate, step_loss, evaluate, train_set.classes, cfg, rt)


def _stack_collate(batch):
    imgs, masks = zip(*batch)
    return torch.stack(imgs), torch.stack(masks)


def majority_baseline(cm: torch.Tensor) -> dict[str, float]:
    """Scores of the trivial predictor that outputs the most frequent true class everywhere."""
    gt = cm.sum(1).double()
    if gt.sum() == 0:
        return {"baseline_miou": 0.0, "baseline_pixel_acc": 0.0}
    frac = float(gt.max() / gt.sum())
    return {"baseline_miou": frac / int((gt > 0).sum()), "baseline_pixel_acc": frac}


# ----------------------------------------------------------------------------- runs


def load_dense_model(run: str | Path) -> tuple[nn.Module, DetectConfig | SegmentConfig, list[str]]:
    """Rebuild a finished dense run: ``(Detector or Segmenter in eval mode, config, class names)``.

    The architecture is rebuilt from the saved config without reading pretrained weights, then every
    tensor comes from ``model.safetensors``.
    """
    run = Path(run)
    for f in ("config.yaml", "summary.json", "model.safetensors"):
        if not (run / f).is_file():
            raise Lm2vError(f"{run} is not a finished dense run (no {f})")
    summary = json.loads((run / "summary.json").read_text())
    if summary.get("stage") not in ("detect", "segment"):
        raise Lm2vError(f"{run} is a {summary.get('stage')!r} run, not detect or segment")
    cls = DetectConfig if summary["stage"] == "detect" else SegmentConfig
    cfg = read_run_config(run, cls)
    model_cfg = copy.deepcopy(cfg.model)
    model_cfg.pretrained = False
    backbone, K = create_backbone(model_cfg), len(summary["classes"])
    model = Detector(backbone, K, cfg.head) if cls is DetectConfig else Segmenter(backbone, K, cfg.head)
    load_full_model(run / "model.safetensors", model)
    return model.eval(), cfg, summary["classes"]


def run_dense(cfg: DetectConfig | SegmentConfig, out: str | Path, resume: bool = False, overwrite: bool = False,
              prepare: Callable[[Path], None] | None = None) -> dict:
    """Check ``cfg``, build the task, then train it with :func:`~lm2vision.train.trainer.fit` in the
    run directory ``out`` (opened with :func:`~lm2vision.train.rundir.open_run` only once the config,
    data and model are known good); returns the summary. Runs as one process or under torchrun (DDP).
    ``prepare(run)`` runs on the main process once the directory exists, before the task is built
    (it writes a synthetic data set into it that ``cfg.data.root`` points at).
    """
    check_dense_config(cfg)
    # what the directory must not be or hold (a resumed run moves nothing: its synthetic data lives in it)
    inputs = [] if resume else [p for p in (cfg.init, None if prepare else cfg.data.root) if p]
    run = check_target(out, inputs)
    cfg, finished = resume_state(run, cfg, resume)
    if finished:
        return finished
    rt = setup_runtime(cfg.runtime)
    try:
        if rt.distributed and cfg.runtime.distributed == "fsdp":
            raise Lm2vError("runtime.distributed=fsdp shards a backbone's blocks only; dense runs use ddp")
        task = _task(cfg, rt) if prepare is None else None
        with open_run(run, resume=resume, overwrite=overwrite, inputs=inputs, rt=rt):
            if prepare is not None:
                if rt.is_main:
                    prepare(run)
                rt.barrier()
                task = _task(cfg, rt)
            _record(cfg, run, resume, rt)
            logger = MetricsLogger.for_run(run, cfg.runtime, enabled=rt.is_main)
            try:
                return fit(task, cfg, run, rt, logger, resume)
            finally:
                logger.close()
    finally:
        teardown(rt)


def _task(cfg: DetectConfig | SegmentConfig, rt: Runtime) -> "DenseTask":
    return detection_task(cfg, rt) if isinstance(cfg, DetectConfig) else segmentation_task(cfg, rt)


def _record(cfg: DetectConfig | SegmentConfig, run: Path, resume: bool, rt: Runtime) -> None:
    """A new run saves its config (``init`` has filled in cfg.model by now) and its data's
    fingerprint; a resumed one checks the data is the one it started on."""
    data = fingerprint_path(cfg.data.root)
    if resume:
        check_data(run, data, cfg.runtime.allow_data_change)
    elif rt.is_main:
        save_config(cfg, run / "config.yaml")
        record_data(run, data)
