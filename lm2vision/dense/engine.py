"""Training and evaluation of the dense tasks, with the classification stage's run conventions.

A run directory holds ``config.yaml``, ``metrics.jsonl`` (one record per epoch, then an
``"event": "test"`` record on the validation split with the final weights), ``summary.json``,
``init.safetensors`` (trainable weights at the start), ``model.safetensors`` (all final weights),
``checkpoints/last.{safetensors,json}`` (resume) and ``tb/``. The helpers come from
:mod:`lm2vision.train`; the loop itself is shared by ``detect`` and ``segment`` through a small
:class:`DenseTask` (build data, one loss, one evaluation).
"""
from __future__ import annotations

import contextlib
import copy
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from ..config import save_config, to_dict
from ..data.transforms import normalize
from ..errors import Lm2vError
from ..models import apply_trainable, create_backbone, trainable_summary
from ..train.checkpoint import (load_checkpoint, load_full_model, save_checkpoint, save_full_model, save_tensors,
                                trainable_state)
from ..train.distributed import resolve_amp
from ..train.loop import check_finite_loss
from ..train.optim import base_lr, build_optimizer, lr_at, set_lr
from ..train.rundir import MetricsLogger, prepare_run_dir
from ..train.runs import read_run_config
from ..utils.device import resolve_device
from ..utils.io import atomic_write_json
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
        from ..train import load_run_model

        backbone, run_cfg = load_run_model(cfg.init)
        cfg.model = run_cfg.model
    else:
        backbone = create_backbone(cfg.model)
    backbone.head.requires_grad_(False)  # the classifier is unused by dense heads
    return backbone


def _select_trainable(model: nn.Module, cfg) -> None:
    apply_trainable(model.backbone, cfg.trainable)
    model.backbone.head.requires_grad_(False)
    model.head.requires_grad_(True)
    print(trainable_summary(model.backbone))
    n_head = sum(p.numel() for p in model.head.parameters())
    print(f"  dense head {n_head:>12,} train")


def autocast(device: torch.device, amp: str):
    """Autocast on CUDA with the classification loop's rule (``resolve_amp``: auto = bf16); nothing on CPU."""
    dtype = resolve_amp(amp, device) if device.type == "cuda" else None
    return contextlib.nullcontext() if dtype is None else torch.autocast("cuda", dtype=dtype)


# ----------------------------------------------------------------------------- tasks


@dataclass
class DenseTask:
    """What differs between detection and segmentation."""

    name: str
    model: nn.Module
    train_set: torch.utils.data.Dataset
    collate: Callable
    loss: Callable  # (model, batch, device) -> (loss, logs)
    evaluate: Callable  # (model, device) -> metrics dict (numbers)
    classes: list[str]


def _coco_paths(cfg: DetectConfig, split: str) -> tuple[Path, Path]:
    root = Path(cfg.data.root)
    return root / cfg.data.images_dir.format(split=split), root / cfg.data.ann_file.format(split=split)


def detection_task(cfg: DetectConfig) -> DenseTask:
    """DETR on a COCO-format set; evaluation = COCO box mAP on the validation split."""
    backbone = build_backbone(cfg)
    S = backbone.cfg.image_size
    train_set = CocoDetection(*_coco_paths(cfg, cfg.data.train_split), S, train=True, max_items=cfg.data.max_train)
    val_set = CocoDetection(*_coco_paths(cfg, cfg.data.val_split), S, train=False, max_items=cfg.data.max_val)
    torch.manual_seed(cfg.runtime.seed)
    model = Detector(backbone, len(train_set.classes), cfg.head)
    mean, std = cfg.data.mean, cfg.data.std

    def loss(model, batch, device):
        imgs, targets = batch
        targets = [{"labels": t["labels"].to(device), "boxes": t["boxes"].to(device)} for t in targets]
        outputs = model(normalize(imgs.to(device, non_blocking=True), mean, std))
        return detr_loss(outputs, targets, cfg.loss)

    @torch.no_grad()
    def evaluate(model, device):
        loader = torch.utils.data.DataLoader(val_set, batch_size=cfg.runtime.eval_batch_size,
                                             collate_fn=detection_collate, num_workers=cfg.data.num_workers)
        dets, losses = [], []
        for imgs, targets in tqdm(loader, desc="detect eval", disable=not cfg.runtime.progress, leave=False):
            with autocast(device, cfg.runtime.amp):
                outputs = model(normalize(imgs.to(device), mean, std))
            tgt = [{"labels": t["labels"].to(device), "boxes": t["boxes"].to(device)} for t in targets]
            losses.append(detr_loss(outputs, tgt, cfg.loss)[0].item())
            for t, d in zip(targets, detections_from_outputs(outputs, [t["orig_size"] for t in targets])):
                dets += _coco_results(t["image_id"], d, val_set.cat_ids)
        return {"loss": sum(losses) / max(len(losses), 1), **coco_map(val_set.coco, dets)}

    return DenseTask("detect", model, train_set, detection_collate, loss, evaluate, train_set.classes)


def _coco_results(image_id: int, det: dict, cat_ids: list[int]) -> list[dict]:
    xyxy = det["boxes"].tolist()
    return [{"image_id": image_id, "category_id": cat_ids[int(c)], "score": float(s),
             "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]]}
            for s, c, b in zip(det["scores"], det["labels"], xyxy)]


def _seg_set(cfg: SegmentConfig, split: str, train: bool, image_size: int, max_items: int) -> SegmentationFolder:
    pairs, classes, reduce = segmentation_pairs(cfg.data.layout, cfg.data.root, split, cfg.data.num_classes)
    return SegmentationFolder(pairs[: max_items or None], classes, image_size, train, reduce,
                              cfg.data.min_scale, cfg.data.max_scale)


def segmentation_task(cfg: SegmentConfig) -> DenseTask:
    """Segmenter / linear decoder; evaluation = mIoU, pixel accuracy on the validation split."""
    backbone = build_backbone(cfg)
    S = backbone.cfg.image_size
    train_set = _seg_set(cfg, cfg.data.train_split, True, S, cfg.data.max_train)
    val_set = _seg_set(cfg, cfg.data.val_split, False, S, cfg.data.max_val)
    K = len(train_set.classes)
    torch.manual_seed(cfg.runtime.seed)
    model = Segmenter(backbone, K, cfg.head)
    mean, std = cfg.data.mean, cfg.data.std

    def loss(model, batch, device):
        imgs, masks = batch
        logits = model(normalize(imgs.to(device, non_blocking=True), mean, std))  # (B, K, S, S)
        value = segmentation_loss(logits.float(), masks.to(device))
        return value, {"ce": float(value.detach())}

    @torch.no_grad()
    def evaluate(model, device):
        loader = torch.utils.data.DataLoader(val_set, batch_size=1, collate_fn=list_collate,
                                             num_workers=cfg.data.num_workers)
        cm = torch.zeros(K, K, dtype=torch.int64)
        for imgs, masks in tqdm(loader, desc="segment eval", disable=not cfg.runtime.progress, leave=False):
            for img, mask in zip(imgs, masks):
                with autocast(device, cfg.runtime.amp):
                    logits = predict_segmentation(model, img, S, K, cfg.infer, mean, std)
                cm += confusion_matrix(logits.argmax(0).cpu(), mask, K)
        return {**segmentation_scores(cm), **majority_baseline(cm)}

    return DenseTask("segment", model, train_set, _stack_collate, loss, evaluate, train_set.classes)


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


# ----------------------------------------------------------------------------- the loop


def _train_epoch(task: DenseTask, cfg, optimizer, scaler, device, epoch: int, sched: dict) -> tuple[float, dict]:
    model = task.model.train()
    random.seed(cfg.runtime.seed + epoch)
    g = torch.Generator().manual_seed(cfg.runtime.seed + epoch)
    bs = cfg.optim.batch_size
    loader = torch.utils.data.DataLoader(task.train_set, batch_size=bs, shuffle=True, generator=g,
                                         drop_last=len(task.train_set) >= bs, collate_fn=task.collate,
                                         num_workers=cfg.data.num_workers, pin_memory=device.type == "cuda")
    params = [p for p in model.parameters() if p.requires_grad]
    total, n, logs = 0.0, 0, {}
    for i, batch in enumerate(tqdm(loader, desc=f"{task.name} epoch {epoch + 1}", disable=not cfg.runtime.progress,
                                   leave=False)):
        set_lr(optimizer, lr_at(epoch * sched["steps"] + i, sched["total"], sched["warmup"], sched["peak"],
                                cfg.optim.min_lr))
        with autocast(device, cfg.runtime.amp):
            loss, logs = task.loss(model, batch, device)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if cfg.optim.grad_clip > 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        total, n = total + loss.item(), n + 1
    return total / max(n, 1), logs


def _schedule(cfg, n_train: int) -> dict:
    bs = cfg.optim.batch_size
    steps = max(n_train // bs, 1) if n_train >= bs else 1
    return {"steps": steps, "total": steps * cfg.optim.epochs, "warmup": int(cfg.optim.warmup_epochs * steps),
            "peak": base_lr(cfg.optim)}


def fit(task: DenseTask, cfg, run: Path, resume: bool) -> dict:
    """Train ``task.model`` for ``cfg.optim.epochs`` and write the run directory; returns the summary."""
    device = resolve_device(cfg.runtime.device)
    model = task.model.to(device)
    _select_trainable(model, cfg)
    optimizer = build_optimizer(model, cfg.optim)
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and cfg.runtime.amp == "fp16")
    logger = MetricsLogger(run, tensorboard=cfg.runtime.tensorboard)
    start = 0
    if resume:
        start = load_checkpoint(run, model, optimizer)["epoch"]
        logger.truncate_after(start)
    else:
        save_tensors(run / "init.safetensors", trainable_state(model))
    try:
        return _epochs(task, cfg, run, model, optimizer, scaler, device, logger, start)
    finally:
        logger.close()


def _epochs(task: DenseTask, cfg, run: Path, model, optimizer, scaler, device, logger, start: int) -> dict:
    sched, metrics = _schedule(cfg, len(task.train_set)), {}
    stop = cfg.optim.epochs if cfg.runtime.stop_after is None else min(cfg.optim.epochs, start + cfg.runtime.stop_after)
    for epoch in range(start, stop):
        t_epoch = time.perf_counter()
        train_loss, _ = _train_epoch(task, cfg, optimizer, scaler, device, epoch, sched)
        dt = time.perf_counter() - t_epoch
        last = epoch + 1 == cfg.optim.epochs
        metrics = task.evaluate(model.eval(), device) if last or (epoch + 1) % cfg.eval_every == 0 else {}
        record = {"epoch": epoch + 1, "stage": task.name, "train_loss": train_loss,
                  "lr": optimizer.param_groups[0]["lr"], "epoch_time_s": dt,
                  "img_per_s": sched["steps"] * cfg.optim.batch_size / dt,
                  **{f"val_{k}": v for k, v in metrics.items()}}
        logger.log(record)
        print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()))
        check_finite_loss(train_loss, epoch)
        save_checkpoint(run, model, optimizer, {"epoch": epoch + 1, "config": to_dict(cfg)})
    if stop < cfg.optim.epochs:
        print(f"stopped after epoch {stop} (runtime.stop_after); continue with --resume")
        return {"stopped": True, "epoch": stop}
    if not metrics:  # resumed after the last epoch: evaluate the final weights
        metrics = task.evaluate(model.eval(), device)
    save_full_model(run / "model.safetensors", model)
    test = {f"test_{k}": v for k, v in metrics.items()}
    logger.log({"event": "test", "stage": task.name, "split": cfg.data.val_split, "epoch": cfg.optim.epochs, **test})
    summary = _summary(task, cfg, model, test)
    atomic_write_json(run / "summary.json", summary)
    return summary


def _summary(task: DenseTask, cfg, model: nn.Module, test: dict) -> dict:
    """Final figures; ``test_*`` are measured on the validation split with the final weights
    (COCO and ADE20K publish no test labels), never the best epoch."""
    return {"stage": task.name, "model": cfg.model.name, "pretrained": cfg.model.pretrained, "init": cfg.init,
            "trainable_blocks": cfg.trainable.blocks, "epochs": cfg.optim.epochs, "split": cfg.data.val_split,
            "train_images": len(task.train_set), "params": sum(p.numel() for p in model.parameters()),
            "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "classes": list(task.classes), **test, "final": {k[5:]: v for k, v in test.items()}}


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
              prepared: Path | None = None) -> dict:
    """Check ``cfg``, prepare ``out`` (unless ``prepared``), build the task, train, return the summary."""
    check_dense_config(cfg)
    run = prepared or prepare_run_dir(out, resume=resume, overwrite=overwrite)
    save_config(cfg, run / "config.yaml")  # marks the folder as a run even if building fails
    task = detection_task(cfg) if isinstance(cfg, DetectConfig) else segmentation_task(cfg)
    save_config(cfg, run / "config.yaml")  # after build: ``init`` may have filled in cfg.model
    return fit(task, cfg, run, resume)
