"""``lm2v align``: contrastive alignment with known answers, the four methods' mechanics, the CLI."""
import json
import math

import numpy as np
import warnings

import pytest
import torch
import torch.nn as nn

from lm2vision.cli.main import main
from lm2vision.data import ImageSet
from lm2vision.errors import Lm2vError, Lm2vWarning
from lm2vision.phase.align import (AlignConfig, AlignData, Phase, Tower, clip_loss, compatible_init,
                                   examples_to_target, regularized_loss, run_methods, text_layer_groups,
                                   tower_ntk)
from lm2vision.phase.captions import TEMPLATES, caption_pairs, split_pairs
from lm2vision.phase.ntk import NTKConfig
from lm2vision.phase.similarity import kernel_similarity

NTK = NTKConfig(method="jacobian")


class Identity(nn.Module):
    """An encoder whose embedding is its input (synthetic embeddings)."""

    def embed(self, x):
        return x


class TanhScale(nn.Module):
    """embed(x) = tanh(a * x) with one trainable scalar a (hand-computable NTK)."""

    def __init__(self, a):
        super().__init__()
        self.a = nn.Parameter(torch.tensor([a]))

    def embed(self, x):
        return torch.tanh(self.a * x)


def _synthetic(shuffle: bool, n=384, n_held=128, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    rot, _ = torch.linalg.qr(torch.randn(d, d, generator=g))
    y = x @ rot.T  # language = rotation(vision)
    if shuffle:
        y = y[torch.randperm(n, generator=g)]
    tr, ho = slice(0, n - n_held), slice(n - n_held, n)
    return AlignData(x[tr], y[tr], x[ho], y[ho], torch.arange(n_held), probe_size=4)


def _run(data, method="baseline", steps=40, **kw):
    cfg = AlignConfig(methods=[method], steps=steps, batch_size=64, lr=5e-2, measure_every=20, embed_dim=16,
                      ntk=NTK, **kw)
    tv, tl = Tower(Identity(), 16, 16, seed=0), Tower(Identity(), 16, 16, seed=1)
    return run_methods(cfg, tv, tl, tv, tl, data)[method]


def test_rotation_aligns_and_shuffled_stays_at_chance():
    curve = _run(_synthetic(shuffle=False))
    assert curve[0]["top1"] < 0.2  # random heads: not aligned before training
    assert curve[-1]["top1"] > 0.95 and curve[-1]["chance"] == pytest.approx(1 / 128)
    shuffled = _run(_synthetic(shuffle=True))[-1]
    # binomial margin: 128 retrievals at p = 1/128; 3 standard deviations above chance
    p = 1 / 128
    assert shuffled["top1"] <= p + 3 * math.sqrt(p * (1 - p) / 128)
    assert [r["examples"] for r in curve] == [0, 1280, 2560]  # steps x batch 64


def test_heads_only_kernel_never_moves():
    # a linear head's Jacobian does not depend on its weights: S_v = S_l = 1 however it trains
    curve = _run(_synthetic(shuffle=False), method="adaptive")
    assert all(r["S_v"] == pytest.approx(1.0) and r["S_l"] == pytest.approx(1.0) for r in curve)
    assert all(r["lr"] == pytest.approx(5e-2) for r in curve) and curve[-1]["top1"] > 0.95


def test_clip_loss_of_a_perfect_match_is_known():
    # z_v = z_l = 2 I_4 (normalised to I_4), scale exp(t) = 2: each row's CE = -log(e^2 / (e^2 + 3))
    z = 2 * torch.eye(4)
    expected = -math.log(math.exp(2) / (math.exp(2) + 3))
    assert float(clip_loss(z, z, torch.tensor(math.log(2.0)))) == pytest.approx(expected, rel=1e-6)
    swapped = clip_loss(z, z[[1, 0, 2, 3]], torch.tensor(math.log(2.0)))  # two rows mismatched
    assert float(swapped) == pytest.approx((2 * expected + 2 * -math.log(1 / (math.exp(2) + 3))) / 4, rel=1e-6)


def test_examples_to_target_on_a_hand_made_curve():
    curve = [{"examples": e, "top1": t} for e, t in ((0, 0.1), (640, 0.29), (1280, 0.31), (1920, 0.5))]
    assert examples_to_target(curve, 0.3) == 1280
    assert examples_to_target(curve, 0.5) == 1920
    assert examples_to_target(curve, 0.6) is None


def _tanh_kernel(a, b, x):
    """Closed form: f(x) = b * tanh(a x) (bias-free head); Theta_ij = b^2 x_i x_j s_i s_j + t_i t_j over
    (a, b), s = 1 - tanh^2(a x), t = tanh(a x)."""
    t = np.tanh(a * x)
    s = 1 - t**2
    return b**2 * np.outer(x * s, x * s) + np.outer(t, t)


def _S(k1, k2):
    return float((k1 * k2).sum() / (np.linalg.norm(k1) * np.linalg.norm(k2)))


def test_regularized_loss_is_loss_plus_lambda_gap_by_hand():
    x = torch.tensor([[0.5], [-1.0], [2.0]])
    tv, tl = Tower(TanhScale(0.7), 1, 1), Tower(TanhScale(1.3), 1, 1)
    rv, rl = Tower(TanhScale(0.2), 1, 1), Tower(TanhScale(0.2), 1, 1)
    for t, r, b in ((tv, rv, 1.5), (tl, rl, -0.5)):
        with torch.no_grad():
            t.head.weight.fill_(b), r.head.weight.fill_(b)
    phase = Phase(tower_ntk(rv, x, NTK), tower_ntk(rl, x, NTK), x, x, NTK)
    xs = x.flatten().double().numpy()
    s_v = _S(_tanh_kernel(0.7, 1.5, xs), _tanh_kernel(0.2, 1.5, xs))
    s_l = _S(_tanh_kernel(1.3, -0.5, xs), _tanh_kernel(0.2, -0.5, xs))
    assert abs(s_v - s_l) > 1e-3  # the case is not trivial
    total = regularized_loss(torch.tensor(0.25), phase, tv, tl, lam=2.0)
    assert float(total) == pytest.approx(0.25 + 2.0 * abs(s_v - s_l), rel=1e-5)
    total.backward()
    assert tv.encoder.a.grad is not None and float(tv.encoder.a.grad) != 0.0  # the penalty trains the encoder
    m = phase.measure(tv, tl)
    assert (m["S_v"], m["S_l"]) == (pytest.approx(s_v, rel=1e-5), pytest.approx(s_l, rel=1e-5))


class TanhMLP(nn.Module):
    def __init__(self, seed):
        super().__init__()
        torch.manual_seed(seed)
        self.fc = nn.Linear(6, 12)

    def embed(self, x):
        return torch.tanh(self.fc(x))


def _s(tower, ref, x):
    return kernel_similarity(tower_ntk(tower, x, NTK), tower_ntk(ref, x, NTK))


@pytest.mark.parametrize("start, target", [("init", 0.6), ("far", 0.85)])
def test_compatible_init_lands_on_the_target_from_above_and_below(start, target):
    # init: the untrained tower (S = 1, above the target); far: another draw scaled by 20 (S = 0.77 on
    # this probe, below it). Either way S ends within tol of the target; only the trainable encoder moved.
    x = torch.randn(8, 6, generator=torch.Generator().manual_seed(3))
    ref, tower = Tower(TanhMLP(0), 12, 4), Tower(TanhMLP(0), 12, 4)
    if start == "far":
        tower.encoder.load_state_dict(TanhMLP(3).state_dict())
        with torch.no_grad():
            tower.encoder.fc.weight.mul_(20), tower.encoder.fc.bias.mul_(20)
    s0 = _s(tower, ref, x)
    assert (s0 == pytest.approx(1.0)) if start == "init" else (s0 < 0.8)
    head = tower.head.weight.detach().clone()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # reached: no warning
        s = compatible_init(tower, ref, x, NTK, target=target, tol=0.01)
    assert abs(s - target) <= 0.01 and _s(tower, ref, x) == pytest.approx(s)  # in place
    assert torch.equal(tower.head.weight, head) and all(p.grad is None for p in tower.parameters())


def test_compatible_init_bisects_a_step_that_crosses_the_target(monkeypatch):
    # steps of 3x each tensor's RMS overshoot: the crossing step's segment is bisected onto the target
    import lm2vision.phase.align as align_mod

    calls = []
    bisect = align_mod._bisect
    monkeypatch.setattr(align_mod, "_bisect", lambda *a: calls.append(a[4]) or bisect(*a))
    x = torch.randn(8, 6, generator=torch.Generator().manual_seed(3))
    ref, tower = Tower(TanhMLP(0), 12, 4), Tower(TanhMLP(0), 12, 4)
    s = compatible_init(tower, ref, x, NTK, target=0.9, tol=0.002, lr=3.0)
    assert abs(s - 0.9) <= 0.002 and calls == [True]  # one bisection, from above the target


def test_compatible_init_says_when_the_target_is_not_reached():
    # one step of 1% of the RMS cannot take S from 1 to 0.6 (it stays above 0.99): the tower stays
    # there, one warning gives the S reached
    x = torch.randn(8, 6, generator=torch.Generator().manual_seed(3))
    ref, tower = Tower(TanhMLP(0), 12, 4), Tower(TanhMLP(0), 12, 4)
    with pytest.warns(Lm2vWarning, match=r"^compatible init: vision side reached S = (0\.99\d|1\.000), not 0.6 \+- 0.02, "
                                         r"after 1 steps"):
        s = compatible_init(tower, ref, x, NTK, target=0.6, tol=0.02, lr=0.01, max_steps=1, name="vision")
    assert 0.99 < s < 1.0 and s == pytest.approx(_s(tower, ref, x))
    with pytest.raises(Lm2vError, match="heads alone"):
        frozen = Tower(TanhMLP(0), 12, 4)
        frozen.encoder.fc.requires_grad_(False)
        compatible_init(frozen, ref, x, NTK)


def test_captions_and_split():
    images = ImageSet(torch.zeros(40, 3, 4, 4, dtype=torch.uint8), torch.arange(40) % 4, ["a", "b", "c", "d_e"])
    pairs = caption_pairs(images, 24, TEMPLATES, seed=0)
    assert torch.bincount(pairs.labels).tolist() == [6, 6, 6, 6]
    names = ["a", "b", "c", "d e"]
    assert all(any(t.format(names[int(y)]) == c for t in TEMPLATES) for y, c in zip(pairs.labels, pairs.captions))
    assert len(set(pairs.captions)) > 4  # several templates used
    assert caption_pairs(images, 24, TEMPLATES, seed=0).captions == pairs.captions  # seeded
    split = split_pairs(pairs, 0.5, seed=0)
    assert torch.bincount(split.heldout.labels).tolist() == [3, 3, 3, 3]
    with pytest.raises(Lm2vError, match="must contain"):
        caption_pairs(images, 8, ["no slot"], seed=0)


def test_text_groups_select_blocks():
    from lm2vision.models import load_lm_config
    from transformers import AutoModel

    model = AutoModel.from_config(load_lm_config("tiny-gpt2"))
    g = text_layer_groups(model)
    assert g["block.1"] and all(n.startswith("h.1.") for n in g["block.1"])
    assert set(g["norm"]) >= {"h.0.ln_1.weight", "ln_f.weight"} and g["final_norm"] == ["ln_f.weight", "ln_f.bias"]
    assert "h.0.attn.c_attn.weight" in g["attn"] and "h.0.mlp.c_fc.weight" in g["mlp"]


def _cli(tmp_path, *extra):
    return main(["align", "--vision", "tiny-bert", "--language", "tiny-gpt2", "--out", str(tmp_path / "run"),
                 "--no-progress", "--steps", "2", "pairs=40", "probe_size=2", "measure_every=2", "batch_size=8",
                 "data.max_train_per_class=20", *extra])


def test_cli_runs_four_methods_and_prints_table(tmp_path, capsys):
    assert _cli(tmp_path) == 0
    out = capsys.readouterr().out
    for m in ("baseline", "adaptive", "regularized", "compatible"):
        assert f"| {m} |" in out
    run = tmp_path / "run"
    res = json.loads((run / "results.json").read_text())
    assert [r["method"] for r in res["rows"]] == ["baseline", "adaptive", "regularized", "compatible"]
    adaptive = [json.loads(line) for line in (run / "curves" / "adaptive.jsonl").read_text().splitlines()]
    assert [r["step"] for r in adaptive] == [0, 2]
    for r in adaptive:  # eta(t) = eta_0 * S(t), S = (S_v + S_l) / 2, at every measurement
        assert r["lr"] == pytest.approx(1e-3 * (r["S_v"] + r["S_l"]) / 2, rel=1e-6)
    assert adaptive[-1]["S_v"] < 1.0  # the last block trains: the kernel moved
    baseline = [json.loads(line) for line in (run / "curves" / "baseline.jsonl").read_text().splitlines()]
    assert all(r["lr"] == 1e-3 for r in baseline) and baseline[0]["S_v"] == pytest.approx(1.0)
    assert (run / "align_curves.png").stat().st_size > 0 and (run / "table.csv").read_text().startswith("method,")
    assert _cli(tmp_path) == 2  # never overwrites


@pytest.mark.parametrize("extra, message", [
    (["--methods", "baseline", "magic"], "methods items must be one of"),
    (["--target", "0"], "target must be in (0, 1]"),
    (["--target", "1.5"], "target must be in (0, 1]"),
    (["vision_trainable.blocks=last:9"], "last:9 asks for 9 blocks but the model has 2"),
])
def test_bad_input_is_one_line_exit_2(tmp_path, capsys, extra, message):
    assert _cli(tmp_path, *extra) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "run").exists()  # refused before any output
