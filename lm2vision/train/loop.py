"""One training epoch of any task (:func:`train_epoch`: micro-batches, gradient accumulation, amp,
clipping), and classification's data path: data on the device once, augmentation on the device, no
host sync inside an epoch, every random draw a pure function of (seed, epoch) so resumes are exact.

The run around the epochs (checkpoints, resume, evaluation) is :func:`lm2vision.train.trainer.fit`."""
from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..data import DataConfig, ImageSet, augment_batch, check_augment, epoch_batches, eval_batches, eval_transform
from ..data.loader import num_batches
from ..data.stream import LazyImageSet, stream_batches
from ..data.transforms import kornia_settings, sample_crop_params
from ..errors import Lm2vError
from .config import OptimConfig
from .distributed import Runtime
from .optim import base_lr, lr_at, micro_batch_size, set_lr


@dataclass
class DeviceSet:
    """An ImageSet moved to the device once: uint8 images (N, 3, H, W) and labels (N,).

    Like :class:`StreamSet`, it gives the uint8 images of index batches (:meth:`gather`), its
    ``aspect`` (W / H) and its first images (:meth:`first`): the training loop, evaluation, feature
    extraction and the phase probe use only these, so they run unchanged on either."""

    images: torch.Tensor
    labels: torch.Tensor

    @classmethod
    def of(cls, s: ImageSet, device: torch.device) -> "DeviceSet":
        return cls(s.images.to(device), s.labels.to(device))

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def aspect(self) -> float:
        return self.images.shape[-1] / self.images.shape[-2]

    def gather(self, index_batches: Iterable[torch.Tensor]) -> Iterator[torch.Tensor]:
        """The uint8 images (m, 3, H, W) of each index batch, in order, on the device."""
        for idx in index_batches:
            yield self.images[idx.to(self.images.device)]

    def first(self, n: int) -> torch.Tensor:
        """The first ``n`` images (fewer if the set is smaller)."""
        return self.images[:n]


@dataclass
class StreamSet:
    """A :class:`LazyImageSet` streamed to the device: each index batch decoded by ``workers`` DataLoader
    processes (:func:`stream_batches`), pinned, copied with ``non_blocking``; labels (N,) on the device.
    The same index batches give the same uint8 images as the set's :class:`DeviceSet`."""

    source: LazyImageSet
    labels: torch.Tensor
    device: torch.device
    workers: int = 0
    prefetch: int = 2

    @classmethod
    def of(cls, s: LazyImageSet, device: torch.device, dcfg: DataConfig) -> "StreamSet":
        return cls(s, s.labels.to(device), device, dcfg.workers, dcfg.prefetch)

    def __len__(self) -> int:
        return len(self.source)

    @property
    def aspect(self) -> float:
        return self.source.shape[1] / self.source.shape[0]

    def gather(self, index_batches: Iterable[torch.Tensor]) -> Iterator[torch.Tensor]:
        """The uint8 images (m, 3, H, W) of each index batch, in order, decoded ahead in the workers."""
        rows = index_batches.cpu().tolist() if isinstance(index_batches, torch.Tensor) else \
            [idx.tolist() for idx in index_batches]  # one host copy for the whole epoch
        pin = self.device.type == "cuda"
        for batch in stream_batches(self.source, rows, self.workers, self.prefetch, pin):
            yield batch.to(self.device, non_blocking=pin)

    def first(self, n: int) -> torch.Tensor:
        """The first ``n`` images (fewer if the set is smaller)."""
        return self.source.load(range(min(n, len(self)))).to(self.device)


def device_set(s: ImageSet | LazyImageSet, device: torch.device, dcfg: DataConfig) -> DeviceSet | StreamSet:
    """A split on the device: in memory (:class:`DeviceSet`) or streamed (:class:`StreamSet`)."""
    return StreamSet.of(s, device, dcfg) if isinstance(s, LazyImageSet) else DeviceSet.of(s, device)


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
    sliced, so every rank's images are cropped and flipped exactly as in a single process (kornia's
    AutoAugment and random erasing are not: see :meth:`ClassificationSteps.batches`).
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


@dataclass
class ClassificationSteps:
    """The training steps of image classification on a :class:`DeviceSet`: which micro-batches an
    epoch has, and the loss of one. Batches and crops come from :func:`epoch_plan`, so they are the
    same for any number of processes and micro-batches (AutoAugment and random erasing are not, see
    :meth:`batches`)."""

    data: DeviceSet | StreamSet
    dcfg: DataConfig
    image_size: int
    seed: int
    batch_size: int  # global, per optimizer step
    label_smoothing: float
    rt: Runtime

    def __post_init__(self) -> None:
        check_augment(self.dcfg)  # kornia missing: one line now, not at the first batch

    @property
    def steps_per_epoch(self) -> int:
        return num_batches(len(self.data), self.batch_size)

    def batches(self, epoch: int, accum: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This rank's micro-batches ``(x (m, 3, S, S) float, y (m,))``: each step's slice of the global
        batch cut into ``accum`` contiguous parts, augmented on the device (:func:`augment_batch`).

        The crop and flip are drawn for the global batch, so they do not depend on the number of ranks
        or micro-batches. AutoAugment and random erasing (kornia) are drawn per micro-batch from
        :meth:`augment_seed` (run seed, epoch, step, rank, micro-batch): a step always gets the same
        augmentation, so resumes are exact, but with several ranks or ``accum > 1`` it is not the one a
        single process would draw, and kornia's draws on an accelerator differ from those on the CPU.
        """
        order, params = epoch_plan(len(self.data), epoch, self.seed, self.batch_size, self.dcfg, self.data.aspect,
                                   self.rt)
        steps, local = order.shape
        order = order.reshape(steps * accum, local // accum)  # (micro-batches, m)
        params = None if params is None else params.reshape(steps * accum, local // accum, 5)
        seeded = bool(kornia_settings(self.dcfg))
        for i, images in enumerate(self.data.gather(order)):  # (m, 3, H, W) uint8
            y = self.data.labels[order[i]]  # (m,)
            crop = None if params is None else params[i]  # (m, 5)
            seed = self.augment_seed(epoch, i // accum, i % accum) if seeded else None
            yield augment_batch(images, crop, self.image_size, self.dcfg, seed), y

    def augment_seed(self, epoch: int, step: int, micro: int) -> int:
        """The 63-bit seed of kornia's draws for micro-batch ``micro`` of optimizer step ``step`` (counted
        within ``epoch``) on this rank: a pure function of (run seed, epoch, step, rank, micro)."""
        state = np.random.SeedSequence([self.seed, epoch, step, self.rt.rank, micro, 11]).generate_state(2, np.uint32)
        return (int(state[0]) << 31) ^ int(state[1])

    def loss(self, model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Smoothed cross-entropy, and the sums (loss * m, correct, m) of the epoch's statistics."""
        x, y = batch
        logits = model(x)  # (m, K)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=self.label_smoothing)
        m = logits.new_full((), len(y), dtype=torch.float32)  # a fill on the device: no host copy
        return loss, torch.stack([loss.detach() * len(y), (logits.argmax(-1) == y).sum().float(), m])

    def train_metrics(self, sums: list[float]) -> dict:
        loss_sum, correct, n = sums
        n = max(n, 1.0)
        return {"train_loss": loss_sum / n, "train_acc": correct / n}


def _grad_sync(net: nn.Module, on: bool):
    """DDP all-reduces gradients on every backward; while accumulating, only the last micro-batch's
    backward should (FSDP2 has no ``no_sync``: it reduce-scatters each micro-batch, same result)."""
    no_sync = getattr(net, "no_sync", None)
    return nullcontext() if on or no_sync is None else no_sync()


def train_epoch(task, epoch: int, net: nn.Module, optimizer: torch.optim.Optimizer, sched: Schedule,
                ocfg: OptimConfig, seed: int, rt: Runtime, forward: nn.Module | None = None,
                scaler: torch.amp.GradScaler | None = None,
                extra_loss: Callable[[nn.Module, int], torch.Tensor | None] | None = None,
                lr_scale: Callable[[int], float] | None = None, progress: bool = True,
                step_fn: Callable[[], None] | None = None) -> dict:
    """One epoch of any task (see :class:`lm2vision.train.tasks.Task`); returns ``task.train_metrics``
    of its statistics summed over micro-batches and ranks (one sync at the end) and the lr.

    Each optimizer step runs ``ocfg.accum_steps`` micro-batches, each loss scaled by 1/accum_steps, so
    the update is that of the whole global batch. ``forward`` (default ``net``; e.g. its compiled
    version) runs the model; ``net`` is the DDP wrapper whose gradient sync waits for the last
    micro-batch. ``lr_scale(step)`` multiplies the scheduled lr and ``extra_loss(model, step)`` adds a
    term to the loss once per step (phase-aware training uses both). ``scaler``: fp16's GradScaler.
    ``step_fn``: the optimizer step to call instead of ``optimizer.step`` (its compiled version).
    """
    forward = forward if forward is not None else net
    forward.train()
    torch.manual_seed(epoch_seed(seed, epoch) + rt.rank)  # dropout
    micro_batch_size(ocfg, rt.world_size)  # one-line error if the batch does not split evenly
    A, steps = ocfg.accum_steps, task.steps_per_epoch
    micro = iter(task.batches(epoch, A))
    trainable = [p for p in net.parameters() if p.requires_grad]
    sums = None
    for it in tqdm(range(steps), desc=f"epoch {epoch + 1}", leave=False, disable=not progress):
        step = epoch * steps + it
        set_lr(optimizer, sched(step) * (lr_scale(step) if lr_scale else 1.0))
        for k in range(A):
            with _grad_sync(net, k == A - 1):
                with rt.autocast():
                    loss, stats = task.loss(forward, next(micro))
                # outside autocast: the phase penalty compares two kernels, and a bf16 kernel is not
                # similar to its own fp32 reference (S(0) != 1 would put a spurious gradient on every step)
                penalty = extra_loss(forward, step) if extra_loss and k == A - 1 else None
                total = loss / A if A > 1 else loss
                total = total + penalty if penalty is not None else total
                (scaler.scale(total) if scaler is not None else total).backward()
            sums = stats.detach() if sums is None else sums + stats.detach()
        _optimizer_step(optimizer, trainable, ocfg.grad_clip, scaler, step_fn)
    totals = rt.all_reduce_sum(sums).tolist()  # one reduction, one sync
    return {**task.train_metrics(totals), "lr": sched(epoch * steps + steps - 1)}


def _optimizer_step(optimizer: torch.optim.Optimizer, params: list[torch.Tensor], clip: float,
                    scaler: torch.amp.GradScaler | None, step_fn: Callable[[], None] | None = None) -> None:
    if scaler is not None:
        scaler.unscale_(optimizer)  # clip the true gradients; a no-op when the scaler is disabled
    if clip > 0:
        nn.utils.clip_grad_norm_(params, clip)
    if scaler is not None and scaler.is_enabled():
        scaler.step(optimizer)  # skips the step when a gradient is inf/NaN (fp16 overflow)
        scaler.update()
    else:
        (step_fn or optimizer.step)()
    optimizer.zero_grad(set_to_none=True)


def train_one_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, data: DeviceSet, epoch: int,
                    sched: Schedule, ocfg: OptimConfig, dcfg: DataConfig, image_size: int, seed: int,
                    rt: Runtime, extra_loss: Callable[[nn.Module, int], torch.Tensor | None] | None = None,
                    lr_scale: Callable[[int], float] | None = None, progress: bool = True) -> dict:
    """One classification epoch over ``data`` (:func:`train_epoch` with :class:`ClassificationSteps`):
    mean loss/accuracy over all ranks and the lr."""
    steps = ClassificationSteps(data, dcfg, image_size, seed, ocfg.batch_size, ocfg.label_smoothing, rt)
    return train_epoch(steps, epoch, model, optimizer, sched, ocfg, seed, rt, extra_loss=extra_loss,
                       lr_scale=lr_scale, progress=progress)


@torch.no_grad()
def evaluate(model: nn.Module, data: DeviceSet | StreamSet, image_size: int, dcfg: DataConfig, rt: Runtime,
             batch_size: int = 256, predictions: bool = False) -> dict:
    """Loss (no smoothing) and top-1 accuracy over every image of ``data``, summed over ranks.

    ``predictions``: also return ``"pred"``, the predicted class of every image in ``data``'s order
    (an int64 CPU tensor, gathered from all ranks).
    """
    model.eval()
    sums = torch.zeros(3, device=rt.device)
    pred = torch.zeros(len(data) if predictions else 0, dtype=torch.long, device=rt.device)
    # Every rank runs every forward, even on an empty slice: under FSDP a forward is a collective,
    # and a rank that skipped one would hang the others. An empty slice runs image 0 and counts 0.
    slices = list(eval_batches(len(data), batch_size * rt.world_size, rt.rank, rt.world_size))
    weights = [1.0 if len(idx) else 0.0 for idx in slices]
    slices = [idx if len(idx) else torch.zeros(1, dtype=torch.long) for idx in slices]
    for idx, weight, images in zip(slices, weights, data.gather(slices)):
        idx = idx.to(rt.device)
        x = eval_transform(images, image_size, dcfg)
        y = data.labels[idx]
        with rt.autocast():
            logits = model(x).float()
        sums += weight * torch.stack([F.cross_entropy(logits, y, reduction="sum"),
                                      (logits.argmax(-1) == y).sum().float(),
                                      torch.tensor(float(len(y)), device=rt.device)])
        if predictions and weight:
            pred[idx] = logits.argmax(-1)
    total = rt.all_reduce_sum(sums).tolist()
    out = {"loss": total[0] / max(total[2], 1), "acc": total[1] / max(total[2], 1)}
    if predictions:  # each image is in exactly one rank's slice, the others hold 0 there
        out["pred"] = rt.all_reduce_sum(pred).cpu()
    return out


@torch.no_grad()  # not inference_mode: stage 2 trains heads on these features, which autograd must save
def extract_features(model: nn.Module, images: torch.Tensor | DeviceSet | StreamSet, batch_size: int = 256,
                     progress: bool = False, prepare: Callable[[torch.Tensor], torch.Tensor] | None = None,
                     rt: Runtime | None = None, desc: str = "features") -> torch.Tensor:
    """Pooled features ``model.pool(model.forward_features(x))`` (N, C) of every image, in order, in
    float32, on the images' device; one forward pass in eval mode (the model's mode is restored).
    ``images``: a tensor, or a set on the device (its batches come from its ``gather``).

    ``prepare`` maps a batch of ``images`` to the model's input (stage 2: ``eval_transform`` of the
    stored uint8 images; None: ``images`` are the input already); ``rt`` gives autocast.
    """
    was_training = model.training
    model.eval()
    feats = []
    try:
        batches = images.split(batch_size) if isinstance(images, torch.Tensor) else \
            images.gather(torch.arange(len(images)).split(batch_size))
        for x in tqdm(batches, desc=desc, leave=False, disable=not progress):
            x = prepare(x) if prepare is not None else x
            with rt.autocast() if rt is not None else nullcontext():
                feats.append(model.pool(model.forward_features(x)).float())  # (b, C)
    finally:
        model.train(was_training)
    return torch.cat(feats)
