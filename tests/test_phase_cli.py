"""``lm2v phase`` end to end on the bundled images with tiny in-memory models, a run directory and MiniLM."""
import csv
import json

import pytest
import torch

from lm2vision.cli.main import main
from lm2vision.config import save_config
from lm2vision.models import ModelConfig
from lm2vision.phase.sides import load_language, load_vision
from lm2vision.phase.ntk import NTKConfig, empirical_ntk
from lm2vision.phase.screen import ScreenConfig, language_inputs, load_pairs, vision_inputs
from lm2vision.phase.similarity import kernel_similarity
from lm2vision.train.checkpoint import save_full_model, save_tensors, trainable_state
from lm2vision.train.config import RunConfig
from lm2vision.train.rundir import build_architecture

SMALL = ["--samples", "40", "--ntk-samples", "6", "--agop-samples", "4", "--no-progress"]


def _fake_run(path):
    """A finished stage-1 run directory as lm2vision.train leaves it (config, init and final weights)."""
    cfg = RunConfig(model=ModelConfig(name="tiny-gpt2", pretrained=False, image_size=16, patch_size=4))
    model = build_architecture(cfg)
    path.mkdir()
    save_config(cfg, path / "config.yaml")
    save_tensors(path / "init.safetensors", trainable_state(model))
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("lm.h."):
                p.add_(0.5 * torch.randn(p.shape, generator=g))  # "training" moved the blocks
    save_full_model(path / "model.safetensors", model)
    return path


def _rows(out):
    with open(out / "table.csv") as f:
        return list(csv.DictReader(f))


def test_phase_tiny_models_and_run_dir(tmp_path, capsys):
    run = _fake_run(tmp_path / "bridge")
    out = tmp_path / "phase"
    argv = ["phase", "--vision", "tiny-bert", str(run), "--language", "tiny-gpt2", "--out", str(out), *SMALL,
            "ntk.method=jacobian"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "| tiny-bert | tiny-gpt2 |" in printed and "S_cross" in printed
    rows = _rows(out)
    assert [(r["vision"], r["language"]) for r in rows] == [("tiny-bert", "tiny-gpt2"), (str(run), "tiny-gpt2")]
    scratch, bridged = rows
    assert float(scratch["S_v"]) == pytest.approx(1.0, abs=1e-9) and scratch["phase_v"] == "lazy"  # now = init
    assert float(bridged["S_v"]) < 0.99  # the run's blocks moved away from init.safetensors
    assert float(scratch["S_l"]) == pytest.approx(1.0, abs=1e-9)
    assert 0.1 <= float(scratch["align_chance"]) <= 0.2 and 0 <= float(scratch["align_top1"]) <= 1
    details = json.loads((out / "results.json").read_text())
    assert details["models"][f"vision:{run}"]["ntk_method"] == "jacobian"
    for key in ("vision:tiny-bert", "language:tiny-gpt2"):  # per-block AGOP (tiny models have 2 blocks)
        ratios = details["models"][key]["agop_layer_ratios"]
        assert sorted(ratios) == ["block.0", "block.1"] and all(r >= 1.0 for r in ratios.values())
    assert (out / "phase_landscape.png").stat().st_size > 1000 and (out / "table.md").is_file()

    # S_cross recomputed independently from the same paired samples
    cfg = ScreenConfig(samples=40)
    pairs = load_pairs(cfg)
    v, lang = load_vision("tiny-bert", 32, 4), load_language("tiny-gpt2")
    xv, xl = vision_inputs(v, pairs, cfg.data, torch.device("cpu"))[:6], tuple(t[:6] for t in language_inputs(lang, pairs, torch.device("cpu")))
    theta_v = empirical_ntk(v.now, xv, cfg=NTKConfig(method="jacobian"), names=v.now.ntk_names())
    theta_l = empirical_ntk(lang.now, xl, cfg=NTKConfig(method="jacobian"), names=lang.now.ntk_names())
    assert float(scratch["S_cross"]) == pytest.approx(kernel_similarity(theta_v, theta_l), rel=1e-6)

    assert main(argv) == 2  # existing output without --overwrite
    assert main(argv + ["--overwrite"]) == 0


def test_phase_bad_input_exits_2(tmp_path, capsys):
    base = ["phase", "--vision", "tiny-bert", "--language", "tiny-bert", *SMALL]
    assert main(base + ["--out", str(tmp_path / "a"), "ntk.method=exact"]) == 2
    assert main(base + ["--out", str(tmp_path / "b"), "nope=1"]) == 2
    assert main(["phase", "--vision", "tiny-bert", "--language", str(tmp_path / "missing"), "--out",
                 str(tmp_path / "c"), *SMALL]) == 2
    assert main(base + ["--out", str(tmp_path / "d"), "--samples", "5000"]) == 2  # more than the split holds
    err = capsys.readouterr().err
    assert "lm2v phase: error:" in err and "cannot load language model" in err
    assert "ntk.method must be one of auto, jacobian, vjp, projection, got 'exact'" in err
