"""Turning image files into one uint8 tensor: PIL decoding, faithful RGB, one store size.

Every image Pillow opens is turned into 8-bit RGB with its true value range, upright, or refused:

- EXIF orientation is applied first (``ImageOps.exif_transpose``), so a phone photo is upright.
- ``RGB``, ``L``, ``1``, ``P`` (opaque), ``RGBX``, ``YCbCr``: Pillow's own conversion, which is exact.
  ``CMYK``: Pillow's naive formula R = (255 - C)(255 - K) / 255 (an embedded ICC profile is not used).
- 16-bit grey (``I;16``, ``I;16L``, ``I;16B``, ``I;16N``): the high byte (v >> 8), as Pillow itself
  keeps for 16-bit RGB PNGs, so a grey image and its RGB copy decode alike; ``convert("RGB")`` would
  clip every value above 255 to white.
- ``I`` (32-bit int): read as 16-bit data (v >> 8) when every value lies in 0..65535 (the one way our
  formats produce it: 16-bit grey PNGs opened by older Pillow); other values have no known scale: refused.
- ``F`` (32-bit float): read as [0, 1] data (round(v * 255)) when every value lies in [0, 1], the
  usual float-image convention; anything else (HDR, 0..255 floats, NaN) is ambiguous: refused.
- Transparency (``RGBA``, ``RGBa``, ``LA``, ``La``, ``PA``, ``P`` with a transparent colour) is
  composited on WHITE: a cut-out or icon is drawn on white by viewers and documents, so that is what a
  labeller saw, and black line art on a transparent background stays visible (on black it vanishes).
  ``convert("RGB")`` would instead show the hidden colour of transparent pixels.
- Any other mode (``LAB``, ``HSV``, ...) is refused.

A refused, corrupt or unreadable file is skipped (counted and named in the dataset's one warning) or
raises, as ``on_corrupt`` says.
"""
from __future__ import annotations

import io
import struct
from dataclasses import dataclass, field
from typing import BinaryIO, Callable, Protocol

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import Lm2vError
from .files import Skipped
from .types import ImageSet

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
ON_CORRUPT = ("skip", "error")
WHITE = 255  # background that transparent pixels are composited on
EXACT = ("RGB", "L", "1", "RGBX", "YCbCr", "CMYK")  # Pillow's convert("RGB") is faithful for these
SIXTEEN = ("I;16", "I;16L", "I;16B", "I;16N")
ALPHA = ("RGBA", "RGBa", "LA", "La", "PA")
# what a broken file makes Pillow raise (fuzzed decoders raise more than OSError)
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError, TypeError, struct.error,
                 ZeroDivisionError, Image.DecompressionBombError)
CORRUPT = "corrupt, unreadable or unsupported image files"


class UnsupportedImage(ValueError):
    """An image Pillow opens but whose mode or value range has no faithful 8-bit RGB conversion."""


def is_image_name(name: str) -> bool:
    """True for the file extensions the readers decode (case-insensitive)."""
    return name.lower().endswith(IMAGE_EXTENSIONS)


@dataclass
class RawSplit:
    """The files of one split, not yet read: names (paths in the tree) and labels."""

    names: list[str] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)

    def add(self, name: str, label: int) -> None:
        self.names.append(name)
        self.labels.append(label)


class Reader(Protocol):
    """Gives a dataset file's bytes, or an open binary file (whose header alone may be read)."""

    def read(self, name: str) -> bytes: ...

    def open(self, name: str) -> BinaryIO: ...


@dataclass
class Source:
    """A dataset's files, not yet read: the raw splits, the class names, a :class:`Reader`, where it is
    (for messages) and what its reading left out so far (reported as one warning)."""

    raw: dict[str, RawSplit]
    classes: list[str]
    reader: Reader
    where: str
    skipped: Skipped


def decode_image(blob: bytes) -> np.ndarray:
    """One encoded image -> (H, W, 3) uint8 RGB, upright (EXIF orientation applied).

    Raises the decoder's error on a corrupt file, :class:`UnsupportedImage` on a mode or value range
    with no faithful conversion (see the module docstring for each mode).
    """
    with Image.open(io.BytesIO(blob)) as im:
        im.load()
        ImageOps.exif_transpose(im, in_place=True)
        return to_rgb(im)


def to_rgb(im: Image.Image) -> np.ndarray:
    """A decoded Pillow image -> (H, W, 3) uint8 RGB with its true value range, or UnsupportedImage."""
    mode = im.mode
    if mode in SIXTEEN or mode in ("I", "F"):
        return np.repeat(_grey_to_uint8(im)[..., None], 3, axis=2)
    if mode == "P" and ("transparency" in im.info or (im.palette and im.palette.mode == "RGBA")):
        mode = "PA"
    if mode in ALPHA:
        rgba = im.convert("LA").convert("RGBA") if mode == "La" else im.convert("RGBA")
        return _on_background(np.asarray(rgba, dtype=np.uint8))
    if mode in EXACT or mode == "P":
        return np.asarray(im.convert("RGB"), dtype=np.uint8)
    raise UnsupportedImage(f"mode {mode} has no faithful RGB conversion")


def _grey_to_uint8(im: Image.Image) -> np.ndarray:
    """16-bit, 32-bit int or float grey -> (H, W) uint8, scaled from its real range (or refused)."""
    v = np.asarray(im)
    if im.mode in SIXTEEN:
        return (v.astype(np.uint16) >> 8).astype(np.uint8)
    lo, hi = (v.min(), v.max()) if v.size else (0, 0)
    if im.mode == "I":
        if lo < 0 or hi > 65535:
            raise UnsupportedImage(f"mode I with values {lo}..{hi}, outside the 16-bit range 0..65535")
        return (v >> 8).astype(np.uint8)
    if not (np.isfinite(v).all() and lo >= 0 and hi <= 1):
        raise UnsupportedImage(f"mode F with values {lo:g}..{hi:g}, outside 0..1")
    return np.rint(v * 255).astype(np.uint8)


def _on_background(rgba: np.ndarray) -> np.ndarray:
    """(H, W, 4) uint8 -> (H, W, 3) uint8: colour * a + WHITE * (1 - a), rounded to nearest."""
    a = rgba[..., 3:].astype(np.uint32)  # (H, W, 1)
    rgb = rgba[..., :3].astype(np.uint32)
    return ((rgb * a + WHITE * (255 - a) + 127) // 255).astype(np.uint8)


def _resize_short_centre_crop(a: np.ndarray, size: int) -> np.ndarray:
    """Shorter side to ``size`` (bicubic), then the centre ``size`` x ``size`` crop."""
    h, w = a.shape[:2]
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    im = Image.fromarray(a).resize((nw, nh), Image.Resampling.BICUBIC)
    top, left = (nh - size) // 2, (nw - size) // 2
    return np.asarray(im.crop((left, top, left + size, top + size)), dtype=np.uint8)


def decode_splits(raw: dict[str, RawSplit], classes: list[str], read: Callable[[str], bytes], store_size: int,
                  on_corrupt: str, skipped: Skipped) -> dict[str, ImageSet]:
    """Read and decode every split; one store size for all splits (kept if every image already shares one).

    ``read(name)`` gives a file's bytes (raising Lm2vError when it cannot). A corrupt, unreadable or
    refused file goes to ``skipped`` (the caller warns once per dataset) or raises (``on_corrupt``).
    """
    if on_corrupt not in ON_CORRUPT:
        raise Lm2vError(f"on_corrupt must be one of {ON_CORRUPT}, got {on_corrupt!r}")
    arrays: dict[str, list[np.ndarray]] = {}
    labels: dict[str, list[int]] = {}
    for split, rs in raw.items():
        arrays[split], labels[split] = [], []
        for name, y in zip(rs.names, rs.labels):
            a = _read_one(name, read, on_corrupt, skipped)
            if a is not None:
                arrays[split].append(a)
                labels[split].append(y)
    sizes = {a.shape[:2] for arrs in arrays.values() for a in arrs}
    if not sizes:
        bad = len(skipped.kinds.get(CORRUPT, []))
        raise Lm2vError(f"dataset has no readable images ({bad} corrupt, unreadable or unsupported image files)")
    resize = len(sizes) > 1
    return {s: _stack(arrays[s], labels[s], classes, store_size if resize else None, sizes) for s in arrays}


def _why(e: BaseException) -> str:
    """One line saying why an image could not be used."""
    return "not an image Pillow can identify" if isinstance(e, UnidentifiedImageError) else \
        (str(e).splitlines() or [type(e).__name__])[0]


def _read_one(name: str, read: Callable[[str], bytes], on_corrupt: str, skipped: Skipped) -> np.ndarray | None:
    """The decoded image, or None after recording why it was skipped (or raising, on_corrupt=error)."""
    try:
        return decode_image(read(name))
    except (Lm2vError, *DECODE_ERRORS) as e:
        if on_corrupt == "error":
            raise Lm2vError(f"cannot use image file {name}: {_why(e)}") from None
        skipped.add(CORRUPT, f"{name}: {_why(e)}" if isinstance(e, UnsupportedImage) else name)
        return None


def image_header(f: BinaryIO) -> tuple[int, int]:
    """(H, W) of an encoded image once upright (EXIF orientation applied), from its header alone;
    raises as :func:`decode_image` on a file Pillow cannot identify or a mode it refuses."""
    with Image.open(f) as im:
        w, h = im.size
        if im.mode not in (*EXACT, *SIXTEEN, *ALPHA, "I", "F", "P"):
            raise UnsupportedImage(f"mode {im.mode} has no faithful RGB conversion")
        if im.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # orientations that swap width and height
            w, h = h, w
    return h, w


def scan_headers(raw: dict[str, RawSplit], reader: Reader, on_corrupt: str,
                 skipped: Skipped) -> tuple[dict[str, RawSplit], set]:
    """The raw splits without the files whose header Pillow cannot read or whose mode it refuses
    (recorded in ``skipped``, or raising with ``on_corrupt="error"``), and the set of upright (H, W)."""
    kept, sizes = {}, set()
    for split, rs in raw.items():
        kept[split] = RawSplit()
        for name, y in zip(rs.names, rs.labels):
            try:
                with reader.open(name) as f:
                    sizes.add(image_header(f))
            except (Lm2vError, *DECODE_ERRORS) as e:
                if on_corrupt == "error":
                    raise Lm2vError(f"cannot use image file {name}: {_why(e)}") from None
                skipped.add(CORRUPT, f"{name}: {_why(e)}" if isinstance(e, UnsupportedImage) else name)
                continue
            kept[split].add(name, y)
    return kept, sizes


def store_shape(sizes: set, store_size: int) -> tuple[tuple[int, int], bool]:
    """The stored (H, W) of a set whose images have ``sizes``, and whether they are resized: the
    shared size kept when there is one, else every image to ``store_size`` (:func:`decode_splits`)."""
    if not sizes:
        raise Lm2vError("dataset has no readable images")
    return (next(iter(sizes)), False) if len(sizes) == 1 else ((store_size, store_size), True)


def decode_stored(blob: bytes, shape: tuple[int, int], resize: bool) -> np.ndarray:
    """One encoded image -> (H, W, 3) uint8 as :func:`decode_splits` stores it: resized to ``shape``
    (short side + centre crop, as every image of a mixed-size set) or checked to have it."""
    a = decode_image(blob)
    if resize:
        return _resize_short_centre_crop(a, shape[0])
    if a.shape[:2] != tuple(shape):
        raise ValueError(f"decoded to {a.shape[0]}x{a.shape[1]}, not the {shape[0]}x{shape[1]} of its header scan")
    return a


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
