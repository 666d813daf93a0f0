"""AdamW with decay only on trainable weight matrices (timm's ``no_weight_decay`` honoured), and
warmup + cosine as a pure function."""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from ..errors import Lm2vError
from .config import OptimConfig


def base_lr(cfg: OptimConfig) -> float:
    """Peak learning rate: ``lr`` if given, else ``blr * batch_size / 256`` (the paper's rule)."""
    return cfg.lr if cfg.lr is not None else cfg.blr * cfg.batch_size / 256


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW over trainable parameters; weights (dim >= 2) decay, biases, norms and position tables do not.

    A parameter skips decay if it has dim < 2 or its name is in ``no_weight_decay()`` of a module that
    has one (timm's hook; a backbone inside a dense model counts, under its prefix). Frozen tensors never
    enter the optimizer, so partial training costs no optimizer state. Parameters keep the order of
    ``named_parameters``: checkpoint resume maps optimizer state by index.
    """
    skip = _no_weight_decay(model)
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    decay = [p for n, p in params if p.dim() >= 2 and n not in skip]
    no_decay = [p for n, p in params if p.dim() < 2 or n in skip]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    fused = bool(params) and all(p.is_cuda for _, p in params)
    return torch.optim.AdamW(groups, lr=base_lr(cfg), betas=tuple(cfg.betas), fused=fused or None)


def _no_weight_decay(model: nn.Module) -> set[str]:
    names: set[str] = set()
    for prefix, module in model.named_modules():
        if callable(getattr(module, "no_weight_decay", None)):
            names |= {f"{prefix}.{n}" if prefix else n for n in module.no_weight_decay()}
    return names


def lr_at(step: int, total_steps: int, warmup_steps: int, peak: float, floor: float) -> float:
    """Linear warmup to ``peak`` over ``warmup_steps``, then cosine down to ``floor`` at the end."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    span = max(total_steps - warmup_steps, 1)
    progress = min((step - warmup_steps) / span, 1.0)
    return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's lr: a float (no host sync), or in place where it is a tensor (the compiled
    optimizer step reads it as an input, so a new lr does not recompile)."""
    for group in optimizer.param_groups:
        if torch.is_tensor(group["lr"]):
            group["lr"].fill_(lr)
        else:
            group["lr"] = lr


def micro_batch_size(cfg: OptimConfig, world_size: int = 1) -> int:
    """Images per forward on one process: the global ``batch_size`` split over ``world_size``
    processes and ``accum_steps`` micro-batches (nanoGPT's gradient accumulation)."""
    parts = cfg.accum_steps * world_size
    if cfg.accum_steps < 1 or cfg.batch_size % parts:
        raise Lm2vError(f"optim.batch_size {cfg.batch_size} must split into optim.accum_steps {cfg.accum_steps} "
                        f"x {world_size} process(es) equal micro-batches")
    return cfg.batch_size // parts
