"""Turning image files into one uint8 tensor: PIL decoding, RGB, one store size."""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..errors import Lm2vError
from .types import ImageSet

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
ON_CORRUPT = ("skip", "error")


def is_image_name(name: str) -> bool:
    """True for the file extensions the readers decode (case-insensitive)."""
    return name.lower().endswith(IMAGE_EXTENSIONS)


@dataclass
class RawSplit:
    """Undecoded images of one split: names (for messages), encoded bytes, labels."""

    names: list[str] = field(default_factory=list)
    blobs: list[bytes] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)

    def add(self, name: str, blob: bytes, label: int) -> None:
        self.names.append(name)
        self.blobs.append(blob)
        self.labels.append(label)


def decode_image(blob: bytes) -> np.ndarray:
    """One encoded image -> (H, W, 3) uint8 RGB. Raises the decoder's error on a corrupt file."""
    with Image.open(io.BytesIO(blob)) as im:
        im.load()
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def _resize_short_centre_crop(a: np.ndarray, size: int) -> np.ndarray:
    """Shorter side to ``size`` (bicubic), then the centre ``size`` x ``size`` crop."""
    h, w = a.shape[:2]
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    im = Image.fromarray(a).resize((nw, nh), Image.Resampling.BICUBIC)
    top, left = (nh - size) // 2, (nw - size) // 2
    return np.asarray(im.crop((left, top, left + size, top + size)), dtype=np.uint8)


def decode_splits(raw: dict[str, RawSplit], classes: list[str], store_size: int,
                  on_corrupt: str = "skip") -> dict[str, ImageSet]:
    """Decode every split; one store size for all splits (kept if every image already shares one).

    Corrupt files are skipped with ONE warning for the whole dataset, or raise (``on_corrupt``).
    """
    if on_corrupt not in ON_CORRUPT:
        raise Lm2vError(f"on_corrupt must be one of {ON_CORRUPT}, got {on_corrupt!r}")
    arrays: dict[str, list[np.ndarray]] = {}
    labels: dict[str, list[int]] = {}
    skipped: list[str] = []
    for split, rs in raw.items():
        arrays[split], labels[split] = [], []
        for name, blob, y in zip(rs.names, rs.blobs, rs.labels):
            try:
                a = decode_image(blob)
            except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
                if on_corrupt == "error":
                    raise Lm2vError(f"corrupt image file {name}: {str(e).splitlines()[0]}") from None
                skipped.append(name)
                continue
            arrays[split].append(a)
            labels[split].append(y)
    if skipped:
        warnings.warn(f"skipped {len(skipped)} corrupt image file(s): {', '.join(skipped[:5])}"
                      + (" ..." if len(skipped) > 5 else ""), stacklevel=2)
    sizes = {a.shape[:2] for arrs in arrays.values() for a in arrs}
    if not sizes:
        raise Lm2vError("dataset has no readable images")
    resize = len(sizes) > 1
    return {s: _stack(arrays[s], labels[s], classes, store_size if resize else None, sizes) for s in arrays}


def _stack(arrs: list[np.ndarray], ys: list[int], classes: list[str], size: int | None,
           sizes: set) -> ImageSet:
    if size is not None:
        arrs = [_resize_short_centre_crop(a, size) for a in arrs]
    if arrs:
        images = torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2).contiguous()  # (N, 3, H, W)
    else:
        h, w = (size, size) if size is not None else next(iter(sizes))
        images = torch.zeros((0, 3, h, w), dtype=torch.uint8)
    return ImageSet(images, torch.tensor(ys, dtype=torch.long), list(classes))
