"""Typed configs of ``lm2v detect`` and ``lm2v segment``.

They reuse the classification stage's pieces (``ModelConfig``, ``TrainableSpec``, ``OptimConfig``,
``RuntimeConfig``) and add the dense data layout, the head, the loss and the inference mode.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from ..config import bounds, choices, validate
from ..errors import Lm2vError
from ..models import ModelConfig, TrainableSpec
from ..train.config import (OptimConfig, RuntimeConfig, check_device, check_levers, check_optim, check_trackers,
                            sdpa_backends)
from .heads import DetrHeadConfig, SegHeadConfig
from .losses import DetectLossConfig


DETECT_LAYOUTS = ("coco",)
SEGMENT_LAYOUTS = ("ade20k", "pascal_context", "pascal_context60", "folder")


@dataclass
class DenseDataConfig:
    """Where the images and annotations are (layouts in :mod:`lm2vision.dense.datasets`).

    images_dir / ann_file: COCO paths under ``root`` with ``{split}`` filled in.
    min_scale / max_scale: random rescale range of segmentation training crops (Segmenter: 0.5-2).
    """

    root: str = ""
    layout: str = field(default="coco", metadata=choices(*DETECT_LAYOUTS, *SEGMENT_LAYOUTS))  # detect: coco only
    train_split: str = "train"
    val_split: str = "val"
    images_dir: str = "{split}2017"
    ann_file: str = "annotations/instances_{split}2017.json"
    num_classes: int = field(default=0, metadata=bounds(ge=0))  # folder layout without classes.txt
    max_train: int = field(default=0, metadata=bounds(ge=0))  # 0 = all
    max_val: int = field(default=0, metadata=bounds(ge=0))
    min_scale: float = field(default=0.5, metadata=bounds(gt=0))
    max_scale: float = 2.0
    num_workers: int = field(default=0, metadata=bounds(ge=0))
    mean: List[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    std: List[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])


@dataclass
class InferConfig:
    """Inference on images of any size: the backbone only takes image_size x image_size.

    resize: the whole image resized to the training size, predictions mapped back.
    slide (segmentation only): windows of the training size every ``stride`` pixels (0 = half a
    window) over the image (short side first resized to ``short_side`` if > 0; images smaller than a
    window are padded), logits averaged where windows overlap, then resized to the original size.
    """

    mode: str = field(default="resize", metadata=choices("resize", "slide"))  # detection: resize only
    stride: int = field(default=0, metadata=bounds(ge=0))
    short_side: int = field(default=0, metadata=bounds(ge=0))


@dataclass
class DetectConfig:
    """``lm2v detect``: DETR head on a language-model backbone."""

    init: Optional[str] = None  # run directory of lm2v bridge/probe/train to start the backbone from
    model: ModelConfig = field(default_factory=ModelConfig)
    trainable: TrainableSpec = field(default_factory=lambda: TrainableSpec(groups=["patch", "pos", "norm"]))
    data: DenseDataConfig = field(default_factory=DenseDataConfig)
    head: DetrHeadConfig = field(default_factory=DetrHeadConfig)
    loss: DetectLossConfig = field(default_factory=DetectLossConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(
        epochs=50, batch_size=16, lr=1e-4, weight_decay=1e-4, warmup_epochs=1.0, label_smoothing=0.0, grad_clip=0.1))
    infer: InferConfig = field(default_factory=InferConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    eval_every: int = field(default=1, metadata=bounds(ge=1))  # evaluate every N epochs (and always after the last)


@dataclass
class SegmentConfig:
    """``lm2v segment``: Segmenter (mask transformer) or linear decoder on a language-model backbone."""

    init: Optional[str] = None
    model: ModelConfig = field(default_factory=ModelConfig)
    trainable: TrainableSpec = field(default_factory=lambda: TrainableSpec(groups=["patch", "pos", "norm"]))
    data: DenseDataConfig = field(default_factory=lambda: DenseDataConfig(layout="ade20k"))
    head: SegHeadConfig = field(default_factory=SegHeadConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(
        epochs=64, batch_size=8, lr=1e-4, weight_decay=0.0, warmup_epochs=1.0, label_smoothing=0.0, grad_clip=1.0))
    infer: InferConfig = field(default_factory=lambda: InferConfig(mode="slide"))
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    eval_every: int = field(default=1, metadata=bounds(ge=1))  # evaluate every N epochs (and always after the last)


def check_dense_config(cfg: DetectConfig | SegmentConfig) -> None:
    """One-line errors for settings that cannot run: the declared choices and bounds
    (:func:`lm2vision.config.validate`), then the rules that depend on the task or tie fields together."""
    validate(cfg)
    check_optim(cfg.optim)
    check_device(cfg.runtime.device)
    check_trackers(cfg.runtime)
    check_levers(cfg.runtime)
    sdpa_backends(cfg.runtime.sdpa)  # a comma list: parsed, not declared
    detect = isinstance(cfg, DetectConfig)
    layouts = DETECT_LAYOUTS if detect else SEGMENT_LAYOUTS
    if cfg.data.layout not in layouts:
        raise Lm2vError(f"{'detect' if detect else 'segment'} reads data.layout {' or '.join(layouts)}, got {cfg.data.layout!r}")
    if not cfg.data.root:
        raise Lm2vError("data.root is empty: give --data ROOT (or data.root=...), or --synthetic N")
    if detect and cfg.infer.mode != "resize":
        raise Lm2vError(f"infer.mode {cfg.infer.mode!r} is not supported for detection (resize only)")
    if cfg.data.min_scale > cfg.data.max_scale:
        raise Lm2vError(f"need data.min_scale <= data.max_scale, got {cfg.data.min_scale}, {cfg.data.max_scale}")
    if detect and (cfg.head.num_queries < 1 or cfg.head.d_model % 4):
        raise Lm2vError("head.num_queries must be >= 1 and head.d_model divisible by 4")
