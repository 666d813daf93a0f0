"""``lm2v detect`` / ``lm2v segment`` end to end in-process on tiny synthetic sets."""
import contextlib
import io
import json

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

from lm2vision.cli import main as cli_main
from lm2vision.config import save_config
from lm2vision.models import ModelConfig, create_backbone
from lm2vision.train import RunConfig, save_full_model
from reference import miou_and_pixel_acc

TINY = ["model.pretrained=false", "model.image_size=16", "model.patch_size=4", "optim.batch_size=8",
        "head.d_model=16", "head.num_heads=2", "runtime.tensorboard=false", "runtime.progress=false"]


@pytest.fixture(autouse=True)
def _only_dense(monkeypatch, one_thread):
    # other commands' modules may not exist yet in this checkout; the dense ones are under test
    monkeypatch.setattr(cli_main, "COMMANDS", {"detect": "dense", "segment": "dense"})


def _records(run):
    return [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]


def _image(path) -> torch.Tensor:
    return torch.from_numpy(np.asarray(Image.open(path).convert("RGB")).copy()).permute(2, 0, 1)  # (3, H, W) uint8


def _map_by_pycocotools(run) -> float:
    """AP@[.5:.95] of the reloaded model on the validation images, scored by pycocotools directly."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from lm2vision.dense.engine import load_dense_model
    from lm2vision.dense.inference import predict_detections

    model, cfg, _ = load_dense_model(run)
    root = run / "synthetic"
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(root / "annotations" / "instances_val.json"))
    cat_ids = sorted(gt.getCatIds())
    dets = []
    for info in gt.dataset["images"]:
        (d,) = predict_detections(model, [_image(root / "images" / "val" / info["file_name"])], cfg.model.image_size)
        for score, label, (x0, y0, x1, y1) in zip(d["scores"].tolist(), d["labels"].tolist(), d["boxes"].tolist()):
            dets.append({"image_id": info["id"], "category_id": cat_ids[label], "score": score,
                         "bbox": [x0, y0, x1 - x0, y1 - y0]})
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(gt, gt.loadRes(dets), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return float(ev.stats[0])


def test_detect_synthetic_end_to_end_and_resume(tmp_path, capsys):
    run = tmp_path / "det"
    argv = ["detect", "--synthetic", "16", "--out", str(run), "model.name=tiny-bert", "optim.epochs=2",
            "runtime.stop_after=1", "eval_every=2", "head.num_queries=4", "head.ffn_dim=32", "head.num_layers=1"] + TINY
    assert cli_main.main(argv) == 0
    assert not (run / "summary.json").exists() and [r["epoch"] for r in _records(run)] == [1]
    assert cli_main.main(["detect", "--out", str(run), "--resume"]) == 0
    for f in ("config.yaml", "summary.json", "model.safetensors", "init.safetensors", "checkpoints/last.json",
              "synthetic/annotations/instances_val.json"):
        assert (run / f).is_file(), f
    recs = _records(run)
    assert [r["epoch"] for r in recs] == [1, 2, 2] and recs[-1]["event"] == "test"
    assert "val_map" not in recs[0] and "val_map" in recs[1]  # eval_every=2
    summary = json.loads((run / "summary.json").read_text())
    assert summary["stage"] == "detect"
    # the final figure is the saved model's mAP on the validation images, recomputed from the files
    assert summary["test_map"] == pytest.approx(_map_by_pycocotools(run), abs=1e-6)
    assert summary["test_map"] == recs[2]["test_map"]
    assert yaml.safe_load((run / "config.yaml").read_text())["head"]["num_queries"] == 4
    assert "detect done: " in capsys.readouterr().out
    # an existing run is refused without --overwrite, with one line and exit code 2
    assert cli_main.main(argv) == 2
    assert "already exists" in capsys.readouterr().err


def test_segment_linear_decoder_with_sliding_inference(tmp_path):
    run = tmp_path / "seg"
    assert cli_main.main(["segment", "--synthetic", "12", "--out", str(run), "model.name=tiny-llama",
                          "optim.epochs=1", "head.decoder=linear", "infer.mode=slide", "infer.stride=8"] + TINY) == 0
    s = json.loads((run / "summary.json").read_text())
    # recomputed from the reloaded model, sliding windows over each full validation image, IoU by hand
    from lm2vision.dense.engine import load_dense_model
    from lm2vision.dense.inference import predict_segmentation

    model, cfg, classes = load_dense_model(run)
    images = sorted((run / "synthetic" / "images" / "val").iterdir())
    preds = [predict_segmentation(model, _image(f), 16, 4, cfg.infer).argmax(0) for f in images]
    masks = [torch.from_numpy(np.asarray(Image.open(run / "synthetic" / "masks" / "val" / f"{f.stem}.png")).astype(np.int64))
             for f in images]
    miou, pixel_acc = miou_and_pixel_acc(preds, masks, 4)
    assert len(images) == 4 and s["test_miou"] == pytest.approx(miou, abs=1e-6)
    assert s["test_pixel_acc"] == pytest.approx(pixel_acc, abs=1e-6)
    weights = load_file(str(run / "model.safetensors"))
    assert weights["head.head.weight"].shape == (4, 32)  # 4 classes (background + 3 shapes), width 32


def test_segment_starts_from_a_bridged_run(tmp_path):
    bridge = tmp_path / "bridge"
    model_cfg = ModelConfig(name="tiny-gpt2", pretrained=False, image_size=16, patch_size=4, init_seed=7)
    bb = create_backbone(model_cfg)
    with torch.no_grad():
        bb.blocks[0].attn.c_attn.weight.add_(1.0)  # "bridged": differs from a fresh init
    bridge.mkdir()
    save_config(RunConfig(stage="bridge", model=model_cfg), bridge / "config.yaml")
    save_full_model(bridge / "model.safetensors", bb)
    run = tmp_path / "seg"
    assert cli_main.main(["segment", "--synthetic", "8", "--out", str(run), f"init={bridge}", "optim.epochs=1",
                          "head.init_from_lm_blocks=1"] + TINY[3:]) == 0
    init = load_file(str(run / "init.safetensors"))
    w = bb.blocks[0].attn.c_attn.weight
    assert torch.equal(init["backbone.lm.h.0.attn.c_attn.weight"], w)
    assert torch.equal(init["head.blocks.0.attn.c_attn.weight"], w)  # decoder block copied from the LM
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["model"]["name"] == "tiny-gpt2" and saved["model"]["init_seed"] == 7


@pytest.mark.parametrize("argv, message", [
    (["segment", "--out", "{tmp}/x", "data.root={tmp}/none", "data.layout=folder"], "dataset root not found"),
    (["segment", "--out", "{tmp}/x", "data.root={tmp}", "data.layout=voc"], "data.layout must be one of"),
    (["detect", "--out", "{tmp}/x", "data.root={tmp}", "infer.mode=slide"], "resize only"),
    (["detect", "--out", "{tmp}/x"], "data.root is empty"),
    (["detect", "--out", "{tmp}/x", "--synthetic", "4", "optim.nope=1"], "bad config"),
    (["detect", "--out", "{tmp}/x", "--resume"], "nothing to resume"),
    (["segment", "--out", "{tmp}/x", "data.root={tmp}", "runtime.amp=fp8"], "runtime.amp must be one of auto, bf16, fp16, off, got 'fp8'"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, argv, message):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert cli_main.main(argv + TINY[:3]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_finished_run_reloads_and_reproduces_its_score(tmp_path):
    from lm2vision.dense.datasets import SegmentationFolder, segmentation_pairs
    from lm2vision.dense.engine import load_dense_model
    from lm2vision.dense.inference import predict_segmentation
    from lm2vision.dense.metrics import confusion_matrix, segmentation_scores

    run = tmp_path / "seg"
    assert cli_main.main(["segment", "--synthetic", "8", "--out", str(run), "model.name=tiny-qwen3",
                          "optim.epochs=1", "head.num_layers=1"] + TINY) == 0
    model, cfg, classes = load_dense_model(run)
    assert classes == ["background", "rectangle", "ellipse", "triangle"]
    pairs, _, _ = segmentation_pairs("folder", run / "synthetic", "val")
    cm = torch.zeros(4, 4, dtype=torch.int64)
    for img, mask in SegmentationFolder(pairs, classes, 16, train=False):
        cm += confusion_matrix(predict_segmentation(model, img, 16, 4, cfg.infer).argmax(0), mask, 4)
    summary = json.loads((run / "summary.json").read_text())
    assert segmentation_scores(cm)["miou"] == pytest.approx(summary["test_miou"], abs=1e-6)
