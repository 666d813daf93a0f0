"""A small offline detection + segmentation set: coloured shapes on textured backgrounds.

Layout written under ``root`` (readable by both ``lm2v detect`` and ``lm2v segment``)::

    images/{train,val}/000000.png          RGB, image_size x image_size
    masks/{train,val}/000000.png           uint8 semantic mask, 0 = background, 1..3 = shape classes
    annotations/instances_{train,val}.json COCO detection format (category ids 1..3)
    classes.txt                            background, rectangle, ellipse, triangle (index = mask value)

Each shape class has its own base colour (jittered), so a tiny model can learn the task in a few
hundred CPU steps; the background is a random low-contrast stripe texture with noise.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ["rectangle", "ellipse", "triangle"]
_BASE_COLOURS = np.array([[210, 50, 50], [50, 190, 70], [60, 80, 220]])


def _background(rng: np.random.Generator, S: int) -> np.ndarray:
    """(S, S, 3) uint8 stripe texture with noise."""
    yy, xx = np.mgrid[0:S, 0:S].astype(np.float32)
    theta, freq = rng.uniform(0, np.pi), rng.uniform(0.15, 0.6)
    stripes = np.sin(freq * (np.cos(theta) * xx + np.sin(theta) * yy) + rng.uniform(0, 2 * np.pi))
    base = rng.uniform(90, 160, size=3)
    img = base + 18 * stripes[..., None] + rng.normal(0, 6, size=(S, S, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def _draw_shape(kind: int, box: tuple[int, int, int, int], S: int) -> np.ndarray:
    """(S, S) bool mask of shape ``kind`` inscribed in ``box`` (x0, y0, x1, y1), inclusive corners."""
    canvas = Image.new("L", (S, S), 0)
    d = ImageDraw.Draw(canvas)
    x0, y0, x1, y1 = box
    if kind == 0:
        d.rectangle(box, fill=1)
    elif kind == 1:
        d.ellipse(box, fill=1)
    else:
        d.polygon([((x0 + x1) / 2, y0), (x0, y1), (x1, y1)], fill=1)
    return np.asarray(canvas, dtype=bool)


def _overlaps(box, boxes, max_iou: float = 0.15) -> bool:
    for b in boxes:
        iw = min(box[2], b[2]) - max(box[0], b[0]) + 1
        ih = min(box[3], b[3]) - max(box[1], b[1]) + 1
        if iw > 0 and ih > 0:
            inter = iw * ih
            a1 = (box[2] - box[0] + 1) * (box[3] - box[1] + 1)
            a2 = (b[2] - b[0] + 1) * (b[3] - b[1] + 1)
            if inter / (a1 + a2 - inter) > max_iou:
                return True
    return False


def make_sample(rng: np.random.Generator, S: int, max_objects: int = 3):
    """One image: (S, S, 3) uint8 image, (S, S) uint8 mask, list of (class 0..2, [x, y, w, h]) objects."""
    img, mask, objects, boxes = _background(rng, S), np.zeros((S, S), np.uint8), [], []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        for _try in range(20):
            w, h = (int(v) for v in rng.integers(max(3, S // 4), max(4, int(S * 0.55)) + 1, size=2))
            x0, y0 = int(rng.integers(0, S - w + 1)), int(rng.integers(0, S - h + 1))
            box = (x0, y0, x0 + w - 1, y0 + h - 1)
            if not _overlaps(box, boxes):
                break
        else:
            continue
        kind = int(rng.integers(0, len(SHAPES)))
        m = _draw_shape(kind, box, S)
        if m.sum() < 4:
            continue
        colour = np.clip(_BASE_COLOURS[kind] + rng.integers(-35, 36, size=3), 0, 255)
        img[m] = np.clip(colour + rng.normal(0, 8, size=(int(m.sum()), 3)), 0, 255).astype(np.uint8)
        mask[m] = kind + 1
        boxes.append(box)
        ys, xs = np.nonzero(m)
        objects.append((kind, [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]))
    return img, mask, objects


def _write_split(root: Path, split: str, n: int, S: int, rng: np.random.Generator) -> None:
    (root / "images" / split).mkdir(parents=True, exist_ok=True)
    (root / "masks" / split).mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for i in range(n):
        img, mask, objects = make_sample(rng, S)
        name = f"{i:06d}.png"
        Image.fromarray(img).save(root / "images" / split / name)
        Image.fromarray(mask).save(root / "masks" / split / name)
        images.append({"id": i + 1, "file_name": name, "width": S, "height": S})
        for kind, bbox in objects:
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": kind + 1, "bbox": bbox,
                         "area": float(bbox[2] * bbox[3]), "iscrowd": 0})
    coco = {"images": images, "annotations": anns,
            "categories": [{"id": k + 1, "name": s} for k, s in enumerate(SHAPES)]}
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(coco))


def make_synthetic_dense(root: str | Path, n_train: int = 256, n_val: int = 64, image_size: int = 32,
                         seed: int = 0) -> Path:
    """Write the synthetic set (layout in the module docstring) under ``root`` and return it."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    _write_split(root, "train", n_train, image_size, rng)
    _write_split(root, "val", n_val, image_size, rng)
    (root / "classes.txt").write_text("\n".join(["background"] + SHAPES) + "\n")
    return root
