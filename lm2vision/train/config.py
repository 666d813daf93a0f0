"""The typed config of one training stage (bridge, probe or supervised train).

Layers, lowest first: these dataclass defaults, the command's preset (``STAGE_PRESETS``), a YAML
file, then ``key=value`` overrides. The resolved config is written as ``config.yaml`` in the run
directory and stored inside checkpoints.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

import torch

from ..config import bounds, choices, length, validate
from ..data.config import DataConfig
from ..data.transforms import check_augment
from ..errors import Lm2vError
from ..models import ModelConfig, TrainableSpec
from .trackers import TRACKERS, require

ROOT_DATASETS = ("cifar10", "cifar100", "svhn")  # the datasets read from data.root


@dataclass
class LabelConfig:
    """Random labels for stage 1: a share ``ratio`` of training images gets a new label."""

    ratio: float = field(default=0.0, metadata=bounds(ge=0, le=1))  # the paper uses {0, 0.15, 0.3, 1}
    scheme: str = field(default="wrong", metadata=choices("wrong", "uniform"))  # wrong: never the true class (the authors)
    seed: int = 0


@dataclass
class OptimConfig:
    """AdamW + linear warmup + cosine, as the paper's recipe (lr = blr * batch / 256)."""

    epochs: int = field(default=10, metadata=bounds(ge=1))
    batch_size: int = field(default=64, metadata=bounds(ge=1))  # global batch, split across processes
    accum_steps: int = field(default=1, metadata=bounds(ge=1))  # micro-batches of batch_size / accum_steps per step (big batch, small GPU)
    blr: float = field(default=1e-3, metadata=bounds(gt=0))
    lr: Optional[float] = field(default=None, metadata=bounds(gt=0))  # absolute lr; overrides blr
    weight_decay: float = field(default=0.05, metadata=bounds(ge=0))  # only on trainable tensors with dim >= 2
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999], metadata={**bounds(ge=0, lt=1), **length(2)})
    warmup_epochs: float = field(default=1.0, metadata=bounds(ge=0))
    min_lr: float = field(default=1e-6, metadata=bounds(ge=0))
    label_smoothing: float = field(default=0.1, metadata=bounds(ge=0, lt=1))
    grad_clip: float = field(default=1.0, metadata=bounds(ge=0))  # 0 disables


@dataclass
class ProbeConfig:
    """Stage 2 on real labels."""

    # reinit (paper) | linear (probe on frozen features) | finetune (all); keys of PROBE_TRAINABLE
    mode: str = field(default="reinit", metadata=choices("reinit", "linear", "finetune"))
    linear_lrs: List[float] = field(default_factory=lambda: [1e-3, 3e-3, 1e-2, 3e-2], metadata=bounds(gt=0))
    linear_epochs: int = field(default=100, metadata=bounds(ge=1))  # epochs over cached features (cheap)
    linear_weight_decay: float = field(default=1e-4, metadata=bounds(ge=0))


@dataclass
class RuntimeConfig:
    """Where and how a stage runs."""

    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: str = field(default="auto", metadata=choices("auto", "bf16", "fp16", "off"))  # auto: bf16 on GPU, fp32 on CPU
    sdpa: str = "auto"  # auto (PyTorch's order) or the allowed SDPA backends, e.g. "flash,efficient,math"
    compile: bool = False
    # speed levers (lm2vision.train.levers): each falls back with one warning where this machine lacks it
    compile_mode: str = field(default="default", metadata=choices(
        "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"))  # reduce-overhead: CUDA graphs
    compile_optimizer: bool = False  # the optimizer step compiled, lr in a tensor
    residual_bf16: bool = False  # a language backbone's residual stream in bf16 (needs bf16 autocast)
    fp8: bool = False  # torchao float8 training (row-wise) on Linear layers at least fp8_min_width wide
    fp8_min_width: int = field(default=4096, metadata=bounds(ge=16))
    eval_batch_size: int = field(default=256, metadata=bounds(ge=1))
    distributed: str = field(default="ddp", metadata=choices("ddp", "fsdp"))  # the wrapper used under torchrun
    stop_after: Optional[int] = None  # stop after this many epochs in this invocation (then --resume)
    progress: bool = True
    tensorboard: bool = True
    allow_data_change: bool = False  # --resume on a dataset whose fingerprint changed (warns instead of refusing)
    # also test after every epoch, to show the authors' figure (best test accuracy over epochs) beside the
    # final-epoch one; it is never used to select anything (the final model is the last epoch's)
    test_each_epoch: bool = False
    # experiment trackers beside metrics.jsonl and TensorBoard (lm2vision.train.trackers); each is an extra
    loggers: List[str] = field(default_factory=list, metadata=choices(*TRACKERS))
    # MLflow store (URI or folder); unset: $MLFLOW_TRACKING_URI, else mlruns/ in the run's outermost lm2v folder
    mlflow_uri: Optional[str] = None
    tracker_project: str = "lm2vision"  # MLflow experiment / W&B project


@dataclass
class PhaseConfig:
    """Phase-aware stage 1 (seed 2), run by ``lm2vision.train.phase_hooks.PhaseController``.

    adaptive_lr: scale the learning rate by S(t) (eta(t) = eta_0 * S(t)).
    every: re-measure S(t) every this many steps.
    probe_size: images of the fixed probe batch.
    penalty: lambda of lambda * |S_v - S_l| (0 = off).
    target: S_l, the language model's stability the penalty pulls towards (needed when penalty > 0).
    """

    adaptive_lr: bool = False
    every: int = field(default=50, metadata=bounds(ge=1))
    probe_size: int = field(default=32, metadata=bounds(ge=2))
    penalty: float = field(default=0.0, metadata=bounds(ge=0))
    target: Optional[float] = field(default=None, metadata=bounds(ge=0, le=1))


@dataclass
class RunConfig:
    """One stage: what to build, on which data, what trains, how."""

    stage: str = field(default="bridge", metadata=choices("bridge", "probe", "train"))  # keys of STAGE_PRESETS
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

# Stage 2's default ``trainable`` per ``probe.mode`` (the user's ``trainable.*`` is applied on top and
# checked against the mode): reinit trains the re-drawn patch embedding and head on the frozen
# backbone (the paper's stage 2); linear fits heads on frozen features; finetune trains everything.
PROBE_TRAINABLE = {
    "reinit": TrainableSpec(blocks="none", groups=["patch", "head"]),
    "linear": TrainableSpec(blocks="none", groups=["head"]),
    "finetune": TrainableSpec(blocks="all"),
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


def check_device(name: str) -> None:
    """``runtime.device`` is ``auto`` or a name PyTorch reads (cpu, cuda, cuda:N, mps, ...)."""
    if name == "auto":
        return
    try:
        torch.device(name)
    except (RuntimeError, ValueError):
        raise Lm2vError(f"runtime.device must be auto, cpu, cuda or cuda:N, got {name!r}") from None


def check_optim(cfg: OptimConfig) -> None:
    """The global batch splits into ``accum_steps`` equal micro-batches (per process, the trainer
    checks again with the world size)."""
    if cfg.batch_size % cfg.accum_steps:
        raise Lm2vError(f"optim.batch_size {cfg.batch_size} must be divisible by optim.accum_steps {cfg.accum_steps}")


def check_trackers(rt: RuntimeConfig) -> None:
    """Each of ``runtime.loggers`` named once and its library importable (before the run directory
    exists); a project name and, when set, an MLflow store that are not empty."""
    twice = sorted({name for name in rt.loggers if rt.loggers.count(name) > 1})
    if twice:
        raise Lm2vError(f"runtime.loggers names {', '.join(twice)} more than once")
    for name in rt.loggers:
        require(name)
    if not rt.tracker_project.strip():
        raise Lm2vError("runtime.tracker_project is empty: name the MLflow experiment / W&B project")
    if rt.mlflow_uri is not None and not rt.mlflow_uri.strip():
        raise Lm2vError("runtime.mlflow_uri is empty: give a URI or folder, or leave it unset (null)")


def check_levers(runtime: RuntimeConfig) -> None:
    """Rules tying the speed-lever fields together (one line each); what this machine lacks is a
    fallback with a warning at run time (:func:`lm2vision.train.levers.resolve_levers`), not an error."""
    if runtime.compile_mode != "default" and not runtime.compile:
        raise Lm2vError(f"runtime.compile_mode={runtime.compile_mode} needs runtime.compile=true")
    if runtime.residual_bf16 and runtime.amp in ("fp16", "off"):
        raise Lm2vError(f"runtime.residual_bf16 needs bf16 autocast (runtime.amp=bf16 or auto), not amp={runtime.amp}")


def check_run_config(cfg: RunConfig) -> None:
    """One-line errors for settings that cannot run: the declared choices and bounds
    (:func:`lm2vision.config.validate`), then the rules that tie fields together."""
    validate(cfg)
    check_augment(cfg.data)  # kornia for AutoAugment / random erasing, before the run directory exists
    check_optim(cfg.optim)
    check_device(cfg.runtime.device)
    check_trackers(cfg.runtime)
    check_levers(cfg.runtime)
    if cfg.data.root and cfg.data.dataset not in ROOT_DATASETS:
        raise Lm2vError(f"data.root is read only for data.dataset cifar10, cifar100 or svhn, not {cfg.data.dataset!r} "
                        "(give a folder or archive as data.dataset=PATH)")
    if cfg.stage != "bridge" and cfg.labels.ratio > 0:
        raise Lm2vError(f"random labels belong to stage 1 (lm2v bridge); {cfg.stage} uses the real labels")
    sdpa_backends(cfg.runtime.sdpa)  # a comma list: parsed, not declared
    if (cfg.phase.adaptive_lr or cfg.phase.penalty > 0) and cfg.stage != "bridge":
        raise Lm2vError("phase-aware training (phase.adaptive_lr, phase.penalty) belongs to stage 1 (lm2v bridge)")
    if cfg.phase.penalty > 0 and cfg.phase.target is None:
        raise Lm2vError("phase.penalty > 0 needs phase.target (S_l, the language side's stability)")
