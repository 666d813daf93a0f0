"""Known answers for the phase maths: NTK, kernel similarity, AGOP, alignment score."""
import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from lm2vision.errors import Lm2vError
from lm2vision.phase.agop import agop, layer_agops, spectrum
from lm2vision.phase.alignment import alignment_score
from lm2vision.phase.ntk import NTKConfig, choose_method, empirical_ntk, ntk_diagonal, ntk_trace
from lm2vision.phase.similarity import kernel_similarity, phase_label

# Draws without a generator (torch.randn, fresh nn.Linear) come from the global RNG, which the autouse
# fixture in tests/conftest.py seeds to 0 before every test.


def _linear(d_in=5, d_out=3):
    net = nn.Linear(d_in, d_out, bias=False)
    return net, torch.randn(7, d_in), torch.randn(4, d_in)


@pytest.mark.parametrize("method", ["jacobian", "vjp"])
def test_linear_ntk_is_gram_times_identity(method):
    net, x1, x2 = _linear()
    full = empirical_ntk(net, x1, x2, NTKConfig(method=method, contraction="full"))  # (7, 4, 3, 3)
    expected = torch.einsum("nd,md->nm", x1, x2)[:, :, None, None] * torch.eye(3)
    torch.testing.assert_close(full, expected, rtol=1e-5, atol=1e-5)
    trace = empirical_ntk(net, x1, x2, NTKConfig(method=method, contraction="trace"))
    torch.testing.assert_close(trace, 3 * x1 @ x2.T, rtol=1e-5, atol=1e-5)
    diag = empirical_ntk(net, x1, x2, NTKConfig(method=method, contraction="diagonal"))
    torch.testing.assert_close(diag, (x1 @ x2.T)[:, :, None].expand(7, 4, 3), rtol=1e-5, atol=1e-5)


def test_linear_ntk_projection_close_to_exact():
    net, x1, _ = _linear(d_in=200, d_out=2)
    exact = 2 * x1 @ x1.T
    est = empirical_ntk(net, x1, cfg=NTKConfig(method="projection", proj_dim=4096, seed=1))
    assert kernel_similarity(est, exact) > 0.99
    assert (est - exact).abs().max() / exact.abs().max() < 0.1


def _mlp():
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 4))


def test_three_methods_agree_on_small_mlp():
    net, x = _mlp(), torch.randn(9, 6)
    k_jac = empirical_ntk(net, x, cfg=NTKConfig(method="jacobian", chunk=4))
    k_vjp = empirical_ntk(net, x, cfg=NTKConfig(method="vjp", chunk=4))
    k_proj = empirical_ntk(net, x, cfg=NTKConfig(method="projection", proj_dim=8192, chunk=4))
    torch.testing.assert_close(k_vjp, k_jac, rtol=1e-4, atol=1e-4)
    assert kernel_similarity(k_proj, k_jac) > 0.995
    torch.testing.assert_close(torch.diagonal(k_jac), ntk_diagonal(net, x, chunk=4), rtol=1e-4, atol=1e-4)
    assert math.isclose(ntk_trace(net, x), float(torch.trace(k_jac)), rel_tol=1e-4)


def test_ntk_over_named_parameters_only():
    net, x, _ = _linear()
    net.bias = nn.Parameter(torch.zeros(3))
    k = empirical_ntk(net, x, cfg=NTKConfig(method="jacobian"), names=["bias"])
    torch.testing.assert_close(k, torch.full((7, 7), 3.0))  # d(Wx+b)/db = I
    with pytest.raises(Lm2vError):
        empirical_ntk(net, x, names=["nope"])


def test_auto_method_by_size():
    cfg = NTKConfig(memory_budget=1e6, vjp_max_work=1e9)
    assert choose_method(cfg, n_params=1000, out_dim=4, n1=10, n2=10) == "jacobian"  # 320 kB
    assert choose_method(cfg, n_params=100_000, out_dim=4, n1=10, n2=10) == "vjp"  # 4e7 work
    assert choose_method(cfg, n_params=350_000_000, out_dim=8, n1=576, n2=576) == "projection"
    assert choose_method(NTKConfig(method="vjp"), 10**9, 8, 576, 576) == "vjp"
    with pytest.raises(Lm2vError):
        empirical_ntk(_mlp(), torch.randn(2, 6), cfg=NTKConfig(method="exact"))


def test_similarity_self_scaling_and_labels():
    a = torch.randn(6, 6)
    a = a @ a.T
    assert kernel_similarity(a, a) == pytest.approx(1.0, abs=1e-12)
    assert kernel_similarity(a, 37.0 * a) == pytest.approx(1.0, abs=1e-12)
    b = torch.eye(6)
    expected = float(torch.trace(a) / (a.norm() * b.norm()))
    assert kernel_similarity(3 * a, 0.1 * b) == pytest.approx(expected, rel=1e-6)
    noise = torch.randn(6, 6)
    assert kernel_similarity(a + 5.0, a, centered=True) == pytest.approx(1.0, abs=1e-9)  # H (a + c) H = H a H
    offset = kernel_similarity(a + 100.0, a + 100.0 + noise)  # the shared constant dominates
    centred = kernel_similarity(a + 100.0, a + 100.0 + noise, centered=True)
    assert offset > 0.99 and centred == pytest.approx(kernel_similarity(a, a + noise, centered=True)) and centred < 0.99
    assert [phase_label(s) for s in (0.1, 0.5, 0.89, 0.9, 1.0)] == ["chaotic", "optimal", "optimal", "lazy", "lazy"]
    with pytest.raises(Lm2vError):
        kernel_similarity(a, torch.eye(5))


def test_agop_of_linear_map_is_wtw():
    net = nn.Linear(5, 3)
    m = agop(net, torch.randn(11, 5))
    torch.testing.assert_close(m, (net.weight.T @ net.weight).double(), rtol=1e-6, atol=1e-8)


def test_patch_agop_and_layer_agop():
    p, C = 4, 8
    conv = nn.Conv2d(3, C, kernel_size=p, stride=p)
    fn = lambda x: conv(x).flatten(2).mean(2)  # noqa: E731  (N, C): mean over L = 4 patches
    m = agop(fn, torch.randn(5, 3, 8, 8), patch_size=p)
    w = conv.weight.flatten(1).double()  # (C, 3p^2)
    torch.testing.assert_close(m, w.T @ w / 4, rtol=1e-6, atol=1e-8)  # sum_l (W/L)^T (W/L)
    net = _mlp()
    layers = layer_agops(net, torch.randn(13, 6), {"last": net[4]})
    w2 = net[4].weight.double()
    torch.testing.assert_close(layers["last"], w2.T @ w2, rtol=1e-6, atol=1e-8)


def test_spectrum_ratio_and_effective_rank():
    s = spectrum(torch.diag(torch.tensor([1e3, 10.0, 1.0, 1e-5])), rel_tol=1e-6)
    assert s.num_kept == 3 and s.ratio == pytest.approx(1e3)
    assert spectrum(torch.diag(torch.tensor([1e3, 10.0, 1.0, 1e-5])), rel_tol=1e-9).ratio == pytest.approx(1e8)
    assert spectrum(torch.eye(7)).effective_rank == pytest.approx(7.0)
    assert spectrum(torch.diag(torch.tensor([2.0, 0, 0]))).effective_rank == pytest.approx(1.0)


@pytest.mark.parametrize("method", ["ridge", "cca"])
def test_alignment_rotation_vs_shuffled(method):
    g = torch.Generator().manual_seed(0)
    zv = torch.randn(200, 16, generator=g)
    q, _ = torch.linalg.qr(torch.randn(16, 16, generator=g))
    zl = zv @ q  # paired by a rotation
    good = alignment_score(zv, zl, method=method, ridge=1e-3, cca_dim=16)
    assert good.top1 > 0.95 and good.chance == pytest.approx(0.01)
    bad = alignment_score(zv, zl[torch.randperm(200, generator=g)], method=method, ridge=1e-3, cca_dim=16)
    assert bad.top1 < 0.06


@pytest.mark.parametrize("method", ["ridge", "cca"])
def test_alignment_top1_exact_on_a_known_split(method):
    """Language = a rotation of vision on the fit rows. On the held-out rows the keys are either the
    queries' own rotations (each query finds its pair: top-1 = 1) or those of the next held-out row
    (each finds its neighbour's: top-1 = 0, or the share of neighbours in its group when groups pair
    them up). The held-out rows are the documented split: the first round(n * test_fraction) of numpy's
    default_rng(seed).permutation(n)."""
    n, d, seed = 24, 4, 5
    g = torch.Generator().manual_seed(0)
    zv = torch.randn(n, d, generator=g, dtype=torch.float64)
    rot, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    zl = zv @ rot
    test = np.random.default_rng(seed).permutation(n)[:8]  # 24 / 3 held out
    kw = dict(method=method, test_fraction=1 / 3, ridge=1e-9, cca_dim=d, seed=seed)
    good = alignment_score(zv, zl, **kw)
    assert (good.top1, good.chance, good.n_fit, good.n_test) == (1.0, pytest.approx(1 / 8), 16, 8)
    shifted = zl.clone()
    shifted[test] = zl[np.roll(test, -1)]  # key of held-out row test[j] = the rotation of row test[j + 1]
    assert alignment_score(zv, shifted, **kw).top1 == 0.0
    groups = torch.arange(100, 100 + n)
    groups[test] = torch.arange(8) // 2  # held-out rows in pairs (test[0], test[1]), (test[2], test[3]), ...
    paired = alignment_score(zv, shifted, groups=groups, **kw)
    # query j retrieves row test[j - 1]: same group for odd j (4 of 8); chance = 4 groups x (2/8)^2
    assert paired.top1 == 0.5 and paired.chance == pytest.approx(0.25)


def test_alignment_with_class_groups():
    g = torch.Generator().manual_seed(1)
    labels = torch.arange(120) % 10
    text = torch.randn(10, 12, generator=g)[labels]  # identical "captions" per class
    vision = text @ torch.randn(12, 20, generator=g) + 0.05 * torch.randn(120, 20, generator=g)
    res = alignment_score(vision, text, groups=labels)
    assert res.chance == pytest.approx(0.1, abs=0.02) and res.top1 > 0.95


def test_three_methods_agree_on_tiny_transformer_backbone():
    from lm2vision.models import ModelConfig, create_backbone
    from lm2vision.phase.encoders import VisionEmbedder

    net = VisionEmbedder(create_backbone(ModelConfig(name="tiny-gpt2", pretrained=False, image_size=8, patch_size=4)),
                         out_dim=2).eval()
    x, names = torch.randn(3, 3, 8, 8), net.ntk_names()
    assert not any(n.startswith("backbone.head.") for n in names)
    k_jac = empirical_ntk(net, x, cfg=NTKConfig(method="jacobian", contraction="full"), names=names)  # (3, 3, 2, 2)
    k_vjp = empirical_ntk(net, x, cfg=NTKConfig(method="vjp", contraction="full"), names=names)
    k_proj = empirical_ntk(net, x, cfg=NTKConfig(method="projection", proj_dim=16384), names=names)
    torch.testing.assert_close(k_vjp, k_jac, rtol=1e-3, atol=1e-4 * float(k_jac.abs().max()))
    assert kernel_similarity(k_proj, k_jac.diagonal(dim1=2, dim2=3).sum(-1)) > 0.99


def test_three_methods_agree_on_a_tiny_cnn():
    from lm2vision.models import ModelConfig, create_backbone
    from lm2vision.phase.encoders import VisionEmbedder

    torch.manual_seed(0)
    net = VisionEmbedder(create_backbone(ModelConfig(name="tiny-resnet", pretrained=False, image_size=16)),
                         out_dim=2).eval()  # convolutions, batch norm (eval: running statistics), ReLU
    x, names = torch.randn(4, 3, 16, 16), net.ntk_names()
    assert any("convolution" in n for n in names)
    k_jac = empirical_ntk(net, x, cfg=NTKConfig(method="jacobian", contraction="full"), names=names)  # (4, 4, 2, 2)
    k_vjp = empirical_ntk(net, x, cfg=NTKConfig(method="vjp", contraction="full"), names=names)
    k_proj = empirical_ntk(net, x, cfg=NTKConfig(method="projection", proj_dim=16384), names=names)
    torch.testing.assert_close(k_vjp, k_jac, rtol=1e-3, atol=1e-4 * float(k_jac.abs().max()))
    assert kernel_similarity(k_proj, k_jac.diagonal(dim1=2, dim2=3).sum(-1)) > 0.99
