"""Batched, device-side image transforms: uint8 (B, 3, H, W) on any device -> normalised float.

No per-image Python loop: a random resized crop + horizontal flip for the whole batch is one
``F.affine_grid`` + ``F.grid_sample``. Random numbers come only from the given CPU
``torch.Generator`` (drawn on CPU, then moved), so results do not depend on the device. For
distributed training, draw the parameters of the GLOBAL batch on every rank with
:func:`sample_crop_params` and apply each rank's slice with :func:`apply_crop_params`.

AutoAugment and random erasing (``data.autoaugment``, ``data.random_erasing``) come from kornia, an
optional extra (``pip install "lm2vision[augment]"``), imported only when a config asks for them.
kornia draws from torch's global RNG, so :func:`augment_batch` runs it inside :func:`seeded_global_rng`:
a micro-batch's draws are a pure function of the seed it is given, and the training's own RNG state
(dropout) is left as it was.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from functools import lru_cache
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F

from ..errors import Lm2vError
from .config import AUTOAUGMENT_POLICIES, DataConfig

AUGMENTS = ("crop_flip", "none")
RATIO = (3 / 4, 4 / 3)  # aspect-ratio range of the random resized crop (torchvision's default)
# columns of a crop-parameter row: x half-extent, y half-extent, x centre, y centre (all in grid_sample's
# [-1, 1] coordinates), and the flip sign (+1 keep, -1 mirror)
PARAM_COLUMNS = ("sx", "sy", "tx", "ty", "flip")
KORNIA_HINT = 'pip install "lm2vision[augment]"'


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


def _crop_255(images_u8: torch.Tensor, params: torch.Tensor, image_size: int, cfg: DataConfig) -> torch.Tensor:
    """The crop + resize + flip of :func:`apply_crop_params`, before normalisation: float on the [0, 255]
    scale, not yet clamped (bicubic overshoots)."""
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
    return F.grid_sample(images_u8.float(), grid, mode=cfg.interpolation, padding_mode="border",
                         align_corners=False)  # (B, 3, S, S)


def apply_crop_params(images_u8: torch.Tensor, params: torch.Tensor, image_size: int,
                      cfg: DataConfig) -> torch.Tensor:
    """Crop, resize to (image_size, image_size), flip and normalise a batch in one grid_sample.

    images_u8: (B, 3, H, W) uint8 on any device; params: (B, 5) from :func:`sample_crop_params`.
    Returns (B, 3, image_size, image_size) float32 on the images' device.
    """
    return _normalize_255(_crop_255(images_u8, params, image_size, cfg), cfg)


def train_transform(images_u8: torch.Tensor, image_size: int, generator: torch.Generator,
                    cfg: DataConfig) -> torch.Tensor:
    """Training augmentation of a uint8 batch (B, 3, H, W) -> normalised float (B, 3, S, S).

    ``augment="crop_flip"``: random resized crop + horizontal flip; ``"none"``: :func:`eval_transform`.
    Then AutoAugment and random erasing as ``cfg`` asks (:func:`augment_batch`), seeded by one draw
    from ``generator`` (made only then, so the crop parameters do not depend on those settings).
    """
    if cfg.augment not in AUGMENTS:
        raise Lm2vError(f"augment must be one of {AUGMENTS}, got {cfg.augment!r}")
    params = None
    if cfg.augment != "none":
        H, W = images_u8.shape[-2:]
        params = sample_crop_params(images_u8.shape[0], generator, cfg, aspect=W / H)
    seed = int(torch.randint(2**62, (1,), generator=generator)) if kornia_settings(cfg) else None
    return augment_batch(images_u8, params, image_size, cfg, seed)


def augment_batch(images_u8: torch.Tensor, params: torch.Tensor | None, image_size: int, cfg: DataConfig,
                  seed: int | None = None) -> torch.Tensor:
    """One training micro-batch, uint8 (B, 3, H, W) -> normalised float32 (B, 3, S, S), on its device.

    The crop + flip of ``params`` (:func:`sample_crop_params`; None: the resize of
    :func:`eval_transform`), then, as the method's authors' timm pipeline orders them: AutoAugment
    (``cfg.autoaugment``) on the [0, 1] pixels, normalisation, random erasing (``cfg.random_erasing``)
    of the normalised pixels. The last two use kornia, under :func:`seeded_global_rng` with ``seed``
    (required then): the same seed gives the same batch, and torch's global RNG is left unchanged.
    """
    x = _resize_255(images_u8, image_size) if params is None else _crop_255(images_u8, params, image_size, cfg)
    if not kornia_settings(cfg):
        return _normalize_255(x, cfg)
    check_augment(cfg)
    if seed is None:
        raise ValueError("augment_batch needs a seed when data.autoaugment or data.random_erasing is set")
    x = x.clamp_(0.0, 255.0) / 255.0  # (B, 3, S, S) in [0, 1]
    with seeded_global_rng(seed, x.device), torch.autocast(x.device.type, enabled=False):
        if cfg.autoaugment != "none":
            x = apply_autoaugment(x, cfg.autoaugment)
        x = normalize(x, cfg.mean, cfg.std)
        if cfg.random_erasing > 0:
            x = _random_erasing(cfg.random_erasing)(x)
    return x


def kornia_settings(cfg: DataConfig) -> list[str]:
    """The settings of ``cfg`` that need kornia, as ``data.KEY=VALUE`` (empty: none do)."""
    out = [f"data.autoaugment={cfg.autoaugment}"] if cfg.autoaugment != "none" else []
    return out + ([f"data.random_erasing={cfg.random_erasing:g}"] if cfg.random_erasing > 0 else [])


def check_augment(cfg: DataConfig) -> None:
    """Before training: a one-line :class:`Lm2vError` if ``cfg`` asks for AutoAugment or random erasing
    and kornia cannot be imported, or names an AutoAugment policy kornia does not have."""
    if cfg.autoaugment not in AUTOAUGMENT_POLICIES:
        raise Lm2vError(f"data.autoaugment must be one of {', '.join(AUTOAUGMENT_POLICIES)}, got {cfg.autoaugment!r}")
    needs = kornia_settings(cfg)
    if needs:
        _kornia_augmentation(needs)


def _kornia_augmentation(needs: Sequence[str]):
    """``kornia.augmentation``, imported on first use; its absence is a one-line :class:`Lm2vError`."""
    try:
        import kornia.augmentation
        import kornia.augmentation.auto
    except ImportError:
        raise Lm2vError(f"{' and '.join(needs)} need{'s' if len(needs) == 1 else ''} kornia: {KORNIA_HINT}") from None
    return kornia.augmentation


@contextmanager
def seeded_global_rng(seed: int, device: torch.device) -> Iterator[None]:
    """Run the block with torch's global RNG seeded by ``seed`` (the CPU generator, and ``device``'s
    when it is an accelerator: kornia draws some numbers on the images' device), then restore the
    states it had. On CUDA only that device's generator is seeded; elsewhere ``torch.manual_seed``."""
    if device.type == "cpu":
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            yield
        return
    index = device.index if device.index is not None else (torch.cuda.current_device() if device.type == "cuda" else 0)
    with torch.random.fork_rng(devices=[index], device_type=device.type):
        torch.default_generator.manual_seed(seed)
        if device.type == "cuda":
            torch.cuda.default_generators[index].manual_seed(seed)
        else:
            torch.manual_seed(seed)
        yield


def apply_autoaugment(x: torch.Tensor, policy: str) -> torch.Tensor:
    """kornia's AutoAugment ``policy`` (imagenet | cifar10 | svhn) on float images (B, 3, S, S) in [0, 1].

    Each image gets its own sub-policy, drawn uniformly from torch's global CPU RNG, as in
    torchvision's and timm's per-image AutoAugment (kornia's ``AutoAugment.forward`` would draw one
    sub-policy for the whole batch); the images of each drawn sub-policy go through it together, so a
    batch costs one kornia call per distinct sub-policy (at most 25). Unlike timm, which runs it on
    8-bit PIL images, kornia works on the float pixels, and pixels moved in from outside the image by
    rotate / shear / translate are black (as torchvision's; timm fills the mean colour).
    """
    subs = _policy_modules(policy)
    pick = torch.randint(len(subs), (x.shape[0],))  # (B,) on CPU: grouping needs no device sync
    out = torch.empty_like(x)
    for k in pick.unique().tolist():
        rows = (pick == k).nonzero().flatten().to(x.device)
        out.index_copy_(0, rows, subs[k](x.index_select(0, rows)))
    return out.clamp_(0.0, 1.0)


@lru_cache(maxsize=None)
def _policy_modules(policy: str) -> tuple:
    """The sub-policies (kornia ``PolicySequential`` modules) of kornia's AutoAugment ``policy``."""
    K = _kornia_augmentation([f"data.autoaugment={policy}"])
    return tuple(K.auto.AutoAugment(policy).children())


@lru_cache(maxsize=None)
def _random_erasing(p: float):
    """kornia's RandomErasing with probability ``p`` per image and its defaults, the ranges of timm's
    and torchvision's: area share in [0.02, 0.33], aspect ratio in [0.3, 3.3], one box per image. Two
    differences in the draw: kornia picks [0.3, 1] or [1, 3.3] by a fair coin, then a ratio uniformly
    in it (timm: log-uniform), and clamps an oversized box into the image (timm retries 10 times,
    then skips). The box is filled with 0, the mean colour once normalised: timm's ``mode='const'``,
    its ``create_transform`` default (DeiT/MAE-style scripts pass ``--remode pixel``: N(0, 1) noise)."""
    K = _kornia_augmentation([f"data.random_erasing={p:g}"])
    return K.RandomErasing(p=p)


def _resize_255(images_u8: torch.Tensor, image_size: int) -> torch.Tensor:
    """Resize (bicubic, antialiased when shrinking) to (image_size, image_size): float on the [0, 255] scale."""
    x = images_u8.float()  # (B, 3, H, W)
    H, W = x.shape[-2:]
    if (H, W) != (image_size, image_size):
        shrink = image_size < H or image_size < W
        x = F.interpolate(x, size=(image_size, image_size), mode="bicubic", align_corners=False, antialias=shrink)
    return x


def eval_transform(images_u8: torch.Tensor, image_size: int, cfg: DataConfig | None = None) -> torch.Tensor:
    """Resize (bicubic, antialiased when shrinking) to (image_size, image_size), then normalise."""
    return _normalize_255(_resize_255(images_u8, image_size), cfg or DataConfig())


def preprocess_eval(images_u8: torch.Tensor, image_size: int, cfg: DataConfig | None = None) -> torch.Tensor:
    """Alias of :func:`eval_transform` (the name the training code imports)."""
    return eval_transform(images_u8, image_size, cfg)
