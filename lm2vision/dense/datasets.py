"""Readers for dense datasets: COCO detection and three segmentation layouts.

Detection (``layout=coco``): an annotation JSON in COCO format plus an image folder; paths are
templates with ``{split}`` (COCO 2017 defaults: ``{split}2017`` and
``annotations/instances_{split}2017.json``). Training images are resized to image_size x image_size
(boxes are stored normalised, so they do not change) with a random horizontal flip.

Segmentation layouts (masks are single-channel PNGs of class indices, 255 = ignore):
- ``ade20k``: ``images/{training,validation}/*.jpg`` + ``annotations/{training,validation}/*.png``;
  0 = "other" (ignored), classes 1..150 become 0..149.
- ``pascal_context``: the mmsegmentation layout (made by its ``pascal_context.py`` converter from the
  Detail API): ``JPEGImages/<id>.jpg``, ``SegmentationClassContext/<id>.png``,
  ``ImageSets/SegmentationContext/{train,val}.txt``; 0 = background (ignored), 1..59 -> 0..58.
  ``pascal_context60`` reads the same files and keeps background as class 0 (60 classes).
- ``folder``: ``images/<split>/*`` + ``masks/<split>/<same stem>.png`` with values = class ids;
  class names from ``classes.txt`` (one per line, index = value) or ``num_classes``.
"""
from __future__ import annotations

import contextlib
import io
import random
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..errors import Lm2vError

IGNORE = 255
_IMG_EXT = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


def load_rgb(path: Path) -> torch.Tensor:
    """(3, H, W) uint8 image."""
    with Image.open(path) as im:
        return torch.from_numpy(np.asarray(im.convert("RGB")).copy()).permute(2, 0, 1)


def load_mask(path: Path) -> torch.Tensor:
    """(H, W) int64 mask of raw values (palette PNGs keep their indices)."""
    with Image.open(path) as im:
        arr = np.asarray(im if im.mode in ("L", "P", "I", "I;16") else im.convert("L"))
    return torch.from_numpy(arr.astype(np.int64))


def resize_image(img: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """uint8 (3, H, W) -> uint8 (3, h, w), bilinear with antialiasing."""
    out = F.interpolate(img[None].float(), size=size, mode="bilinear", align_corners=False, antialias=True)
    return out[0].round().clamp(0, 255).to(torch.uint8)


def resize_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(H, W) int64 -> (h, w), nearest neighbour."""
    return F.interpolate(mask[None, None].float(), size=size, mode="nearest")[0, 0].long()


# ----------------------------------------------------------------------------- detection


class CocoDetection(torch.utils.data.Dataset):
    """COCO-format detection set; items are ``(image uint8 (3, S, S), target)``.

    target: ``labels`` (M,) contiguous class indices, ``boxes`` (M, 4) normalised cxcywh,
    ``image_id`` and ``orig_size`` (H, W). Crowd boxes and empty boxes are dropped.
    """

    def __init__(self, images_dir: str | Path, ann_file: str | Path, image_size: int, train: bool,
                 max_items: int = 0):
        from pycocotools.coco import COCO

        self.images_dir, ann_file = Path(images_dir), Path(ann_file)
        if not ann_file.is_file():
            raise Lm2vError(f"COCO annotation file not found: {ann_file}")
        if not self.images_dir.is_dir():
            raise Lm2vError(f"COCO image folder not found: {self.images_dir}")
        with contextlib.redirect_stdout(io.StringIO()):
            self.coco = COCO(str(ann_file))
        self.cat_ids = sorted(self.coco.getCatIds())
        self.classes = [self.coco.cats[c]["name"] for c in self.cat_ids]
        self.label_of = {c: i for i, c in enumerate(self.cat_ids)}
        self.ids = sorted(self.coco.getImgIds())[: max_items or None]
        self.image_size, self.train = image_size, train

    def __len__(self) -> int:
        return len(self.ids)

    def _target(self, img_id: int, H: int, W: int) -> dict:
        anns = [a for a in self.coco.loadAnns(self.coco.getAnnIds(imgIds=img_id)) if not a.get("iscrowd", 0)]
        xywh = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        x0, y0 = xywh[:, 0].clamp(0, W), xywh[:, 1].clamp(0, H)
        x1, y1 = (xywh[:, 0] + xywh[:, 2]).clamp(0, W), (xywh[:, 1] + xywh[:, 3]).clamp(0, H)
        keep = (x1 > x0) & (y1 > y0)
        boxes = torch.stack([(x0 + x1) / 2 / W, (y0 + y1) / 2 / H, (x1 - x0) / W, (y1 - y0) / H], -1)[keep]
        labels = torch.tensor([self.label_of[a["category_id"]] for a in anns], dtype=torch.int64)[keep]
        return {"labels": labels, "boxes": boxes, "image_id": img_id, "orig_size": (H, W)}

    def __getitem__(self, i: int):
        info = self.coco.imgs[self.ids[i]]
        img = load_rgb(self.images_dir / info["file_name"])
        H, W = img.shape[-2:]
        target = self._target(self.ids[i], H, W)
        img = resize_image(img, (self.image_size, self.image_size))
        if self.train and random.random() < 0.5:
            img = img.flip(-1)
            target["boxes"][:, 0] = 1 - target["boxes"][:, 0]
        return img, target


def detection_collate(batch):
    """Stack images (B, 3, S, S); keep targets as a list."""
    imgs, targets = zip(*batch)
    return torch.stack(imgs), list(targets)


# ----------------------------------------------------------------------------- segmentation


class SegmentationFolder(torch.utils.data.Dataset):
    """(image, mask) pairs from disk; train items are random-scale crops, eval items full images.

    Train: resize by a random factor in [min_scale, max_scale] of image_size / short side, random
    crop image_size x image_size (padding with the ignore index), random horizontal flip.
    Eval: the full-resolution image (3, H, W) uint8 and mask (H, W) int64.
    """

    def __init__(self, pairs: list[tuple[Path, Path]], classes: list[str], image_size: int, train: bool,
                 reduce_zero_label: bool = False, min_scale: float = 0.5, max_scale: float = 2.0):
        if not pairs:
            raise Lm2vError("segmentation split has no (image, mask) pairs")
        self.pairs, self.classes, self.image_size, self.train = pairs, classes, image_size, train
        self.reduce_zero_label, self.scale_range = reduce_zero_label, (min_scale, max_scale)

    def __len__(self) -> int:
        return len(self.pairs)

    def _labels(self, raw: torch.Tensor) -> torch.Tensor:
        if self.reduce_zero_label:  # 0 -> ignore, k -> k - 1
            raw = torch.where(raw == 0, IGNORE, raw - 1)
        bad = (raw != IGNORE) & ((raw < 0) | (raw >= len(self.classes)))
        return torch.where(bad, IGNORE, raw)

    def _random_crop(self, img: torch.Tensor, mask: torch.Tensor):
        S = self.image_size
        scale = random.uniform(*self.scale_range) * S / min(img.shape[-2:])
        h, w = max(1, round(img.shape[-2] * scale)), max(1, round(img.shape[-1] * scale))
        img, mask = resize_image(img, (h, w)), resize_mask(mask, (h, w))
        ph, pw = max(S - h, 0), max(S - w, 0)
        img, mask = F.pad(img, (0, pw, 0, ph)), F.pad(mask, (0, pw, 0, ph), value=IGNORE)
        y, x = random.randint(0, img.shape[-2] - S), random.randint(0, img.shape[-1] - S)
        img, mask = img[:, y:y + S, x:x + S], mask[y:y + S, x:x + S]
        if random.random() < 0.5:
            img, mask = img.flip(-1), mask.flip(-1)
        return img, mask

    def __getitem__(self, i: int):
        img, mask = load_rgb(self.pairs[i][0]), self._labels(load_mask(self.pairs[i][1]))
        if mask.shape != img.shape[-2:]:
            raise Lm2vError(f"mask size {tuple(mask.shape)} != image size {tuple(img.shape[-2:])}: {self.pairs[i][1]}")
        return self._random_crop(img, mask) if self.train else (img, mask)


def list_collate(batch):
    """Keep variable-size eval items as lists."""
    imgs, masks = zip(*batch)
    return list(imgs), list(masks)


def _pair_by_stem(img_dir: Path, mask_dir: Path) -> list[tuple[Path, Path]]:
    if not img_dir.is_dir() or not mask_dir.is_dir():
        raise Lm2vError(f"segmentation folders not found: {img_dir} / {mask_dir}")
    masks = {p.stem: p for p in mask_dir.iterdir() if p.suffix.lower() == ".png"}
    imgs = sorted(p for p in img_dir.iterdir() if p.suffix.lower() in _IMG_EXT)
    missing = [p.name for p in imgs if p.stem not in masks]
    if missing:
        raise Lm2vError(f"{len(missing)} images in {img_dir} have no mask in {mask_dir} (first: {missing[0]})")
    return [(p, masks[p.stem]) for p in imgs]


def _folder_classes(root: Path, num_classes: int) -> list[str]:
    f = root / "classes.txt"
    if f.is_file():
        return [line.strip() for line in f.read_text().splitlines() if line.strip()]
    if num_classes <= 0:
        raise Lm2vError(f"folder layout needs {f} or data.num_classes > 0")
    return [f"class{i}" for i in range(num_classes)]


def segmentation_pairs(layout: str, root: str | Path, split: str, num_classes: int = 0):
    """``(pairs, classes, reduce_zero_label)`` for ``layout`` in ade20k | pascal_context(60) | folder."""
    root = Path(root)
    if not root.is_dir():
        raise Lm2vError(f"dataset root not found: {root}")
    if layout == "ade20k":
        s = {"train": "training", "val": "validation"}.get(split, split)
        return _pair_by_stem(root / "images" / s, root / "annotations" / s), [f"ade{i + 1}" for i in range(150)], True
    if layout in ("pascal_context", "pascal_context60"):
        ids_file = root / "ImageSets" / "SegmentationContext" / f"{split}.txt"
        if not ids_file.is_file():
            raise Lm2vError(f"PASCAL Context split list not found: {ids_file}")
        ids = [s.strip() for s in ids_file.read_text().split() if s.strip()]
        pairs = [(root / "JPEGImages" / f"{i}.jpg", root / "SegmentationClassContext" / f"{i}.png") for i in ids]
        reduce = layout == "pascal_context"
        classes = [f"context{i + 1}" for i in range(59)] if reduce else ["background"] + [f"context{i + 1}" for i in range(59)]
        return pairs, classes, reduce
    if layout == "folder":
        return _pair_by_stem(root / "images" / split, root / "masks" / split), _folder_classes(root, num_classes), False
    raise Lm2vError(f"unknown segmentation layout {layout!r} (ade20k, pascal_context, pascal_context60, folder)")
