"""Inference on images of any size with a backbone that takes only S x S inputs.

Detection: resize to S x S, predict normalised boxes, scale them to the original size.
Segmentation: ``resize`` (whole image at S x S, logits upsampled back) or ``slide`` (overlapping
S x S windows, logits averaged, as Segmenter evaluates ADE20K).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from ..data.transforms import normalize
from .boxes import box_cxcywh_to_xyxy
from .config import InferConfig
from .datasets import resize_image


@torch.no_grad()
def detections_from_outputs(outputs: dict, orig_sizes: Sequence[tuple[int, int]]) -> list[dict]:
    """DETR outputs -> per image ``scores`` (Q,), ``labels`` (Q,), ``boxes`` (Q, 4) xyxy in pixels.

    Each query's score is its best real-class probability (the no-object class excluded).
    """
    prob = outputs["logits"].float().softmax(-1)[..., :-1]  # (B, Q, K)
    scores, labels = prob.max(-1)
    boxes = box_cxcywh_to_xyxy(outputs["boxes"].float())  # (B, Q, 4) in [0, 1]
    out = []
    for b, (H, W) in enumerate(orig_sizes):
        scale = torch.tensor([W, H, W, H], dtype=boxes.dtype, device=boxes.device)
        out.append({"scores": scores[b].cpu(), "labels": labels[b].cpu(), "boxes": (boxes[b] * scale).cpu()})
    return out


@torch.no_grad()
def predict_detections(model, images: Sequence[torch.Tensor], image_size: int, mean=(0.5,) * 3,
                       std=(0.5,) * 3) -> list[dict]:
    """uint8 images (3, H, W) of any size -> detections as in :func:`detections_from_outputs`."""
    device = next(model.parameters()).device
    x = torch.stack([resize_image(im, (image_size, image_size)) for im in images]).to(device)
    outputs = model(normalize(x, mean, std))
    return detections_from_outputs(outputs, [tuple(im.shape[-2:]) for im in images])


def _starts(length: int, window: int, stride: int) -> list[int]:
    starts = list(range(0, max(length - window, 0) + 1, stride))
    if starts[-1] + window < length:
        starts.append(length - window)
    return starts


@torch.no_grad()
def slide_logits(model, x: torch.Tensor, window: int, stride: int, num_classes: int, batch: int = 32) -> torch.Tensor:
    """Normalised image (3, H, W) -> logits (K, H, W) averaged over S x S windows (padded if smaller)."""
    _, H, W = x.shape
    ph, pw = max(window - H, 0), max(window - W, 0)
    x = F.pad(x, (0, pw, 0, ph))
    Hp, Wp = x.shape[-2:]
    coords = [(y, x0) for y in _starts(Hp, window, stride) for x0 in _starts(Wp, window, stride)]
    logits = x.new_zeros(num_classes, Hp, Wp)
    count = x.new_zeros(1, Hp, Wp)
    for i in range(0, len(coords), batch):
        chunk = coords[i:i + batch]
        crops = torch.stack([x[:, y:y + window, c:c + window] for y, c in chunk])  # (n, 3, S, S)
        out = model(crops).float()  # (n, K, S, S)
        for (y, c), o in zip(chunk, out):
            logits[:, y:y + window, c:c + window] += o
            count[:, y:y + window, c:c + window] += 1
    return (logits / count)[:, :H, :W]


@torch.no_grad()
def predict_segmentation(model, image: torch.Tensor, image_size: int, num_classes: int, infer: InferConfig,
                         mean=(0.5,) * 3, std=(0.5,) * 3) -> torch.Tensor:
    """uint8 image (3, H, W) of any size -> logits (K, H, W) at the original resolution."""
    device = next(model.parameters()).device
    H, W = image.shape[-2:]
    if infer.mode == "resize":
        x = normalize(resize_image(image, (image_size, image_size))[None].to(device), mean, std)
        logits = model(x).float()  # (1, K, S, S)
    else:
        img = image
        if infer.short_side > 0 and min(H, W) != infer.short_side:
            s = infer.short_side / min(H, W)
            img = resize_image(image, (round(H * s), round(W * s)))
        x = normalize(img[None].to(device), mean, std)[0]
        logits = slide_logits(model, x, image_size, infer.stride or max(image_size // 2, 1), num_classes)[None]
    if logits.shape[-2:] != (H, W):
        logits = F.interpolate(logits, size=(H, W), mode="bilinear", align_corners=False)
    return logits[0]
