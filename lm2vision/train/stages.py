"""The three stages as one pipeline: stage 1 ``bridge`` (random labels), stage 2 ``probe``
(reinit | linear | finetune on real labels) and ``train`` (the supervised baseline).

Choices (learning rate of the probe, anything else) are made on the validation split; the test
split is evaluated once, after the last epoch, and that final-epoch figure is what is reported.
"""
from __future__ import annotations

import copy
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..config import save_config, to_dict
from ..data import DataSplits, ImageSet, load_imageset_splits, random_labels, save_labels
from ..errors import Lm2vError
from ..models import VisionBackbone, apply_trainable, create_backbone, trainable_summary
from ..utils.io import atomic_write_json
from .checkpoint import load_checkpoint, load_full_model, save_checkpoint, save_full_model, save_tensors, trainable_state
from .config import PROBE_TRAINABLE, RunConfig, check_run_config
from .distributed import Runtime, full_state_dict, setup_runtime, teardown, unwrap, wrap_model
from .loop import DeviceSet, Schedule, check_finite_loss, evaluate, extract_features, train_one_epoch
from .optim import build_optimizer
from .phase_hooks import PhaseHooks
from .probe import train_linear_grid
from .rundir import MetricsLogger, prepare_run_dir
from .runs import build_architecture, read_run_config
from ..data.loader import num_batches


def _say(rt: Runtime, text: str) -> None:
    if rt.is_main:
        tqdm.write(text)


def prepare_model(cfg: RunConfig, num_classes: int) -> VisionBackbone:
    """The stage's starting model: from ``cfg.init`` (a run directory) or built from ``cfg.model``."""
    if cfg.init:
        init_cfg = read_run_config(cfg.init)
        cfg.model = copy.deepcopy(init_cfg.model)
        model = build_architecture(init_cfg)
        load_full_model(Path(cfg.init) / "model.safetensors", model)
    else:
        cfg.model.num_classes = num_classes
        model = create_backbone(cfg.model)
    if cfg.stage == "probe":
        if cfg.probe.mode == "reinit":
            model.reset_patch_embed()
        model.reset_classifier(num_classes)  # the bridge head learned random labels
        cfg.trainable = copy.deepcopy(PROBE_TRAINABLE[cfg.probe.mode])
    elif model.cfg.num_classes != num_classes:
        model.reset_classifier(num_classes)
    cfg.model.num_classes = num_classes
    apply_trainable(model, cfg.trainable)
    return model


def stage_train_set(cfg: RunConfig, train: ImageSet, run: Path, rt: Runtime) -> ImageSet:
    """The training set with the stage's labels; stage 1 redraws a share of them and saves them."""
    if cfg.labels.ratio == 0:
        return train
    labels, changed = random_labels(train.labels, train.num_classes, cfg.labels.ratio, cfg.labels.scheme, cfg.labels.seed)
    if rt.is_main:
        save_labels(run / "labels.safetensors", labels, changed)
    _say(rt, f"random labels: {int(changed.sum())} of {len(train)} training labels redrawn ({cfg.labels.scheme})")
    return train.with_labels(labels)


def _resume_config(run: Path, cfg: RunConfig) -> RunConfig:
    """A resumed run keeps its saved config; only how it runs now (runtime) may change."""
    saved = read_run_config(run)
    saved.runtime = cfg.runtime
    return saved


def run_stage(cfg: RunConfig, out: str | Path, resume: bool = False, overwrite: bool = False) -> dict:
    """Run one stage into the run directory ``out``; returns the summary (also in summary.json)."""
    check_run_config(cfg)
    rt = setup_runtime(cfg.runtime)
    try:
        run = _prepare_dir(Path(out), resume, overwrite, rt)
        if resume:
            cfg = _resume_config(run, cfg)
        torch.manual_seed(cfg.runtime.seed)
        splits = load_imageset_splits(cfg.data)
        model = prepare_model(cfg, splits.train.num_classes).to(rt.device)
        _say(rt, f"[{cfg.stage}] {cfg.model.name} ({'pretrained' if cfg.model.pretrained else 'scratch'}) -> {run}\n"
                 f"runtime: {rt.device}, {rt.world_size} process(es), amp {rt.amp_dtype or 'off'}\n"
             f"data: {len(splits.train)} train / {len(splits.val)} val / {len(splits.test)} test, "
             f"{splits.train.num_classes} classes\n{trainable_summary(model)}")
        if rt.is_main and not resume:
            save_config(cfg, run / "config.yaml")
        train = stage_train_set(cfg, splits.train, run, rt)
        logger = MetricsLogger(run, cfg.runtime.tensorboard, enabled=rt.is_main)
        try:
            if cfg.stage == "probe" and cfg.probe.mode == "linear":
                summary = _linear_probe(cfg, model, splits, run, rt, logger)
            else:
                summary = _fit(cfg, model, train, splits, run, rt, logger, resume)
        finally:
            logger.close()
        if rt.is_main and not summary.get("stopped"):
            atomic_write_json(run / "summary.json", summary)
        return summary
    finally:
        teardown(rt)


def _prepare_dir(run: Path, resume: bool, overwrite: bool, rt: Runtime) -> Path:
    if rt.is_main:
        prepare_run_dir(run, resume, overwrite)
    rt.barrier()
    return run


def _fit(cfg: RunConfig, model: VisionBackbone, train: ImageSet, splits: DataSplits, run: Path, rt: Runtime,
         logger: MetricsLogger, resume: bool) -> dict:
    S = cfg.model.image_size
    dtrain, dval, dtest = (DeviceSet.of(s, rt.device) for s in (train, splits.val, splits.test))
    if num_batches(len(dtrain), cfg.optim.batch_size) == 0:
        raise Lm2vError(f"batch size {cfg.optim.batch_size} exceeds the {len(dtrain)} training images")
    if rt.is_main and not resume:
        save_tensors(run / "init.safetensors", trainable_state(model))
    net = wrap_model(model, rt, cfg.runtime.distributed)
    optimizer = build_optimizer(unwrap(net), cfg.optim)
    start, resumed_phase = 0, {}
    if resume:
        ckpt = load_checkpoint(run, unwrap(net), optimizer)
        start, resumed_phase = ckpt["epoch"], ckpt.get("phase", {})
        logger.truncate_after(start)
        _say(rt, f"resumed after epoch {start}")
    step_fn = torch.compile(net) if cfg.runtime.compile else net
    sched = Schedule.of(cfg.optim, num_batches(len(dtrain), cfg.optim.batch_size))
    phase = PhaseHooks.build(cfg, net, dtrain, run, rt, resumed_phase if resume else None)
    last: dict = {}
    for epoch in range(start, cfg.optim.epochs):
        t0 = time.perf_counter()
        tr = train_one_epoch(step_fn, optimizer, dtrain, epoch, sched, cfg.optim, cfg.data, S, cfg.runtime.seed, rt,
                             progress=cfg.runtime.progress and rt.is_main, **phase.loop_hooks())
        dt = time.perf_counter() - t0
        va = evaluate(step_fn, dval, S, cfg.data, rt, cfg.runtime.eval_batch_size)
        last = {"stage": cfg.stage, "epoch": epoch + 1, **tr, **phase.state(), "val_loss": va["loss"], "val_acc": va["acc"],
                "epoch_time_s": dt, "img_per_s": len(dtrain) // cfg.optim.batch_size * cfg.optim.batch_size / dt}
        logger.log(last)
        _say(rt, f"epoch {epoch + 1}/{cfg.optim.epochs}  loss {tr['train_loss']:.4f}  train acc {tr['train_acc']:.3f}  "
                 f"val acc {va['acc']:.3f}  lr {tr['lr']:.2e}  {last['img_per_s']:.0f} img/s")
        check_finite_loss(tr["train_loss"], epoch)
        if cfg.runtime.distributed != "fsdp" and rt.is_main:
            save_checkpoint(run, unwrap(net), optimizer, {"epoch": epoch + 1, "config": to_dict(cfg), "phase": phase.state()})
        if cfg.runtime.stop_after and epoch + 1 - start >= cfg.runtime.stop_after and epoch + 1 < cfg.optim.epochs:
            _say(rt, f"stopped after epoch {epoch + 1} (runtime.stop_after); continue with --resume")
            return {"stopped": True, "epoch": epoch + 1}
    te = evaluate(step_fn, dtest, S, cfg.data, rt, cfg.runtime.eval_batch_size)
    logger.log({"event": "test", "stage": cfg.stage, "epoch": cfg.optim.epochs, "test_loss": te["loss"], "test_acc": te["acc"]})
    _save_final(run, net, rt, cfg)
    return _summary(cfg, model, last, te)


def _save_final(run: Path, net: torch.nn.Module, rt: Runtime, cfg: RunConfig) -> None:
    if cfg.runtime.distributed == "fsdp" and rt.distributed:
        state = full_state_dict(net)  # a collective: every rank takes part
        if rt.is_main:
            save_tensors(run / "model.safetensors", state)
    elif rt.is_main:
        save_full_model(run / "model.safetensors", unwrap(net))


def _summary(cfg: RunConfig, model: VisionBackbone, last: dict, test: dict) -> dict:
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"stage": cfg.stage, "mode": cfg.probe.mode if cfg.stage == "probe" else None, "model": cfg.model.name,
            "pretrained": cfg.model.pretrained, "init": cfg.init, "label_ratio": cfg.labels.ratio,
            "trainable_blocks": cfg.trainable.blocks, "trainable_params": n_train, "epochs": cfg.optim.epochs,
            "train_acc": last.get("train_acc"), "val_acc": last.get("val_acc"),
            "test_acc": test["acc"], "test_loss": test["loss"]}


def _linear_probe(cfg: RunConfig, model: VisionBackbone, splits: DataSplits, run: Path, rt: Runtime,
                  logger: MetricsLogger) -> dict:
    S, bs = cfg.model.image_size, cfg.runtime.eval_batch_size
    show = cfg.runtime.progress and rt.is_main
    feats = {name: extract_features(model, DeviceSet.of(s, rt.device), S, cfg.data, rt, bs, show, f"{name} features")
             for name, s in (("train", splits.train), ("val", splits.val), ("test", splits.test))}
    labels = {name: getattr(splits, name).labels.to(rt.device) for name in feats}
    if rt.is_main:
        save_tensors(run / "init.safetensors", trainable_state(model))
    res = train_linear_grid(feats["train"], labels["train"], feats["val"], labels["val"], splits.train.num_classes,
                            cfg.probe, cfg.runtime.seed)
    for h in res.history:
        logger.log({"stage": "probe", "epoch": h["epoch"] + 1, **{f"val_acc_lr{lr:g}": a for lr, a in zip(res.val_acc, h["val_acc"])}})
    test_acc = float((res.predict(feats["test"]) == labels["test"]).float().mean())
    logger.log({"event": "test", "stage": "probe", "epoch": cfg.probe.linear_epochs, "test_acc": test_acc,
                "best_lr": res.best_lr})
    _say(rt, "linear probe val acc by lr: " + ", ".join(f"{lr:g}: {a:.3f}" for lr, a in res.val_acc.items())
         + f"  -> lr {res.best_lr:g}, test acc {test_acc:.3f}")
    with torch.no_grad():
        model.head.weight.copy_(res.weight)
        model.head.bias.copy_(res.bias)
    if rt.is_main:
        save_full_model(run / "model.safetensors", model)
    last = {"val_acc": res.val_acc[res.best_lr], "train_acc": float((res.predict(feats["train"]) == labels["train"]).float().mean())}
    summary = _summary(cfg, model, last, {"acc": test_acc, "loss": None})
    summary["best_lr"] = res.best_lr
    return summary
