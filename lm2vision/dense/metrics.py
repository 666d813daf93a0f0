"""Dense-task metrics: COCO box mAP (pycocotools) and confusion-matrix mIoU / pixel accuracy."""
from __future__ import annotations

import contextlib
import io

import numpy as np
import torch

# ----------------------------------------------------------------------------- detection


def coco_map(coco_gt, detections: list[dict]) -> dict[str, float]:
    """COCO box metrics of ``detections`` against a ``pycocotools.coco.COCO`` ground truth.

    detections: COCO result dicts ``{"image_id", "category_id", "bbox": [x, y, w, h] (pixels), "score"}``.
    Returns ``map`` (AP@[.5:.95]), ``map_50``, ``map_75``, ``map_small``, ``map_medium``, ``map_large``
    (pycocotools' -1 for "no such objects" is kept). No detections gives all zeros.
    """
    from pycocotools.cocoeval import COCOeval

    keys = ["map", "map_50", "map_75", "map_small", "map_medium", "map_large"]
    if not detections:
        return {k: 0.0 for k in keys}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its tables
        coco_dt = coco_gt.loadRes(detections)
        ev = COCOeval(coco_gt, coco_dt, iouType="bbox")
        ev.params.imgIds = sorted(coco_gt.getImgIds())
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {k: float(v) for k, v in zip(keys, ev.stats[:6])}


# ----------------------------------------------------------------------------- segmentation


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = 255) -> torch.Tensor:
    """(K, K) int64 counts, rows = true class, columns = predicted; pixels at ``ignore_index`` skipped.

    pred, target: integer tensors of the same shape. Labels outside [0, K) other than the ignore
    index are an error (they would silently shift counts).
    """
    pred, target = pred.reshape(-1).long(), target.reshape(-1).long()
    keep = target != ignore_index
    pred, target = pred[keep], target[keep]
    if target.numel() and (target.min() < 0 or target.max() >= num_classes):
        raise ValueError(f"target labels must be in [0, {num_classes}) or {ignore_index}")
    if pred.numel() and (pred.min() < 0 or pred.max() >= num_classes):
        raise ValueError(f"predicted labels must be in [0, {num_classes})")
    counts = torch.bincount(target * num_classes + pred, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def segmentation_scores(cm: torch.Tensor) -> dict[str, float]:
    """mIoU, pixel accuracy and mean class accuracy from a confusion matrix.

    IoU_k = TP / (TP + FP + FN); classes absent from both ground truth and predictions (union 0)
    are left out of the mean, as in mmsegmentation.
    """
    cm = cm.double()
    tp = cm.diag()
    gt, pr = cm.sum(1), cm.sum(0)
    union = gt + pr - tp
    present = union > 0
    iou = tp[present] / union[present]
    has_gt = gt > 0
    return {
        "miou": float(iou.mean()) if present.any() else 0.0,
        "pixel_acc": float(tp.sum() / cm.sum()) if cm.sum() > 0 else 0.0,
        "mean_acc": float((tp[has_gt] / gt[has_gt]).mean()) if has_gt.any() else 0.0,
    }


def per_class_iou(cm: torch.Tensor) -> np.ndarray:
    """(K,) IoU per class, NaN where the class appears in neither ground truth nor predictions."""
    cm = cm.double()
    tp = cm.diag()
    union = cm.sum(1) + cm.sum(0) - tp
    iou = torch.full_like(tp, float("nan"))
    iou[union > 0] = tp[union > 0] / union[union > 0]
    return iou.numpy()
