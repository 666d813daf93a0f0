"""The few box operations DETR needs, written once.

Boxes are (N, 4) float tensors, either ``cxcywh`` (centre, width, height) or ``xyxy`` (corners).
When torchvision is importable its ``box_iou`` / ``generalized_box_iou`` are used instead of ours;
the results are the same (tests compare against hand-computed values).
"""
from __future__ import annotations

import torch

try:  # pragma: no cover - torchvision is not a dependency
    from torchvision.ops import box_iou as _tv_box_iou
    from torchvision.ops import generalized_box_iou as _tv_giou
except ImportError:
    _tv_box_iou = _tv_giou = None


def box_cxcywh_to_xyxy(b: torch.Tensor) -> torch.Tensor:
    """(..., 4) centre/size -> corners."""
    cx, cy, w, h = b.unbind(-1)
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)


def box_xyxy_to_cxcywh(b: torch.Tensor) -> torch.Tensor:
    """(..., 4) corners -> centre/size."""
    x0, y0, x1, y1 = b.unbind(-1)
    return torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], dim=-1)


def box_area(b: torch.Tensor) -> torch.Tensor:
    """(N, 4) xyxy -> (N,) areas."""
    return (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])


def _iou_and_union(b1: torch.Tensor, b2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    area1, area2 = box_area(b1), box_area(b2)
    lt = torch.max(b1[:, None, :2], b2[None, :, :2])  # (N, M, 2)
    rb = torch.min(b1[:, None, 2:], b2[None, :, 2:])  # (N, M, 2)
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]  # (N, M)
    union = area1[:, None] + area2[None, :] - inter
    return inter / union, union


def box_iou(b1: torch.Tensor, b2: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU of xyxy boxes: (N, 4), (M, 4) -> (N, M)."""
    if _tv_box_iou is not None:  # pragma: no cover
        return _tv_box_iou(b1, b2)
    return _iou_and_union(b1, b2)[0]


def generalized_box_iou(b1: torch.Tensor, b2: torch.Tensor) -> torch.Tensor:
    """Pairwise generalised IoU (Rezatofighi et al. 2019) of xyxy boxes: (N, 4), (M, 4) -> (N, M).

    GIoU = IoU - (|C| - |union|) / |C| with C the smallest box enclosing both; in [-1, 1].
    """
    if _tv_giou is not None:  # pragma: no cover
        return _tv_giou(b1, b2)
    iou, union = _iou_and_union(b1, b2)
    lt = torch.min(b1[:, None, :2], b2[None, :, :2])
    rb = torch.max(b1[:, None, 2:], b2[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    hull = wh[..., 0] * wh[..., 1]  # (N, M)
    return iou - (hull - union) / hull
