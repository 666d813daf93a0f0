"""AdamW with decay only on trainable tensors of dim >= 2, and warmup + cosine as a pure function."""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from .config import OptimConfig


def base_lr(cfg: OptimConfig) -> float:
    """Peak learning rate: ``lr`` if given, else ``blr * batch_size / 256`` (the paper's rule)."""
    return cfg.lr if cfg.lr is not None else cfg.blr * cfg.batch_size / 256


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW over trainable parameters; weights (dim >= 2) decay, biases and norms do not.

    Frozen tensors never enter the optimizer, so partial training costs no optimizer state.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    fused = bool(params) and all(p.is_cuda for p in params)
    return torch.optim.AdamW(groups, lr=base_lr(cfg), betas=tuple(cfg.betas), fused=fused or None)


def lr_at(step: int, total_steps: int, warmup_steps: int, peak: float, floor: float) -> float:
    """Linear warmup to ``peak`` over ``warmup_steps``, then cosine down to ``floor`` at the end."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    span = max(total_steps - warmup_steps, 1)
    progress = min((step - warmup_steps) / span, 1.0)
    return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's lr (float, so no host sync and no recompilation)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
