"""``lm2v analyze`` / ``lm2v compare`` end to end on a tiny run trained here (tiny BERT, 16 px images)."""
import base64
import json
import re

import pytest
import torch
from PIL import Image

from lm2vision.cli import main as cli_main

PARTS = ["Curves", "Weight statistics", "Loss landscape", "Feature geometry", "Covariance alignment", "Layer geometry"]


def _write_images(root, split, per_class, seed):
    g = torch.Generator().manual_seed(seed)
    for c, name in enumerate(["red", "green", "blue"]):
        d = root / split / name
        d.mkdir(parents=True)
        for i in range(per_class):
            px = (torch.rand(16, 16, 3, generator=g) * 80).to(torch.uint8)
            px[..., c] += 170  # one dominant channel per class
            Image.fromarray(px.numpy()).save(d / f"{i}.png")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from lm2vision.config import load_config
    from lm2vision.train import RunConfig, run_stage

    base = tmp_path_factory.mktemp("analysis")
    data = base / "data"
    _write_images(data, "train", 12, 0)
    _write_images(data, "test", 10, 1)
    cfg = load_config(RunConfig, None, [
        "stage=bridge", "labels.ratio=1.0", f"data.dataset={data}", "data.val_fraction=0.25",
        "model.name=tiny-bert", "model.pretrained=false", "model.image_size=16", "model.patch_size=4",
        "optim.epochs=2", "optim.batch_size=9", "runtime.progress=false", "runtime.tensorboard=false",
    ])
    run_stage(cfg, base / "run")
    return base / "run"


def test_analyze_writes_every_section(tiny_run, tmp_path, monkeypatch, capsys):
    from transformers import ViTConfig, ViTModel

    vit_dir = tmp_path / "vit"
    ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                       image_size=16, patch_size=4)).save_pretrained(vit_dir)
    out = tmp_path / "report"
    argv = ["analyze", str(tiny_run), "--out", str(out), "--samples", "30", "--grid", "3", "--no-progress",
            "--compare-model", str(vit_dir), "--compare-model", "tiny-gpt2@scratch", "--directions", "training",
            "align_k=4"]
    assert cli_main.main(argv) == 0
    html = (out / "report.html").read_text()
    md = (out / "report.md").read_text()
    for part in PARTS:
        assert f"<h2>{part}</h2>" in html and f"## {part}" in md
    imgs = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    # curves, histogram, contour, surface, t-SNE, PCA, eigen mapping, layer geometry (all models in one figure)
    assert len(imgs) == 10  # + a layer-CKA heatmap per compare model that takes images
    assert all(base64.b64decode(i)[:8] == b"\x89PNG\r\n\x1a\n" for i in imgs)
    for link in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md):
        assert (out / link).is_file()
    numbers = json.loads((out / "analysis.json").read_text())
    models = [r["model"] for r in numbers["Weight statistics"]["overall"]]
    assert models == ["run (final)", "scratch", str(vit_dir), "tiny-gpt2@scratch", "run (trainable only)"]
    by_block = {r["block"]: r for r in numbers["Weight statistics"]["abs outlier share per block, all models"]}
    assert set(by_block) == {"block.0", "block.1", "other"}
    assert by_block["block.0"]["scratch"] == 0.0  # fresh BERT init: N(0, 0.02), LayerNorm weights exactly 1
    land = numbers["Loss landscape"]["landscape"][0]
    assert land["grid"] == "3x3" and land["samples"] == 30
    grid = json.loads((out / "landscape.json").read_text())
    assert grid["alphas"] == [-1.0, 0.0, 1.0] and grid["betas"] == [-1.0, 0.0, 1.0]
    flat = [v for row in grid["loss"] for v in row]
    assert land["loss_min"] == min(flat) and land["loss_max"] == max(flat)
    align = numbers["Covariance alignment"]["alignment"]
    assert [a["weights"] for a in align] == ["before (init)", "after (final)"] and align[0]["dim"] == 48
    assert numbers["Feature geometry"]["cluster quality"][0]["n"] == 30
    # tiny-bert has no pretrained weights: said in the report, not hidden
    assert "no language-pretrained reference" in html
    # the landscape centre equals the final model's loss on the same 30 images
    from lm2vision.analysis.models import load_run
    from lm2vision.analysis.run import AnalyzeConfig, load_sample
    from lm2vision.train import load_run_model

    loaded = load_run(tiny_run)
    s = load_sample(loaded.cfg, AnalyzeConfig(samples=30))
    with torch.no_grad():
        expect = float(torch.nn.functional.cross_entropy(loaded.model.eval()(s.x), s.y))
    assert land["loss_centre"] == pytest.approx(expect, rel=1e-4) == grid["loss"][1][1]
    # training directions: d1 = theta_T - theta_0, so (a, b) = (-1, 0) is the model at its initial weights
    init_model, _ = load_run_model(tiny_run, weights="init.safetensors")
    with torch.no_grad():
        at_init = float(torch.nn.functional.cross_entropy(init_model.eval()(s.x), s.y))
    assert grid["loss"][0][1] == pytest.approx(at_init, rel=1e-4) and abs(at_init - expect) > 1e-3
    # a second run refuses to overwrite; --overwrite with --skip works
    assert cli_main.main(argv) == 2
    assert "report directory " in (err := capsys.readouterr().err) and "already exists; use --overwrite to replace it" in err
    assert cli_main.main(["analyze", str(tiny_run), "--out", str(out), "--overwrite", "--no-progress",
                          "--skip", "landscape,features,alignment,weights"]) == 0
    html = (out / "report.html").read_text()
    assert "<h2>Curves</h2>" in html and "<h2>Loss landscape</h2>" not in html


def test_bad_input_is_one_line_error(tiny_run, tmp_path, monkeypatch, capsys):
    assert cli_main.main(["analyze", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "not an lm2v run directory" in capsys.readouterr().err
    assert cli_main.main(["analyze", str(tiny_run), "--out", str(tmp_path / "o"), "--skip", "nonsense"]) == 2
    err = capsys.readouterr().err
    assert "skip items must be one of curves, weights, landscape, features, alignment, layers, geometry, got 'nonsense'" in err


def test_compare_table_and_curves(tiny_run, tmp_path, monkeypatch, capsys):
    out = tmp_path / "cmp"
    assert cli_main.main(["compare", str(tiny_run), str(tiny_run), "--out", str(out)]) == 0
    rows = json.loads((out / "compare.json").read_text())["runs"]
    assert len(rows) == 2 and rows[0]["label_ratio"] == 1.0 and rows[0]["epochs"] == 2
    records = [json.loads(l) for l in (tiny_run / "metrics.jsonl").read_text().splitlines()]
    test = [r for r in records if r.get("event") == "test"][-1]
    assert rows[0]["test_acc"] == pytest.approx(test["test_acc"])
    assert "<h2>Runs</h2>" in (out / "report.html").read_text()
