"""Hungarian matching of DETR's predictions to ground-truth objects (Carion et al. 2020).

Cost of assigning query i to object j:
    C_ij = w_class * (-p_i(c_j)) + w_bbox * ||b_i - b_j||_1 + w_giou * (-GIoU(b_i, b_j))
with boxes normalised cxcywh; the assignment minimising the summed cost is solved per image with
:func:`scipy.optimize.linear_sum_assignment`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from scipy.optimize import linear_sum_assignment

from .boxes import box_cxcywh_to_xyxy, generalized_box_iou


@dataclass
class MatchCosts:
    """Weights of the three matching costs (DETR's defaults)."""

    cost_class: float = 1.0
    cost_bbox: float = 5.0
    cost_giou: float = 2.0


def match_cost(logits: torch.Tensor, boxes: torch.Tensor, tgt_labels: torch.Tensor, tgt_boxes: torch.Tensor,
               costs: MatchCosts) -> torch.Tensor:
    """Cost matrix for one image: logits (Q, K+1), boxes (Q, 4), tgt_labels (M,), tgt_boxes (M, 4) -> (Q, M)."""
    prob = logits.softmax(-1)  # (Q, K+1)
    c_class = -prob[:, tgt_labels]  # (Q, M)
    c_bbox = torch.cdist(boxes, tgt_boxes, p=1)  # (Q, M)
    c_giou = -generalized_box_iou(box_cxcywh_to_xyxy(boxes), box_cxcywh_to_xyxy(tgt_boxes))
    return costs.cost_class * c_class + costs.cost_bbox * c_bbox + costs.cost_giou * c_giou


@torch.no_grad()
def hungarian_match(logits: torch.Tensor, boxes: torch.Tensor, targets: list[dict],
                    costs: MatchCosts | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Match each image's queries to its objects.

    logits: (B, Q, K+1) class scores (last = no object); boxes: (B, Q, 4) normalised cxcywh;
    targets: per image ``{"labels": (M,), "boxes": (M, 4)}``.
    Returns per image ``(query_idx, target_idx)``, int64 tensors of length min(Q, M), sorted by query.
    """
    costs = costs or MatchCosts()
    out = []
    for b, t in enumerate(targets):
        if len(t["labels"]) == 0:
            empty = torch.zeros(0, dtype=torch.int64)
            out.append((empty, empty.clone()))
            continue
        C = match_cost(logits[b].float(), boxes[b].float(), t["labels"], t["boxes"].float(), costs)
        qi, ti = linear_sum_assignment(C.cpu().numpy())
        out.append((torch.as_tensor(qi, dtype=torch.int64), torch.as_tensor(ti, dtype=torch.int64)))
    return out
