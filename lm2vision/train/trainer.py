"""The one trainer: every task (classification stages, detection, segmentation) runs through
:func:`fit`, so all get the same runtime (torchrun DDP/FSDP, ``torch.compile``, amp with a
GradScaler for fp16), gradient accumulation, checkpoints, exact resume, divergence stop and
``runtime.stop_after``. A task (:class:`lm2vision.train.tasks.Task`) only says what its batches,
loss and evaluation are.
"""
from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from ..config import to_dict
from ..errors import Lm2vWarning
from ..utils.io import atomic_write_json, fault_point, remove_orphans
from .checkpoint import CKPT_DIR, load_checkpoint, save_checkpoint, save_full_model, save_tensors, trainable_state
from .distributed import Runtime, full_state_dict, unwrap, wrap_model
from .levers import apply_model_levers, compile_forward, compiled_step, resolve_levers, tensor_lr
from .loop import Schedule, check_finite_loss, train_epoch
from .optim import build_optimizer, micro_batch_size
from .phase_hooks import PhaseHooks
from .rundir import TIMING_KEYS, MetricsLogger, drop_replaced, finished_summary, read_metrics
from .tasks import Task

# hooks(net, resumed phase state or None) -> the phase-aware hooks of the run (classification stage 1)
HooksFactory = Callable[[nn.Module, "dict | None"], PhaseHooks]


def say(rt: Runtime, text: str) -> None:
    """Print on the main process only (above any progress bar)."""
    if rt.is_main:
        tqdm.write(text)


def fit(task: Task, cfg, run: Path, rt: Runtime, logger: MetricsLogger, resume: bool = False,
        hooks: HooksFactory | None = None) -> dict:
    """Train ``task.model`` for ``cfg.optim.epochs`` into the run directory ``run``; returns the summary.

    ``cfg`` is any run config with ``optim`` and ``runtime`` (RunConfig, DetectConfig, SegmentConfig);
    it is stored in every checkpoint. Writes ``init.safetensors`` (trainable weights at the start),
    one metrics record per epoch, ``checkpoints/last.*`` after each epoch, then a ``"test"`` record,
    ``model.safetensors`` and ``summary.json``. With ``runtime.stop_after`` it returns
    ``{"stopped": True, "epoch": n}`` after n epochs of this invocation (continue with ``resume``).

    ``resume`` continues from the newest whole checkpoint (see :mod:`lm2vision.train.checkpoint`) a run
    killed at any point, to the same final files as an uninterrupted run: temporary files of cut writes
    are removed, records after the checkpoint dropped, and a run killed after its last checkpoint only
    redoes the final evaluation and writes. A finished run (its summary.json readable) is left as is.
    """
    micro_batch_size(cfg.optim, rt.world_size)  # fail before any work if the batch does not split
    if rt.is_main and not resume:
        save_tensors(run / "init.safetensors", trainable_state(task.model))
    levers = resolve_levers(cfg.runtime, rt.device, rt.amp_dtype)
    apply_model_levers(task.model, levers, cfg.runtime.fp8_min_width)  # fp8 swaps layers: before the optimizer
    say(rt, levers.header())
    net = wrap_model(task.model, rt, cfg.runtime.distributed)
    optimizer = build_optimizer(unwrap(net), cfg.optim)
    # fp16 gradients underflow without loss scaling; bf16 and fp32 need none (the scaler is then a no-op)
    scaler = torch.amp.GradScaler(rt.device.type, enabled=rt.amp_dtype == torch.float16)
    start, state = 0, {}
    if resume:
        done = finished_summary(run)
        if done is not None:
            say(rt, f"{run} is finished (summary.json); nothing to resume")
            return {**done, "finished_before": True}
        state = _resume(run, net, optimizer, scaler, logger, rt)
        start = state["epoch"]
    forward = compile_forward(net, levers)
    step_fn = None
    if levers.compile_optimizer:  # after resume: the loaded param groups hold a float lr
        tensor_lr(optimizer)
        step_fn = compiled_step(optimizer)
    phase = hooks(net, state.get("phase", {}) if resume else None) if hooks else PhaseHooks()
    last, val = _record_of(logger, start) if start >= cfg.optim.epochs else ({}, {})
    for epoch in range(start, cfg.optim.epochs):
        last, val = _epoch(task, cfg, epoch, net, forward, optimizer, scaler, phase, rt, step_fn)
        logger.log(last)
        say(rt, epoch_line(last, cfg.optim.epochs))
        check_finite_loss(last["train_loss"], epoch)
        fault_point("before_checkpoint")
        _checkpoint(run, net, optimizer, scaler, cfg, rt, {"epoch": epoch + 1, "phase": phase.state()})
        stop = cfg.runtime.stop_after
        if stop and epoch + 1 - start >= stop and epoch + 1 < cfg.optim.epochs:
            say(rt, f"stopped after epoch {epoch + 1} (runtime.stop_after); continue with --resume")
            return {"stopped": True, "epoch": epoch + 1}
    fault_point("after_last_checkpoint")
    return _finish(task, cfg, run, net, forward, rt, logger, last, val)


def _resume(run: Path, net: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
            logger: MetricsLogger, rt: Runtime) -> dict:
    """Load the newest whole checkpoint (after clearing temporary files of cut writes) and drop the
    records logged after it; returns its state."""
    if rt.is_main:
        gone = remove_orphans([run, run / CKPT_DIR])
        if gone:
            warnings.warn(f"removed {len(gone)} temporary file(s) of writes cut by a kill: "
                          f"{', '.join(str(p.relative_to(run)) for p in gone)}", Lm2vWarning)
    rt.barrier()
    state = load_checkpoint(run, unwrap(net), optimizer)
    if "scaler" in state:
        scaler.load_state_dict(state["scaler"])
    logger.truncate_after(state["epoch"])
    say(rt, f"resumed after epoch {state['epoch']} ({state['source']})")
    return state


def _record_of(logger: MetricsLogger, epoch: int) -> tuple[dict, dict]:
    """The last epoch's (record, validation metrics) read back from metrics.jsonl: a run killed after
    its last checkpoint finishes with exactly the figures it logged."""
    record = logger.epoch_record(epoch)
    return record, {k[4:]: v for k, v in record.items() if k.startswith("val_")}


def _epoch(task: Task, cfg, epoch: int, net: nn.Module, forward: nn.Module, optimizer: torch.optim.Optimizer,
           scaler: torch.amp.GradScaler, phase: PhaseHooks, rt: Runtime,
           step_fn: Callable[[], None] | None = None) -> tuple[dict, dict]:
    """Train one epoch and evaluate when due: (the epoch's metrics record, the validation metrics)."""
    sched = Schedule.of(cfg.optim, task.steps_per_epoch)
    t0 = time.perf_counter()
    tr = train_epoch(task, epoch, net, optimizer, sched, cfg.optim, cfg.runtime.seed, rt, forward=forward,
                     scaler=scaler, progress=cfg.runtime.progress and rt.is_main, step_fn=step_fn,
                     **phase.loop_hooks())
    dt = time.perf_counter() - t0
    due = epoch + 1 == cfg.optim.epochs or (epoch + 1) % task.eval_every == 0
    val = task.evaluate(forward, "val") if due else {}
    record = {"stage": task.name, "epoch": epoch + 1, **tr, **phase.state(), **{f"val_{k}": v for k, v in val.items()},
              "epoch_time_s": dt, "img_per_s": task.steps_per_epoch * cfg.optim.batch_size / dt}
    if cfg.runtime.test_each_epoch and not task.test_is_val:
        record["test_acc_epoch"] = task.evaluate(forward, "test")["acc"]  # the authors' figure; selects nothing
    return record, val


def epoch_line(record: dict, epochs: int) -> str:
    """One line per epoch: every number of the record, then the throughput."""
    skip = ("stage", "epoch", *TIMING_KEYS)
    nums = "  ".join(f"{k} {v:.4g}" for k, v in record.items()
                     if k not in skip and isinstance(v, (int, float)) and not isinstance(v, bool))
    return f"epoch {record['epoch']}/{epochs}  {nums}  {record['img_per_s']:.0f} img/s"


def _checkpoint(run: Path, net: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, cfg,
                rt: Runtime, state: dict) -> None:
    if cfg.runtime.distributed == "fsdp" and rt.distributed:
        return  # sharded optimizer state: FSDP runs are not resumable yet
    if rt.is_main:
        extra = {"scaler": scaler.state_dict()} if scaler.is_enabled() else {}
        save_checkpoint(run, unwrap(net), optimizer, {**state, "config": to_dict(cfg), **extra})
        drop_replaced(run)  # the new run has started: the run --overwrite moved aside can go


def _finish(task: Task, cfg, run: Path, net: nn.Module, forward: nn.Module, rt: Runtime, logger: MetricsLogger,
            last: dict, val: dict) -> dict:
    """The final figures (test split once, or the last validation's), final weights and summary."""
    test = val if task.test_is_val and val else task.evaluate(forward, "test")
    logger.log({"event": "test", "stage": task.name, "split": task.test_split, "epoch": cfg.optim.epochs,
                **{f"test_{k}": v for k, v in test.items()}})
    save_final(run, net, rt, cfg.runtime.distributed)
    fault_point("before_summary")
    summary = task.summary(last, test)
    summary.update(authors_best(run, cfg) if rt.is_main else {})
    if rt.is_main:
        atomic_write_json(run / "summary.json", summary)
    return summary


def authors_best(run: Path, cfg) -> dict:
    """With ``runtime.test_each_epoch``: the best test accuracy over epochs and its epoch, the figure
    the method's authors report, labelled as theirs; the summary's ``test_acc`` stays the final epoch's."""
    if not cfg.runtime.test_each_epoch:
        return {}
    recs = [r for r in read_metrics(run) if "test_acc_epoch" in r]
    if not recs:
        return {}
    best = max(recs, key=lambda r: r["test_acc_epoch"])
    return {"test_acc_best_epoch": best["test_acc_epoch"], "best_epoch": best["epoch"],
            "test_acc_best_epoch_note": "the authors' way of reporting (max over epochs of test accuracy); not used to select"}


def save_final(run: Path, net: nn.Module, rt: Runtime, distributed: str) -> None:
    """Every tensor of the trained model to ``run/model.safetensors`` (gathered from FSDP shards)."""
    if distributed == "fsdp" and rt.distributed:
        state = full_state_dict(net)  # a collective: every rank takes part
        if rt.is_main:
            save_tensors(run / "model.safetensors", state)
    elif rt.is_main:
        save_full_model(run / "model.safetensors", unwrap(net))
