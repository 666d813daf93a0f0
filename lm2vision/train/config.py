"""The typed config of one training stage (bridge, probe or supervised train).

Layers, lowest first: these dataclass defaults, the command's preset (``STAGE_PRESETS``), a YAML
file, then ``key=value`` overrides. The resolved config is written as ``config.yaml`` in the run
directory and stored inside checkpoints.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from ..data.config import DataConfig
from ..errors import Lm2vError
from ..models import ModelConfig, TrainableSpec
from ..phase.controller import PhaseConfig


@dataclass
class LabelConfig:
    """Random labels for stage 1: a share ``ratio`` of training images gets a new label."""

    ratio: float = 0.0  # in [0, 1]; the paper uses {0, 0.15, 0.3, 1}
    scheme: str = "wrong"  # wrong (never the true class, as the authors) | uniform
    seed: int = 0


@dataclass
class OptimConfig:
    """AdamW + linear warmup + cosine, as the paper's recipe (lr = blr * batch / 256)."""

    epochs: int = 10
    batch_size: int = 64  # global batch, split across processes
    blr: float = 1e-3
    lr: Optional[float] = None  # absolute lr; overrides blr
    weight_decay: float = 0.05  # only on trainable tensors with dim >= 2
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup_epochs: float = 1.0
    min_lr: float = 1e-6
    label_smoothing: float = 0.1
    grad_clip: float = 1.0  # 0 disables


@dataclass
class ProbeConfig:
    """Stage 2 on real labels."""

    mode: str = "reinit"  # reinit (paper) | linear (probe on frozen features) | finetune (all)
    linear_lrs: List[float] = field(default_factory=lambda: [1e-3, 3e-3, 1e-2, 3e-2])
    linear_epochs: int = 100  # epochs over cached features (cheap)
    linear_weight_decay: float = 1e-4


@dataclass
class RuntimeConfig:
    """Where and how a stage runs."""

    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: str = "auto"  # auto (bf16 on GPU, fp32 on CPU) | bf16 | fp16 | off
    sdpa: str = "auto"  # auto (PyTorch's order) or the allowed SDPA backends, e.g. "flash,efficient,math"
    compile: bool = False
    eval_batch_size: int = 256
    distributed: str = "ddp"  # ddp | fsdp: the wrapper used when launched by torchrun
    stop_after: Optional[int] = None  # stop after this many epochs in this invocation (then --resume)
    progress: bool = True
    tensorboard: bool = True


@dataclass
class RunConfig:
    """One stage: what to build, on which data, what trains, how."""

    stage: str = "bridge"  # bridge | probe | train
    init: Optional[str] = None  # run directory whose final weights start this stage
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    labels: LabelConfig = field(default_factory=LabelConfig)
    trainable: TrainableSpec = field(default_factory=TrainableSpec)
    optim: OptimConfig = field(default_factory=OptimConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    phase: PhaseConfig = field(default_factory=PhaseConfig)  # phase-aware stage 1 (seed 2)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)


# What each command changes from the defaults before the user's file and overrides.
STAGE_PRESETS: dict[str, list[str]] = {
    "bridge": ["stage=bridge", "labels.ratio=1.0"],
    "probe": ["stage=probe", "labels.ratio=0.0"],
    "train": ["stage=train", "labels.ratio=0.0", "trainable.blocks=all"],
}

PROBE_TRAINABLE = {
    "reinit": TrainableSpec(blocks="none", groups=["patch", "head"]),
    "linear": TrainableSpec(blocks="none", groups=["head"]),
    "finetune": TrainableSpec(blocks="all", groups=["patch", "pos", "final_norm", "head"]),
}


SDPA_BACKENDS = ("cudnn", "flash", "efficient", "math")


def sdpa_backends(text: str) -> tuple[str, ...] | None:
    """``runtime.sdpa`` parsed: None for auto (PyTorch's own priority), else the allowed backends."""
    if text == "auto":
        return None
    names = tuple(n.strip() for n in str(text).split(","))
    if not all(n in SDPA_BACKENDS for n in names):
        raise Lm2vError(f"runtime.sdpa must be auto or a comma list of {', '.join(SDPA_BACKENDS)}, got {text!r}")
    return names


def check_runtime(cfg: RuntimeConfig) -> None:
    """``runtime`` settings of any command: amp is auto, bf16, fp16 or off; sdpa names real backends."""
    if cfg.amp not in ("auto", "bf16", "fp16", "off"):
        raise Lm2vError(f"runtime.amp must be auto, bf16, fp16 or off, got {cfg.amp!r}")
    sdpa_backends(cfg.sdpa)


def check_run_config(cfg: RunConfig) -> None:
    """One-line errors for settings that cannot run."""
    if cfg.stage not in STAGE_PRESETS:
        raise Lm2vError(f"stage must be one of {list(STAGE_PRESETS)}, got {cfg.stage!r}")
    if not 0.0 <= cfg.labels.ratio <= 1.0:
        raise Lm2vError(f"labels.ratio must be in [0, 1], got {cfg.labels.ratio}")
    if cfg.labels.scheme not in ("wrong", "uniform"):
        raise Lm2vError(f"labels.scheme must be wrong or uniform, got {cfg.labels.scheme!r}")
    if cfg.stage != "bridge" and cfg.labels.ratio > 0:
        raise Lm2vError(f"random labels belong to stage 1 (lm2v bridge); {cfg.stage} uses the real labels")
    if cfg.probe.mode not in PROBE_TRAINABLE:
        raise Lm2vError(f"probe.mode must be one of {list(PROBE_TRAINABLE)}, got {cfg.probe.mode!r}")
    o = cfg.optim
    if o.epochs < 1 or o.batch_size < 1:
        raise Lm2vError(f"optim.epochs and optim.batch_size must be >= 1, got {o.epochs} and {o.batch_size}")
    check_runtime(cfg.runtime)
    if (cfg.phase.adaptive_lr or cfg.phase.penalty > 0) and cfg.stage != "bridge":
        raise Lm2vError("phase-aware training (phase.adaptive_lr, phase.penalty) belongs to stage 1 (lm2v bridge)")
    if cfg.runtime.distributed not in ("ddp", "fsdp"):
        raise Lm2vError(f"runtime.distributed must be ddp or fsdp, got {cfg.runtime.distributed!r}")
