"""``lm2v phase`` end to end on the bundled images with tiny in-memory models, a run directory and MiniLM."""
import copy
import csv
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from reference import kernel_alignment, normalised, per_sample_ntk, ridge_retrieval_top1

from lm2vision.cli.main import main
from lm2vision.config import save_config
from lm2vision.data import DataConfig
from lm2vision.models import ModelConfig
from lm2vision.phase.screen import ScreenConfig, load_pairs
from lm2vision.phase.sides import load_language, load_vision
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


def _vision_params(m):
    """The vision kernel's parameters by definition: all but the class head and the word-token table
    (images enter through inputs_embeds, so the table is never read)."""
    skip = {id(m.backbone.lm.get_input_embeddings().weight), *map(id, m.backbone.head.parameters())}
    return [p for p in m.parameters() if id(p) not in skip]


def _language_params(m):
    """The language kernel's parameters: all but the token table (tiny-gpt2 has no pooler)."""
    skip = set(map(id, m.model.get_input_embeddings().parameters()))
    return [p for p in m.parameters() if id(p) not in skip]


def _ntk64(embedder, inputs, params_of):
    """Trace-NTK over the embedder's 8 projected outputs, per sample and output by autograd, in float64."""
    m = copy.deepcopy(embedder).double()
    return per_sample_ntk(m, [tuple(a.double() if a.is_floating_point() else a for a in x) for x in inputs],
                          params_of(m))


def test_phase_tiny_models_and_run_dir(tmp_path, capsys, one_thread):
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
    assert [float(r["S_l"]) for r in rows] == pytest.approx([1.0, 1.0], abs=1e-9)  # one language model, now = init
    details = json.loads((out / "results.json").read_text())
    assert details["models"][f"vision:{run}"]["ntk_method"] == "jacobian"
    for key in ("vision:tiny-bert", "language:tiny-gpt2"):  # per-block AGOP (tiny models have 2 blocks)
        ratios = details["models"][key]["agop_layer_ratios"]
        assert sorted(ratios) == ["block.0", "block.1"] and all(r >= 1.0 for r in ratios.values())
    assert (out / "phase_landscape.png").stat().st_size > 1000 and (out / "table.md").is_file()

    # The kernels recomputed from scratch on the same first 6 pairs: one autograd.grad per sample and output
    # in float64, images normalised (and resized for the 16 px run) by hand, captions byte-tokenised by hand
    # without padding. The library contracts float32 Jacobians in float32 (measured kernel error ~3e-5,
    # S error <= 2e-5 on the moved run, 1e-3 once centring cancels the kernels' shared constant).
    mean, std = DataConfig().mean, DataConfig().std
    pairs = load_pairs(ScreenConfig(samples=40))
    vision, run_side, lang = load_vision("tiny-bert", 32, 4), load_vision(str(run)), load_language("tiny-gpt2")
    x32 = normalised(pairs.images, mean, std)  # (40, 3, 32, 32): the bundled images are 32 px
    x16 = normalised(F.interpolate(pairs.images.float(), size=(16, 16), mode="bicubic", align_corners=False,
                                   antialias=True), mean, std)  # (40, 3, 16, 16) for the 16 px run
    V = lang.now.model.config.vocab_size  # ByteTokenizer: byte b -> id 1 + b % (V - 1)
    ids = [torch.tensor([[1 + b % (V - 1) for b in c.encode()]]) for c in pairs.captions]  # (1, T_i) each
    k_v = _ntk64(vision.now, [(x32[i:i + 1],) for i in range(6)], _vision_params)
    k_run = _ntk64(run_side.now, [(x16[i:i + 1],) for i in range(6)], _vision_params)
    k_run0 = _ntk64(run_side.init, [(x16[i:i + 1],) for i in range(6)], _vision_params)
    k_l = _ntk64(lang.now, [(t, torch.ones_like(t)) for t in ids[:6]], _language_params)
    assert float(scratch["S_cross"]) == pytest.approx(kernel_alignment(k_v, k_l), rel=1e-5)
    assert float(scratch["S_cross_centered"]) == pytest.approx(kernel_alignment(k_v, k_l, centred=True), rel=5e-3)
    assert float(bridged["S_cross"]) == pytest.approx(kernel_alignment(k_run, k_l), rel=1e-4)
    assert float(bridged["S_v"]) == pytest.approx(kernel_alignment(k_run, k_run0), rel=1e-4)  # blocks moved: ~0.52

    # Alignment on all 40 pairs: the seeded half split (numpy default_rng(seed 0), first 20 held out), a ridge
    # map (alpha = ridge = 1) from the unprojected embeddings, cosine retrieval, a hit = same class.
    perm = np.random.default_rng(0).permutation(40)
    test, fit = perm[:20], perm[20:]
    held_out = torch.bincount(pairs.labels[torch.as_tensor(test)], minlength=10).double()
    assert float(scratch["align_chance"]) == pytest.approx(float((held_out / 20).pow(2).sum()), abs=1e-12)
    assert float(bridged["align_chance"]) == float(scratch["align_chance"])
    with torch.no_grad():
        z_l = torch.cat([lang.now.embed(t, torch.ones_like(t)) for t in ids])  # (40, C)
        for row, side, x in ((scratch, vision, x32), (bridged, run_side, x16)):
            expected = ridge_retrieval_top1(side.now.embed(x), z_l, pairs.labels, fit, test, alpha=1.0)
            assert float(row["align_top1"]) == pytest.approx(expected, abs=1e-12)

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
    assert "lm2v phase: error:" in err and "no such directory" in err
    assert "ntk.method must be one of auto, jacobian, vjp, projection, got 'exact'" in err
