"""DETR's set loss and the segmentation loss.

Set loss (Carion et al. 2020): after Hungarian matching, cross-entropy over all queries (unmatched
ones target the extra "no object" class, down-weighted by ``eos_coef``), plus L1 and (1 - GIoU) on
the matched boxes, both averaged over the number of ground-truth objects in the batch. With
``aux`` outputs (one per decoder layer) the same loss is added for each.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .boxes import box_cxcywh_to_xyxy, generalized_box_iou
from .matcher import MatchCosts, hungarian_match


@dataclass
class DetectLossConfig:
    """Matching costs and loss weights (DETR's defaults)."""

    cost_class: float = 1.0
    cost_bbox: float = 5.0
    cost_giou: float = 2.0
    w_ce: float = 1.0
    w_bbox: float = 5.0
    w_giou: float = 2.0
    eos_coef: float = 0.1  # weight of the "no object" class in the cross-entropy


def set_loss_terms(logits: torch.Tensor, boxes: torch.Tensor, targets: list[dict],
                   cfg: DetectLossConfig) -> dict[str, torch.Tensor]:
    """Unweighted loss terms ``ce``, ``bbox`` (L1), ``giou`` for one decoder output.

    logits (B, Q, K+1), boxes (B, Q, 4) normalised cxcywh, targets as in :func:`hungarian_match`.
    """
    logits, boxes = logits.float(), boxes.float()  # fp32 losses under autocast
    B, Q, K1 = logits.shape
    costs = MatchCosts(cfg.cost_class, cfg.cost_bbox, cfg.cost_giou)
    indices = hungarian_match(logits.detach(), boxes.detach(), targets, costs)
    batch_idx = torch.cat([torch.full_like(q, b) for b, (q, _) in enumerate(indices)]).to(logits.device)
    query_idx = torch.cat([q for q, _ in indices]).to(logits.device)

    tgt_cls = torch.full((B, Q), K1 - 1, dtype=torch.int64, device=logits.device)  # all "no object"
    tgt_cls[batch_idx, query_idx] = torch.cat([t["labels"][j] for t, (_, j) in zip(targets, indices)]).to(logits.device)
    weight = torch.ones(K1, device=logits.device)
    weight[-1] = cfg.eos_coef
    ce = F.cross_entropy(logits.transpose(1, 2), tgt_cls, weight=weight)

    n_obj = max(sum(len(t["labels"]) for t in targets), 1)
    src = boxes[batch_idx, query_idx]  # (N, 4)
    tgt = torch.cat([t["boxes"][j] for t, (_, j) in zip(targets, indices)]).to(boxes)  # (N, 4)
    l1 = F.l1_loss(src, tgt, reduction="sum") / n_obj
    giou = torch.diag(generalized_box_iou(box_cxcywh_to_xyxy(src), box_cxcywh_to_xyxy(tgt)))
    return {"ce": ce, "bbox": l1, "giou": (1 - giou).sum() / n_obj}


def detr_loss(outputs: dict, targets: list[dict], cfg: DetectLossConfig) -> tuple[torch.Tensor, dict[str, float]]:
    """Weighted set loss over the final and auxiliary outputs; returns (loss, logged terms).

    outputs: ``{"logits": (B, Q, K+1), "boxes": (B, Q, 4), "aux": [{"logits", "boxes"}, ...]}``.
    """
    total = logits_loss = 0.0
    logs: dict[str, float] = {}
    for i, out in enumerate([outputs] + list(outputs.get("aux", []))):
        t = set_loss_terms(out["logits"], out["boxes"], targets, cfg)
        total = total + cfg.w_ce * t["ce"] + cfg.w_bbox * t["bbox"] + cfg.w_giou * t["giou"]
        if i == 0:
            logs = {k: float(v.detach()) for k, v in t.items()}
            logits_loss = total
    logs["loss_final"] = float(logits_loss.detach())
    return total, logs


def segmentation_loss(logits: torch.Tensor, masks: torch.Tensor, ignore_index: int = 255) -> torch.Tensor:
    """Pixel cross-entropy: logits (B, K, H, W), masks (B, H, W) int64 with ``ignore_index`` skipped."""
    if logits.shape[-2:] != masks.shape[-2:]:
        logits = F.interpolate(logits, size=masks.shape[-2:], mode="bilinear", align_corners=False)
    return F.cross_entropy(logits, masks, ignore_index=ignore_index)
