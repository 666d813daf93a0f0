"""Synthetic generator, dataset readers, dense heads on token grids, inference modes."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from lm2vision.dense.config import InferConfig
from lm2vision.dense.datasets import CocoDetection, SegmentationFolder, segmentation_pairs
from lm2vision.dense.heads import (DetrHead, DetrHeadConfig, LinearDecoder, MaskTransformer, SegHeadConfig,
                                   sine_positions_2d)
from lm2vision.dense.inference import predict_segmentation, slide_logits
from lm2vision.dense.model import Segmenter
from lm2vision.dense.synthetic import make_synthetic_dense
from lm2vision.errors import Lm2vError
from lm2vision.models import ModelConfig, create_backbone


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return make_synthetic_dense(tmp_path_factory.mktemp("syn"), n_train=12, n_val=4, image_size=32, seed=3)


def test_synthetic_boxes_match_masks(synth):
    coco = json.loads((synth / "annotations" / "instances_train.json").read_text())
    assert len(coco["images"]) == 12 and [c["id"] for c in coco["categories"]] == [1, 2, 3]
    assert (synth / "classes.txt").read_text().split() == ["background", "rectangle", "ellipse", "triangle"]
    for img in coco["images"]:
        mask = np.asarray(Image.open(synth / "masks" / "train" / img["file_name"]))
        anns = [a for a in coco["annotations"] if a["image_id"] == img["id"]]
        assert 1 <= len(anns) <= 3
        assert set(np.unique(mask)) - {0} <= {a["category_id"] for a in anns}
        for a in anns:
            x, y, w, h = a["bbox"]
            inside = mask[y:y + h, x:x + w] == a["category_id"]
            assert inside.sum() >= 0.3 * w * h  # the shape fills its box (a triangle fills half)
            assert 0 <= x and x + w <= 32 and 0 <= y and y + h <= 32


def test_synthetic_is_seeded(tmp_path):
    a = make_synthetic_dense(tmp_path / "a", 2, 1, 16, seed=5)
    b = make_synthetic_dense(tmp_path / "b", 2, 1, 16, seed=5)
    assert (a / "images/train/000001.png").read_bytes() == (b / "images/train/000001.png").read_bytes()


def test_coco_reader_normalises_boxes(synth):
    ds = CocoDetection(synth / "images" / "train", synth / "annotations" / "instances_train.json", 16, train=False)
    coco = json.loads((synth / "annotations" / "instances_train.json").read_text())
    img, t = ds[0]
    assert img.shape == (3, 16, 16) and img.dtype == torch.uint8
    x, y, w, h = [a for a in coco["annotations"] if a["image_id"] == t["image_id"]][0]["bbox"]
    assert torch.allclose(t["boxes"][0], torch.tensor([(x + w / 2) / 32, (y + h / 2) / 32, w / 32, h / 32]))
    assert ds.classes == ["rectangle", "ellipse", "triangle"] and t["orig_size"] == (32, 32)
    with pytest.raises(Lm2vError):
        CocoDetection(synth / "images" / "train", synth / "nope.json", 16, train=False)


def _write_pair(img_path, mask_path, mask):
    img_path.parent.mkdir(parents=True, exist_ok=True)
    mask_path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros(mask.shape + (3,), np.uint8)).save(img_path)
    Image.fromarray(mask.astype(np.uint8)).save(mask_path)


def test_ade20k_layout_reduces_zero_label(tmp_path):
    mask = np.array([[0, 1], [150, 3]])
    _write_pair(tmp_path / "images/validation/a.jpg", tmp_path / "annotations/validation/a.png", mask)
    pairs, classes, reduce = segmentation_pairs("ade20k", tmp_path, "val")
    assert len(classes) == 150 and reduce
    _, m = SegmentationFolder(pairs, classes, 8, train=False, reduce_zero_label=reduce)[0]
    assert m.tolist() == [[255, 0], [149, 2]]


def test_pascal_context_layout(tmp_path):
    mask = np.array([[0, 59], [1, 2]])
    _write_pair(tmp_path / "JPEGImages/2008_000002.jpg", tmp_path / "SegmentationClassContext/2008_000002.png", mask)
    (tmp_path / "ImageSets/SegmentationContext").mkdir(parents=True)
    (tmp_path / "ImageSets/SegmentationContext/val.txt").write_text("2008_000002\n")
    pairs, classes, reduce = segmentation_pairs("pascal_context", tmp_path, "val")
    _, m = SegmentationFolder(pairs, classes, 8, train=False, reduce_zero_label=reduce)[0]
    assert len(classes) == 59 and m.tolist() == [[255, 58], [0, 1]]
    pairs, classes, reduce = segmentation_pairs("pascal_context60", tmp_path, "val")
    _, m = SegmentationFolder(pairs, classes, 8, train=False, reduce_zero_label=reduce)[0]
    assert len(classes) == 60 and m.tolist() == [[0, 59], [1, 2]]


def test_folder_layout_and_errors(synth, tmp_path):
    pairs, classes, reduce = segmentation_pairs("folder", synth, "train")
    assert len(pairs) == 12 and classes[0] == "background" and not reduce
    ds = SegmentationFolder(pairs, classes, 16, train=True, min_scale=0.5, max_scale=1.0)
    img, m = ds[0]
    assert img.shape == (3, 16, 16) and m.shape == (16, 16) and int(m[m != 255].max()) <= 3
    with pytest.raises(Lm2vError, match="layout"):
        segmentation_pairs("cityscapes", synth, "train")
    with pytest.raises(Lm2vError, match="not found"):
        segmentation_pairs("folder", tmp_path / "missing", "train")


def test_heads_on_generic_tokens():
    tokens = torch.randn(2, 16, 24)  # (B, T, C), grid 4x4
    det = DetrHead(24, 4, num_classes=3, cfg=DetrHeadConfig(num_queries=5, d_model=32, num_layers=2, ffn_dim=64))
    out = det.train()(tokens)
    assert out["logits"].shape == (2, 5, 4) and out["boxes"].shape == (2, 5, 4) and len(out["aux"]) == 1
    assert 0 < out["boxes"].min() and out["boxes"].max() < 1
    mt = MaskTransformer(24, 4, num_classes=6, d_model=32, num_layers=2, num_heads=4)
    masks = mt(tokens)
    assert masks.shape == (2, 6, 4, 4)
    masks.sum().backward()
    assert all(p.grad is not None for p in mt.parameters())
    assert LinearDecoder(24, 4, 6)(tokens).shape == (2, 6, 4, 4)
    pos = sine_positions_2d(4, 4, 32)
    assert pos.shape == (16, 32) and torch.unique(pos, dim=0).shape[0] == 16


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-bert", "tiny-llama"])
def test_decoder_initialised_from_lm_blocks(name):
    bb = create_backbone(ModelConfig(name=name, pretrained=False, image_size=16, patch_size=4))
    seg = Segmenter(bb, 5, SegHeadConfig(init_from_lm_blocks=2)).eval()  # eval: no dropout
    for i in range(2):
        src, dst = bb.blocks[i].state_dict(), seg.head.blocks[i].state_dict()
        assert src.keys() == dst.keys() and all(torch.equal(src[k], dst[k]) for k in src)
        assert seg.head.blocks[i] is not bb.blocks[i]  # copies: fine-tuning one leaves the other
    x = torch.randn(1, 16, bb.width)
    run = bb.block_fn()
    assert run(seg.head.blocks[0], x).shape == x.shape
    assert torch.allclose(run(seg.head.blocks[0], x), run(bb.blocks[0], x))
    assert seg(torch.randn(2, 3, 16, 16)).shape == (2, 5, 16, 16)
    with pytest.raises(Lm2vError):
        Segmenter(bb, 5, SegHeadConfig(init_from_lm_blocks=3))


class _PixelModel(torch.nn.Module):
    """A 1x1 conv: translation-equivariant, so sliding windows must reproduce the full-image answer."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 1)

    def forward(self, x):
        assert x.shape[-2:] == (8, 8)
        return self.conv(x)


def test_sliding_window_matches_full_image_for_pointwise_model():
    torch.manual_seed(0)
    m = _PixelModel()
    x = torch.randn(3, 13, 21)
    full = m.conv(x[None])[0]
    assert torch.allclose(slide_logits(m, x, 8, 3, 4), full, atol=1e-5)
    small = torch.randn(3, 5, 6)  # smaller than a window: padded, then cropped back
    assert torch.allclose(slide_logits(m, small, 8, 4, 4), m.conv(small[None])[0], atol=1e-5)
    img = torch.randint(0, 256, (3, 20, 12), dtype=torch.uint8)
    assert predict_segmentation(m, img, 8, 4, InferConfig(mode="slide", stride=4)).shape == (4, 20, 12)
    assert predict_segmentation(m, img, 8, 4, InferConfig(mode="resize")).shape == (4, 20, 12)
