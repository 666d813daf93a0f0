"""Box ops, Hungarian matching, DETR losses, COCO mAP and mIoU on hand-made cases."""
import contextlib
import io

import pytest
import torch

from lm2vision.dense.boxes import box_cxcywh_to_xyxy, box_iou, box_xyxy_to_cxcywh, generalized_box_iou
from lm2vision.dense.losses import DetectLossConfig, detr_loss, segmentation_loss, set_loss_terms
from lm2vision.dense.matcher import hungarian_match
from lm2vision.dense.metrics import coco_map, confusion_matrix, segmentation_scores


def test_box_conversions_round_trip():
    b = torch.tensor([[0.5, 0.5, 0.2, 0.4], [0.1, 0.8, 0.2, 0.1]])
    xyxy = box_cxcywh_to_xyxy(b)
    assert torch.allclose(xyxy[0], torch.tensor([0.4, 0.3, 0.6, 0.7]))
    assert torch.allclose(box_xyxy_to_cxcywh(xyxy), b)


def test_iou_and_giou_known_values():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [0.0, 0.0, 2.0, 2.0], [3.0, 0.0, 4.0, 1.0]])
    # overlap 1, union 7; identical; disjoint
    assert torch.allclose(box_iou(a, b), torch.tensor([[1 / 7, 1.0, 0.0]]))
    # hull of a and b0 is 3x3 = 9 -> 1/7 - 2/9; a and b2: hull 4x2 = 8, union 5 -> -3/8
    assert torch.allclose(generalized_box_iou(a, b), torch.tensor([[1 / 7 - 2 / 9, 1.0, -3 / 8]]))


def _onehot_logits(labels, K, Q, scale=50.0):
    logits = torch.full((Q, K + 1), -scale)
    logits[:, K] = scale  # no object by default
    for q, c in enumerate(labels):
        logits[q] = -scale
        logits[q, c] = scale
    return logits


def test_matching_assigns_the_right_queries():
    tgt = {"labels": torch.tensor([2, 0]), "boxes": torch.tensor([[0.2, 0.2, 0.1, 0.1], [0.7, 0.7, 0.3, 0.3]])}
    # query 0 near nothing, query 1 = object 1, query 2 = object 0
    boxes = torch.tensor([[[0.5, 0.1, 0.05, 0.05], [0.69, 0.71, 0.3, 0.3], [0.21, 0.2, 0.1, 0.1]]])
    logits = torch.zeros(1, 3, 4)
    q, t = hungarian_match(logits, boxes, [tgt])[0]
    assert q.tolist() == [1, 2] and t.tolist() == [1, 0]
    # class cost alone decides when boxes are equal
    same = torch.tensor([[0.5, 0.5, 0.2, 0.2]]).repeat(1, 2, 1)
    tgt2 = {"labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])}
    q, t = hungarian_match(_onehot_logits([0, 1], 3, 2)[None], same, [tgt2])[0]
    assert q.tolist() == [1] and t.tolist() == [0]


def test_matching_with_no_objects_is_empty():
    q, t = hungarian_match(torch.zeros(1, 3, 4), torch.rand(1, 3, 4), [{"labels": torch.zeros(0, dtype=torch.long),
                                                                        "boxes": torch.zeros(0, 4)}])[0]
    assert q.numel() == 0 and t.numel() == 0


def test_set_loss_is_zero_for_perfect_predictions_and_positive_otherwise():
    tgt = [{"labels": torch.tensor([1, 0]), "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.7, 0.6, 0.2, 0.4]])}]
    Q, K = 5, 3
    boxes = torch.rand(1, Q, 4) * 0.2 + 0.4
    boxes[0, 3], boxes[0, 1] = tgt[0]["boxes"][0], tgt[0]["boxes"][1]
    logits = torch.full((1, Q, K + 1), -50.0)
    logits[0, :, K] = 50.0
    logits[0, 3], logits[0, 1] = -50.0, -50.0
    logits[0, 3, 1], logits[0, 1, 0] = 50.0, 50.0
    terms = set_loss_terms(logits, boxes, tgt, DetectLossConfig())
    assert terms["ce"] < 1e-6 and terms["bbox"] < 1e-6 and terms["giou"] < 1e-6
    loss, _ = detr_loss({"logits": logits, "boxes": boxes, "aux": [{"logits": logits, "boxes": boxes}]}, tgt,
                        DetectLossConfig())
    assert loss < 1e-5
    shifted = boxes.clone()
    shifted[0, 3, 0] += 0.1
    terms = set_loss_terms(logits, shifted, tgt, DetectLossConfig())
    assert terms["bbox"] == pytest.approx(0.1 / 2, abs=1e-6)  # one box off by 0.1, two objects
    assert terms["giou"] > 0.1


def _coco_gt():
    from pycocotools.coco import COCO

    gt = COCO()
    gt.dataset = {
        "images": [{"id": 1, "width": 100, "height": 100}, {"id": 2, "width": 100, "height": 100}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 40, 40], "area": 1600, "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 2, "bbox": [60, 50, 30, 40], "area": 1200, "iscrowd": 0},
            {"id": 3, "image_id": 2, "category_id": 1, "bbox": [20, 30, 50, 50], "area": 2500, "iscrowd": 0},
        ],
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    return gt


def test_coco_map_is_one_for_ground_truth_and_drops_for_shifted_boxes():
    gt = _coco_gt()
    dets = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9}
            for a in gt.dataset["annotations"]]
    assert coco_map(gt, dets)["map"] == pytest.approx(1.0)
    shifted = [dict(d, bbox=[d["bbox"][0] + 8, d["bbox"][1], d["bbox"][2], d["bbox"][3]]) for d in dets]
    m = coco_map(gt, shifted)
    assert 0.1 < m["map"] < 0.9 and m["map_50"] == pytest.approx(1.0)
    assert coco_map(gt, [])["map"] == 0.0


def test_confusion_matrix_and_miou_known_answer():
    target = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 1]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 0, 0, 1]])
    cm = confusion_matrix(pred, target, 3)
    assert cm.tolist() == [[1, 1, 0], [0, 3, 0], [1, 0, 1]]
    s = segmentation_scores(cm)
    # IoU: class0 1/(2+2-1)=1/3, class1 3/(3+4-3)=3/4, class2 1/(2+1-1)=1/2
    assert s["miou"] == pytest.approx((1 / 3 + 3 / 4 + 1 / 2) / 3)
    assert s["pixel_acc"] == pytest.approx(5 / 7)
    assert s["mean_acc"] == pytest.approx((1 / 2 + 1 + 1 / 2) / 3)


def test_miou_skips_absent_classes_and_rejects_bad_labels():
    cm = confusion_matrix(torch.tensor([0, 0, 1]), torch.tensor([0, 0, 1]), 5)
    assert segmentation_scores(cm)["miou"] == pytest.approx(1.0)
    with pytest.raises(ValueError):
        confusion_matrix(torch.tensor([0]), torch.tensor([7]), 5)


def test_segmentation_loss_ignores_index():
    logits = torch.zeros(1, 3, 2, 2)
    logits[0, 1] = 20.0
    masks = torch.tensor([[[1, 1], [255, 255]]])
    assert segmentation_loss(logits, masks) < 1e-6
    masks2 = torch.tensor([[[1, 0], [255, 255]]])
    assert segmentation_loss(logits, masks2) == pytest.approx(10.0, abs=1e-3)
