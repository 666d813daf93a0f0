"""Batched, device-side image transforms: uint8 (B, 3, H, W) on any device -> normalised float.

No per-image Python loop: a random resized crop + horizontal flip for the whole batch is one
``F.affine_grid`` + ``F.grid_sample``. Random numbers come only from the given CPU
``torch.Generator`` (drawn on CPU, then moved), so results do not depend on the device. For
distributed training, draw the parameters of the GLOBAL batch on every rank with
:func:`sample_crop_params` and apply each rank's slice with :func:`apply_crop_params`.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

from ..errors import Lm2vError
from .config import DataConfig

AUGMENTS = ("crop_flip", "none")
RATIO = (3 / 4, 4 / 3)  # aspect-ratio range of the random resized crop (torchvision's default)
# columns of a crop-parameter row: x half-extent, y half-extent, x centre, y centre (all in grid_sample's
# [-1, 1] coordinates), and the flip sign (+1 keep, -1 mirror)
PARAM_COLUMNS = ("sx", "sy", "tx", "ty", "flip")


def normalize(images: torch.Tensor, mean: Sequence[float] = (0.5, 0.5, 0.5),
              std: Sequence[float] = (0.5, 0.5, 0.5)) -> torch.Tensor:
    """uint8 [0, 255] (or float [0, 1]) images (B, 3, H, W) -> float32 (x - mean) / std per channel."""
    x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s


def _normalize_255(x: torch.Tensor, cfg: DataConfig) -> torch.Tensor:
    """Float pixels on the [0, 255] scale (after interpolation) -> clamped and normalised."""
    return normalize(x.clamp_(0.0, 255.0) / 255.0, cfg.mean, cfg.std)


def _check_cpu(generator: torch.Generator) -> None:
    if generator.device.type != "cpu":
        raise ValueError("pass a CPU torch.Generator; parameters are drawn on CPU then moved")


def sample_crop_params(n: int, generator: torch.Generator, cfg: DataConfig, aspect: float = 1.0) -> torch.Tensor:
    """Random-resized-crop + flip parameters for ``n`` images, shape (n, 5), see ``PARAM_COLUMNS``.

    Area share s ~ U[crop_scale_min, 1], log aspect ratio r ~ U[log 3/4, log 4/3]; the crop's width
    and height shares are sqrt(s r / aspect) and sqrt(s aspect / r) (``aspect`` = W / H of the
    images), clipped to 1 (torchvision re-draws instead; clipping keeps this loop-free). The centre
    is uniform over the positions that keep the crop inside the image.
    """
    _check_cpu(generator)
    if not 0.0 < cfg.crop_scale_min <= 1.0:
        raise Lm2vError(f"crop_scale_min must be in (0, 1], got {cfg.crop_scale_min}")
    u = torch.rand(n, 5, generator=generator)  # (n, 5)
    s = cfg.crop_scale_min + (1.0 - cfg.crop_scale_min) * u[:, 0]
    r = torch.exp(math.log(RATIO[0]) + (math.log(RATIO[1]) - math.log(RATIO[0])) * u[:, 1])
    sx = torch.sqrt(s * r / aspect).clamp(max=1.0)
    sy = torch.sqrt(s * aspect / r).clamp(max=1.0)
    tx = (2 * u[:, 2] - 1) * (1 - sx)
    ty = (2 * u[:, 3] - 1) * (1 - sy)
    flip = torch.where(u[:, 4] < 0.5, -1.0, 1.0) if cfg.hflip else torch.ones(n)
    return torch.stack([sx, sy, tx, ty, flip], dim=1)


def apply_crop_params(images_u8: torch.Tensor, params: torch.Tensor, image_size: int,
                      cfg: DataConfig) -> torch.Tensor:
    """Crop, resize to (image_size, image_size), flip and normalise a batch in one grid_sample.

    images_u8: (B, 3, H, W) uint8 on any device; params: (B, 5) from :func:`sample_crop_params`.
    Returns (B, 3, image_size, image_size) float32 on the images' device.
    """
    if cfg.interpolation not in ("bilinear", "bicubic"):
        raise Lm2vError(f"interpolation must be bilinear or bicubic, got {cfg.interpolation!r}")
    B = images_u8.shape[0]
    if params.shape != (B, 5):
        raise ValueError(f"params must be ({B}, 5), got {tuple(params.shape)}")
    p = params.to(device=images_u8.device, dtype=torch.float32)
    theta = torch.zeros(B, 2, 3, device=images_u8.device)  # input coords = theta @ (output x, y, 1)
    theta[:, 0, 0] = p[:, 0] * p[:, 4]
    theta[:, 0, 2] = p[:, 2]
    theta[:, 1, 1] = p[:, 1]
    theta[:, 1, 2] = p[:, 3]
    grid = F.affine_grid(theta, [B, 3, image_size, image_size], align_corners=False)  # (B, S, S, 2)
    x = F.grid_sample(images_u8.float(), grid, mode=cfg.interpolation, padding_mode="border",
                      align_corners=False)  # (B, 3, S, S)
    return _normalize_255(x, cfg)


def train_transform(images_u8: torch.Tensor, image_size: int, generator: torch.Generator,
                    cfg: DataConfig) -> torch.Tensor:
    """Training augmentation of a uint8 batch (B, 3, H, W) -> normalised float (B, 3, S, S).

    ``augment="crop_flip"``: random resized crop + horizontal flip; ``"none"``: :func:`eval_transform`.
    """
    if cfg.augment not in AUGMENTS:
        raise Lm2vError(f"augment must be one of {AUGMENTS}, got {cfg.augment!r}")
    if cfg.augment == "none":
        return eval_transform(images_u8, image_size, cfg)
    H, W = images_u8.shape[-2:]
    params = sample_crop_params(images_u8.shape[0], generator, cfg, aspect=W / H)
    return apply_crop_params(images_u8, params, image_size, cfg)


def eval_transform(images_u8: torch.Tensor, image_size: int, cfg: DataConfig | None = None) -> torch.Tensor:
    """Resize (bicubic, antialiased when shrinking) to (image_size, image_size), then normalise."""
    cfg = cfg or DataConfig()
    x = images_u8.float()  # (B, 3, H, W)
    H, W = x.shape[-2:]
    if (H, W) != (image_size, image_size):
        shrink = image_size < H or image_size < W
        x = F.interpolate(x, size=(image_size, image_size), mode="bicubic", align_corners=False, antialias=shrink)
    return _normalize_255(x, cfg)


def preprocess_eval(images_u8: torch.Tensor, image_size: int, cfg: DataConfig | None = None) -> torch.Tensor:
    """Alias of :func:`eval_transform` (the name the training code imports)."""
    return eval_transform(images_u8, image_size, cfg)
