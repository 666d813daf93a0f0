"""Dense tasks on a language-model backbone: DETR-style detection and Segmenter-style segmentation.

Commands: ``lm2v detect`` and ``lm2v segment`` (see :mod:`lm2vision.cli.dense`). Offline data:
:func:`make_synthetic_dense`. Everything works on patch tokens (B, T, C) from
``VisionBackbone.forward_features``.
"""
from .boxes import box_area, box_cxcywh_to_xyxy, box_iou, box_xyxy_to_cxcywh, generalized_box_iou
from .config import DenseDataConfig, DetectConfig, InferConfig, SegmentConfig, check_dense_config
from .datasets import CocoDetection, SegmentationFolder, segmentation_pairs
from .engine import DenseTask, build_backbone, detection_task, load_dense_model, run_dense, segmentation_task
from .heads import DetrHead, DetrHeadConfig, LinearDecoder, MaskTransformer, SegHeadConfig, copy_blocks
from .inference import detections_from_outputs, predict_detections, predict_segmentation, slide_logits
from .losses import DetectLossConfig, detr_loss, segmentation_loss, set_loss_terms
from .matcher import MatchCosts, hungarian_match, match_cost
from .metrics import coco_map, confusion_matrix, per_class_iou, segmentation_scores
from .model import Detector, Segmenter
from .synthetic import make_synthetic_dense

__all__ = [
    "box_area", "box_cxcywh_to_xyxy", "box_iou", "box_xyxy_to_cxcywh", "generalized_box_iou",
    "DenseDataConfig", "DetectConfig", "InferConfig", "SegmentConfig", "check_dense_config",
    "CocoDetection", "SegmentationFolder", "segmentation_pairs",
    "DenseTask", "build_backbone", "detection_task", "load_dense_model", "run_dense", "segmentation_task",
    "DetrHead", "DetrHeadConfig", "LinearDecoder", "MaskTransformer", "SegHeadConfig", "copy_blocks",
    "detections_from_outputs", "predict_detections", "predict_segmentation", "slide_logits",
    "DetectLossConfig", "detr_loss", "segmentation_loss", "set_loss_terms",
    "MatchCosts", "hungarian_match", "match_cost",
    "coco_map", "confusion_matrix", "per_class_iou", "segmentation_scores",
    "Detector", "Segmenter", "make_synthetic_dense",
]
