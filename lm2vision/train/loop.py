"""The classification training loop: data on the device once, augmentation on the device, no host
sync inside an epoch, every random draw a pure function of (seed, epoch) so resumes are exact."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..data import DataConfig, ImageSet, apply_crop_params, epoch_batches, eval_batches, eval_transform
from ..data.transforms import sample_crop_params
from ..errors import Lm2vError
from .config import OptimConfig
from .distributed import Runtime
from .optim import base_lr, lr_at, set_lr


@dataclass
class DeviceSet:
    """An ImageSet moved to the device once: uint8 images (N, 3, H, W) and labels (N,)."""

    images: torch.Tensor
    labels: torch.Tensor

    @classmethod
    def of(cls, s: ImageSet, device: torch.device) -> "DeviceSet":
        return cls(s.images.to(device), s.labels.to(device))

    def __len__(self) -> int:
        return self.images.shape[0]


def check_finite_loss(loss: float, epoch: int) -> None:
    """Stop a diverged run with a one-line error instead of training on NaN for the remaining epochs.

    Called once per epoch, after the epoch's metrics are logged and before its checkpoint is written,
    so the last checkpoint on disk is the last finite one (epoch ``epoch``, 0-based: none if 0).
    """
    if not math.isfinite(loss):
        kept = f"checkpoints/last.safetensors still holds epoch {epoch}" if epoch else "no checkpoint was written"
        raise Lm2vError(f"training diverged: the train loss of epoch {epoch + 1} is {loss}; {kept}; "
                        "lower optim.blr (or optim.lr) or raise optim.warmup_epochs")


def epoch_seed(seed: int, epoch: int) -> int:
    """A 63-bit seed that depends on (seed, epoch) only."""
    state = np.random.SeedSequence([seed, epoch, 7]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


@dataclass
class Schedule:
    """Warmup + cosine over the whole stage, in optimizer steps."""

    total_steps: int
    warmup_steps: int
    peak: float
    floor: float

    @classmethod
    def of(cls, cfg: OptimConfig, steps_per_epoch: int) -> "Schedule":
        return cls(cfg.epochs * steps_per_epoch, round(cfg.warmup_epochs * steps_per_epoch), base_lr(cfg), cfg.min_lr)

    def __call__(self, step: int) -> float:
        return lr_at(step, self.total_steps, self.warmup_steps, self.peak, self.floor)


def epoch_plan(n: int, epoch: int, seed: int, batch_size: int, dcfg: DataConfig, aspect: float, rt: Runtime,
               ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """This rank's batch indices (steps, b) and crop parameters (steps, b, 5) for one epoch, moved to
    the device in one copy each, so the steps need no host-to-device traffic.

    Both are pure functions of (seed, epoch); the crop parameters are drawn for the global batch and
    sliced, so every rank's images are augmented exactly as in a single process.
    """
    local = batch_size // rt.world_size
    batches = list(epoch_batches(n, batch_size, epoch, seed, rank=rt.rank, world_size=rt.world_size))
    order = torch.stack(batches) if batches else torch.zeros(0, local, dtype=torch.long)
    params = None
    if dcfg.augment != "none":
        gen = torch.Generator().manual_seed(epoch_seed(seed, epoch))
        drawn = sample_crop_params(len(batches) * batch_size, gen, dcfg, aspect).view(len(batches), batch_size, 5)
        params = drawn[:, rt.rank * local:(rt.rank + 1) * local].to(rt.device)
    return order.to(rt.device), params


def train_one_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, data: DeviceSet, epoch: int,
                    sched: Schedule, ocfg: OptimConfig, dcfg: DataConfig, image_size: int, seed: int,
                    rt: Runtime, extra_loss: Callable[[nn.Module, int], torch.Tensor | None] | None = None,
                    lr_scale: Callable[[int], float] | None = None, progress: bool = True) -> dict:
    """One epoch over ``data``; returns mean loss/accuracy over all ranks (one sync at the end).

    ``lr_scale(step)`` multiplies the scheduled lr and ``extra_loss(model, step)`` adds a term to
    the loss (phase-aware training uses both).
    """
    model.train()
    torch.manual_seed(epoch_seed(seed, epoch) + rt.rank)  # dropout
    aspect = data.images.shape[-1] / data.images.shape[-2]
    order, params = epoch_plan(len(data), epoch, seed, ocfg.batch_size, dcfg, aspect, rt)
    steps = order.shape[0]
    trainable = [p for p in model.parameters() if p.requires_grad]
    sums = torch.zeros(2, device=rt.device)  # sum of loss * b, correct
    for it in tqdm(range(steps), desc=f"epoch {epoch + 1}", leave=False, disable=not progress):
        step = epoch * steps + it
        images, y = data.images[order[it]], data.labels[order[it]]  # (b, 3, H, W) uint8, (b,)
        if params is None:
            x = eval_transform(images, image_size, dcfg)
        else:
            x = apply_crop_params(images, params[it], image_size, dcfg)  # (b, 3, S, S)
        set_lr(optimizer, sched(step) * (lr_scale(step) if lr_scale else 1.0))
        with rt.autocast():
            logits = model(x)  # (b, K)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=ocfg.label_smoothing)
            penalty = extra_loss(model, step) if extra_loss else None
        (loss + penalty if penalty is not None else loss).backward()
        if ocfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(trainable, ocfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sums += torch.stack([loss.detach() * len(y), (logits.argmax(-1) == y).sum().float()])
    count = torch.tensor([float(order.numel())], device=rt.device)  # this rank's images
    loss_sum, correct, n = rt.all_reduce_sum(torch.cat([sums, count])).tolist()  # one reduction, one sync
    n = max(n, 1.0)
    return {"train_loss": loss_sum / n, "train_acc": correct / n, "lr": sched(epoch * steps + steps - 1)}


@torch.no_grad()
def evaluate(model: nn.Module, data: DeviceSet, image_size: int, dcfg: DataConfig, rt: Runtime,
             batch_size: int = 256) -> dict:
    """Loss (no smoothing) and top-1 accuracy over every image of ``data``, summed over ranks."""
    model.eval()
    sums = torch.zeros(3, device=rt.device)
    for idx in eval_batches(len(data), batch_size * rt.world_size, rt.rank, rt.world_size):
        if len(idx) == 0:
            continue
        idx = idx.to(data.images.device)
        x = eval_transform(data.images[idx], image_size, dcfg)
        y = data.labels[idx]
        with rt.autocast():
            logits = model(x).float()
        sums += torch.stack([F.cross_entropy(logits, y, reduction="sum"), (logits.argmax(-1) == y).sum().float(),
                             torch.tensor(float(len(y)), device=rt.device)])
    total = rt.all_reduce_sum(sums).tolist()
    return {"loss": total[0] / max(total[2], 1), "acc": total[1] / max(total[2], 1)}


@torch.no_grad()
def extract_features(model: nn.Module, data: DeviceSet, image_size: int, dcfg: DataConfig, rt: Runtime,
                     batch_size: int = 256, progress: bool = False, desc: str = "features") -> torch.Tensor:
    """Pooled features (N, C) of every image, in order, in float32 (one forward pass)."""
    model.eval()
    feats = []
    batches = eval_batches(len(data), batch_size)
    for idx in tqdm(batches, total=-(-len(data) // batch_size), desc=desc, leave=False, disable=not progress):
        x = eval_transform(data.images[idx.to(data.images.device)], image_size, dcfg)
        with rt.autocast():
            feats.append(model.forward_head(model.forward_features(x), pre_logits=True).float())
    return torch.cat(feats)
