"""Runtime set-up on PyTorch's own distributed engine (torchrun + DDP or FSDP2).

The same command runs as one process or under ``torchrun --nproc-per-node N``; the global batch
is split across ranks, so results match a single process with the same global batch.
"""
from __future__ import annotations

import os
import time
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn

from ..utils.device import resolve_device
from .config import SDPA_BACKENDS, RuntimeConfig, sdpa_backends


@dataclass
class Runtime:
    """Where this process runs and how (resolved from a ``RuntimeConfig`` and the environment)."""

    device: torch.device
    amp_dtype: torch.dtype | None
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def autocast(self):
        """bf16/fp16 autocast on the device, or nothing for fp32."""
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        """Sum over ranks (in place on a copy); identity for one process."""
        if self.distributed:
            t = t.clone()
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``runtime.amp`` (one of its declared choices): auto = bf16 on CUDA, none elsewhere."""
    if amp == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}[amp]


def apply_sdpa(text: str) -> None:
    """Allow only the SDPA backends of ``runtime.sdpa`` (PyTorch's process-wide switches); auto
    leaves them alone. PyTorch picks by a fixed priority, not by speed: ``benchmarks/attention.py``
    times each backend on a given shape."""
    allowed = sdpa_backends(text)
    if allowed is None:
        return
    switch = {"cudnn": torch.backends.cuda.enable_cudnn_sdp, "flash": torch.backends.cuda.enable_flash_sdp,
              "efficient": torch.backends.cuda.enable_mem_efficient_sdp, "math": torch.backends.cuda.enable_math_sdp}
    for name in SDPA_BACKENDS:
        switch[name](name in allowed)


def setup_runtime(cfg: RuntimeConfig) -> Runtime:
    """Join the process group when launched by torchrun (nccl on GPU, gloo on CPU); apply ``runtime.sdpa``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(cfg.device, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    apply_sdpa(cfg.sdpa)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Runtime(device=device, amp_dtype=resolve_amp(cfg.amp, device), rank=rank, world_size=world)


def wrap_model(model: nn.Module, rt: Runtime, mode: str) -> nn.Module:
    """DDP (replicated) or FSDP2 (every block and the root fully sharded) across ranks."""
    if not rt.distributed:
        return model
    if mode == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for block in model.blocks:
            fully_shard(block)
        fully_shard(model)
        return model
    if not any(p.requires_grad for p in model.parameters()):
        return model  # nothing trains (linear probe on features): no gradient sync needed
    ids = [rt.device.index] if rt.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside its wrappers, in any nesting (compile of DDP, DDP of compiled): DDP keeps it
    in ``.module``, ``torch.compile`` in ``._orig_mod``; FSDP2 shards the module in place, so there
    is nothing to unwrap. Parameter names of the result carry no wrapper prefix."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            # torch.compile's OptimizedModule, recognised by its attribute: isinstance would import
            # torch._dynamo (2.5 s) into every command that never compiles
            model = model._orig_mod
        else:
            return model


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every tensor of the model, gathered on CPU (also from FSDP shards)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(unwrap(model), options=StateDictOptions(full_state_dict=True, cpu_offload=True))


# How long teardown releases the GIL after leaving a gloo group (see ``teardown``).
GLOO_DRAIN_S = 0.2


def teardown(rt: Runtime) -> None:
    """Leave the process group (if we joined one).

    After a gloo group, sleep ``GLOO_DRAIN_S`` with the GIL released. Gloo's worker threads free each
    finished collective (and the Python tensors it holds) just after the caller has moved on, and
    ``destroy_process_group`` does not join them. A worker that still needs the GIL when the
    interpreter finalizes is killed inside a destructor, and the process aborts with "terminate called
    without an active exception" after a run that succeeded (seen in about 1 launch in 30 on CPU).
    """
    if rt.distributed and dist.is_initialized():
        gloo = dist.get_backend() == dist.Backend.GLOO
        dist.destroy_process_group()
        if gloo:
            time.sleep(GLOO_DRAIN_S)
