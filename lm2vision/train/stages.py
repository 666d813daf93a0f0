"""The three stages as one pipeline: stage 1 ``bridge`` (random labels), stage 2 ``probe``
(reinit | linear | finetune on real labels) and ``train`` (the supervised baseline).

Choices (learning rate of the probe, anything else) are made on the validation split; the test
split is evaluated once, after the last epoch, and that final-epoch figure is what is reported.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..config import save_config
from ..data import DataConfig, DataSplits, ImageSet, eval_transform, load_imageset_splits, random_labels, save_labels
from ..data.fingerprint import dataset_source, fingerprint
from ..errors import Lm2vError
from ..models import VisionBackbone, apply_trainable, create_backbone, model_preprocessing, trainable_summary
from ..utils.io import atomic_write_json
from .checkpoint import load_full_model, save_full_model, save_tensors, trainable_state
from .config import RunConfig, check_run_config
from .distributed import Runtime, setup_runtime, teardown
from .loop import device_set, extract_features
from .phase_hooks import PhaseHooks
from .probe import train_linear_grid
from .recipe import check_init_model, stage_seed
from .rundir import (LABELS, MetricsLogger, build_architecture, check_data, check_target, open_run, record_data,
                     resume_state, save_predictions)
from .tasks import classification_summary, classification_task
from .trainer import fit, say as _say


def prepare_model(cfg: RunConfig, num_classes: int) -> VisionBackbone:
    """The stage's starting model: ``cfg.init``'s final weights on ``cfg.model``'s architecture (the
    init run's, with this stage's dropout, checkpointing, kernels), or built from ``cfg.model``.

    Stage 2 gives the model a new head, and ``reinit`` a new patch embedding, drawn from
    :func:`stage_seed` (so they differ from the bridge's starting weights and vary with the seed);
    every other tensor stays as loaded. ``cfg.trainable`` is applied as given.
    """
    if cfg.init:
        check_init_model(cfg)
        model = build_architecture(cfg)
        load_full_model(Path(cfg.init) / "model.safetensors", model)
    else:
        cfg.model.num_classes = num_classes
        model = create_backbone(cfg.model)
    if cfg.stage == "probe":
        if cfg.probe.mode == "reinit":
            model.reset_patch_embed(seed=stage_seed(cfg, 1))
        model.reset_classifier(num_classes, seed=stage_seed(cfg, 2))  # the bridge head learned random labels
    elif model.cfg.num_classes != num_classes:
        model.reset_classifier(num_classes, seed=stage_seed(cfg, 2))
    cfg.model.num_classes = num_classes
    apply_trainable(model, cfg.trainable)
    check_probe_trainable(model, cfg)
    return model


def apply_model_preprocessing(cfg: RunConfig) -> str | None:
    """Give an image model its own preprocessing: ``model.image_size`` and ``data.mean/std`` set to
    what it declares (``model.preprocessing=auto``), or kept as configured (``data``). Returns the
    run-header line saying which, or None for a language backbone (``data.*`` and ``model.*`` apply)."""
    prep = model_preprocessing(cfg.model)
    if prep is None:
        return None
    fmt = lambda v: "(" + ", ".join(f"{x:g}" for x in v) + ")"  # noqa: E731
    declared = f"{prep.image_size or 'any '}px, mean {fmt(prep.mean)}, std {fmt(prep.std)} ({prep.source})"
    if cfg.model.preprocessing == "data":
        return (f"preprocessing: data.mean {fmt(cfg.data.mean)}, std {fmt(cfg.data.std)}, {cfg.model.image_size}px "
                f"(model.preprocessing=data; the model declares {declared})")
    cfg.model.image_size = prep.image_size or cfg.model.image_size
    cfg.data.mean, cfg.data.std = list(prep.mean), list(prep.std)
    return (f"preprocessing: the model's own, {cfg.model.image_size}px, mean {fmt(prep.mean)}, std {fmt(prep.std)} "
            f"({prep.source}); model.preprocessing=data keeps data.mean/std and model.image_size")


def check_probe_trainable(model: VisionBackbone, cfg: RunConfig) -> None:
    """Refuse a stage-2 ``trainable`` that contradicts its mode, in one line: ``reinit`` re-draws the
    patch embedding and head, so both must train; ``linear`` fits heads on frozen features."""
    if cfg.stage != "probe":
        return
    groups = model.layer_groups()
    train = {n for n, p in model.named_parameters() if p.requires_grad}
    if cfg.probe.mode == "reinit":
        frozen = [g for g in ("patch", "head") if not set(groups[g]) <= train]
        if frozen:
            raise Lm2vError(f"probe.mode=reinit re-draws the patch embedding and head, but trainable leaves "
                            f"{' and '.join(frozen)} frozen: add them to trainable.groups")
    elif cfg.probe.mode == "linear" and train - set(groups["head"]):
        raise Lm2vError(f"probe.mode=linear fits heads on frozen features, but trainable selects "
                        f"{len(train - set(groups['head']))} other tensors (e.g. {sorted(train - set(groups['head']))[0]}): "
                        "use probe.mode=reinit or finetune to train them")


def stage_train_set(cfg: RunConfig, train: ImageSet, run: Path, rt: Runtime) -> ImageSet:
    """The training set with the stage's labels; stage 1 redraws a share of them and saves them."""
    if cfg.labels.ratio == 0:
        return train
    labels, changed = random_labels(train.labels, train.num_classes, cfg.labels.ratio, cfg.labels.scheme, cfg.labels.seed)
    if rt.is_main:
        save_labels(run / LABELS, labels, changed)
    _say(rt, f"random labels: {int(changed.sum())} of {len(train)} training labels redrawn ({cfg.labels.scheme})")
    return train.with_labels(labels)


def run_inputs(cfg: RunConfig) -> list[Path]:
    """What a stage reads that its run directory must never be or hold: the --init run, a local
    dataset, a local model folder."""
    paths = [Path(cfg.init)] if cfg.init else []
    if cfg.data.dataset != "bundled":
        paths.append(dataset_source(cfg.data))
    if Path(cfg.model.name).expanduser().exists():
        paths.append(Path(cfg.model.name))
    return paths


def run_stage(cfg: RunConfig, out: str | Path, resume: bool = False, overwrite: bool = False) -> dict:
    """Run one stage into the run directory ``out``; returns the summary (also in summary.json).

    The config, the data and the model are checked and built before ``out`` is touched
    (:func:`~lm2vision.train.rundir.open_run`). ``resume`` continues an unfinished run from its last
    checkpoint (``cfg`` may differ from the saved config in ``runtime.*`` only), and on a finished
    run returns its summary with ``"finished_before": True``, changing nothing.
    """
    check_run_config(cfg)
    note = apply_model_preprocessing(cfg)  # before resume_state: the saved config holds the resolved values
    inputs = run_inputs(cfg)  # the same for a resumed config, which differs in runtime.* only
    run = check_target(out, inputs)
    cfg, finished = resume_state(run, cfg, resume)
    if finished:
        return finished
    rt = setup_runtime(cfg.runtime)
    try:
        torch.manual_seed(cfg.runtime.seed)
        splits = load_splits(cfg.data, rt)
        data = fingerprint(cfg.data)
        model = prepare_model(cfg, splits.train.num_classes).to(rt.device)
        with open_run(run, resume=resume, overwrite=overwrite, inputs=inputs, rt=rt):
            return _run_in(cfg, run, splits, data, model, resume, rt, note)
    finally:
        teardown(rt)


def _run_in(cfg: RunConfig, run: Path, splits: DataSplits, data: dict, model: VisionBackbone, resume: bool,
            rt: Runtime, note: str | None = None) -> dict:
    """The stage inside its (locked) run directory; ``note``: the preprocessing line of an image model."""
    _say(rt, f"[{cfg.stage}] {cfg.model.name} ({'pretrained' if cfg.model.pretrained else 'scratch'}) -> {run}\n"
             + (f"{note}\n" if note else "") +
             f"runtime: {rt.device}, {rt.world_size} process(es), amp {rt.amp_dtype or 'off'}\n"
             f"data: {len(splits.train)} train / {len(splits.val)} val / {len(splits.test)} test, "
             f"{splits.train.num_classes} classes\n{trainable_summary(model)}")
    if resume:
        check_data(run, data, cfg.runtime.allow_data_change)
    elif rt.is_main:
        save_config(cfg, run / "config.yaml")
        record_data(run, data)
    train = stage_train_set(cfg, splits.train, run, rt)
    logger = MetricsLogger.for_run(run, cfg.runtime, enabled=rt.is_main)
    try:
        if cfg.stage == "probe" and cfg.probe.mode == "linear":
            summary = _linear_probe(cfg, model, splits, run, rt, logger)
            if rt.is_main:
                atomic_write_json(run / "summary.json", summary)
            return summary
        return _fit(cfg, model, train, splits, run, rt, logger, resume)
    finally:
        logger.close()


def load_splits(dcfg: DataConfig, rt: Runtime) -> DataSplits:
    """The stage's data, in memory or streamed as ``data.storage`` says (the choice is printed). With
    ``data.download`` under torchrun, rank 0 reads (and downloads) first and the others wait at a
    barrier, so no two processes write the same files."""
    if not (dcfg.download and rt.distributed):
        splits = load_imageset_splits(dcfg, stream_ok=True)
    else:
        splits = load_imageset_splits(dcfg, stream_ok=True) if rt.is_main else None
        rt.barrier()
        splits = splits if splits is not None else load_imageset_splits(dcfg, stream_ok=True)
    if splits.note:
        _say(rt, splits.note)
    return splits


def _fit(cfg: RunConfig, model: VisionBackbone, train: ImageSet, splits: DataSplits, run: Path, rt: Runtime,
         logger: MetricsLogger, resume: bool) -> dict:
    """Train the stage through the one trainer (phase-aware hooks for stage 1)."""
    task = classification_task(cfg, model, train, splits, rt, run)
    return fit(task, cfg, run, rt, logger, resume,
               hooks=lambda net, resumed: PhaseHooks.build(cfg, net, task.data, run, rt, resumed))


def _linear_probe(cfg: RunConfig, model: VisionBackbone, splits: DataSplits, run: Path, rt: Runtime,
                  logger: MetricsLogger) -> dict:
    S, bs = cfg.model.image_size, cfg.runtime.eval_batch_size
    show = cfg.runtime.progress and rt.is_main
    feats = {name: extract_features(model, device_set(s, rt.device, cfg.data), bs, show,
                                    lambda x: eval_transform(x, S, cfg.data), rt, f"{name} features")
             for name, s in (("train", splits.train), ("val", splits.val), ("test", splits.test))}
    labels = {name: getattr(splits, name).labels.to(rt.device) for name in feats}
    if rt.is_main:
        save_tensors(run / "init.safetensors", trainable_state(model))
    res = train_linear_grid(feats["train"], labels["train"], feats["val"], labels["val"], splits.train.num_classes,
                            cfg.probe, cfg.runtime.seed)
    for h in res.history:
        logger.log({"stage": "probe", "epoch": h["epoch"] + 1, **{f"val_acc_lr{lr:g}": a for lr, a in zip(res.val_acc, h["val_acc"])}})
    test_pred = res.predict(feats["test"])
    test_acc = float((test_pred == labels["test"]).float().mean())
    if rt.is_main:
        save_predictions(run, test_pred, labels["test"])
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
    summary = classification_summary(cfg, model, last, {"acc": test_acc, "loss": None})
    summary["best_lr"] = res.best_lr
    return summary
