"""PhaseController in isolation: S(t) bookkeeping, adaptive lr and a differentiable phase penalty."""
import pytest
import torch
import torch.nn as nn

from lm2vision.errors import Lm2vError
from lm2vision.models import ModelConfig, create_backbone
from lm2vision.train.config import PhaseConfig
from lm2vision.train.phase_hooks import PhaseController
from lm2vision.phase.ntk import NTKConfig, empirical_ntk
from lm2vision.phase.similarity import kernel_similarity


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))


def _perturb(model, scale):
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))


def test_lr_scale_measures_every_n_steps():
    model, probe = _mlp(), torch.randn(10, 6)
    ctl = PhaseController(PhaseConfig(adaptive_lr=True, every=5, probe_size=8), model, probe)
    theta0 = empirical_ntk(model, probe[:8], cfg=NTKConfig(method="jacobian"))
    assert ctl.lr_scale(0, model) == pytest.approx(1.0, abs=1e-6)
    _perturb(model, 1.0)
    assert ctl.lr_scale(3, model) == pytest.approx(1.0, abs=1e-6)  # not a measuring step: cached
    expected = kernel_similarity(empirical_ntk(model, probe[:8], cfg=NTKConfig(method="jacobian")), theta0)
    assert expected < 0.95
    assert ctl.lr_scale(5, model) == pytest.approx(expected, rel=1e-5)
    assert ctl.state()["phase_S"] == pytest.approx(expected, rel=1e-5) and ctl.state()["phase_measured_at"] == 5
    off = PhaseController(PhaseConfig(adaptive_lr=False, every=1, probe_size=8), _mlp(), probe)
    assert off.lr_scale(1, model) == 1.0 and off.state()["phase_S"] < 1.0  # still measured and logged


def test_penalty_is_differentiable_and_pulls_towards_target():
    model, probe = _mlp(), torch.randn(8, 6)
    assert PhaseController(PhaseConfig(probe_size=8), model, probe).penalty(model) is None
    with pytest.raises(Lm2vError):
        PhaseController(PhaseConfig(penalty=1.0, probe_size=8), model, probe)
    with pytest.raises(Lm2vError):
        PhaseController(PhaseConfig(probe_size=32), model, probe)  # only 8 probe images
    ctl = PhaseController(PhaseConfig(penalty=2.0, target=0.6, probe_size=8), model, probe)
    assert ctl.penalty(model).item() == pytest.approx(2.0 * 0.4, abs=1e-5)  # S = 1 at init
    _perturb(model, 0.3)  # S = 1 is a maximum (zero gradient): let "training" move the kernel first
    first = ctl.penalty(model)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(10):
        opt.zero_grad()
        loss = ctl.penalty(model)
        loss.backward()
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
        opt.step()
    assert ctl.penalty(model).item() < 0.25 * first.item()  # S(t) pulled to the target 0.6
    assert ctl.state()["phase_penalty"] == pytest.approx(ctl.penalty(model).item(), rel=1e-5)


def test_controller_on_tiny_vision_backbone_uses_trainable_blocks_only():
    model = create_backbone(ModelConfig(name="tiny-gpt2", pretrained=False, image_size=16, patch_size=4))
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("lm.h.0."))  # partial bridge training: first block only
    ctl = PhaseController(PhaseConfig(adaptive_lr=True, every=2, probe_size=4), model, torch.randn(6, 3, 16, 16))
    assert ctl.names and all(n.startswith("backbone.lm.h.0.") for n in ctl.names)
    assert ctl.theta0.shape == (4, 4)
    with torch.no_grad():
        model.lm.h[0].mlp.c_fc.weight.mul_(-3.0)
    s = ctl.lr_scale(2, model)
    assert 0.0 < s < 1.0 and model.training  # measured in eval mode, mode restored
