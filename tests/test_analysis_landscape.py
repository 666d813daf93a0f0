"""Loss landscape: centre equals the model's loss, a quadratic gives a symmetric bowl a^2 + b^2."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lm2vision.analysis import landscape as L
from lm2vision.errors import Lm2vError


class Quadratic(nn.Module):
    """Output = theta broadcast over the batch; with MSE to 0 the loss is mean(theta^2)."""

    def __init__(self, D=6):
        super().__init__()
        self.theta = nn.Parameter(torch.zeros(D))

    def forward(self, x):
        return self.theta.expand(x.shape[0], -1)


def _sq(out, y):
    return (out**2).sum(dim=1).mean()


@pytest.mark.parametrize("chunk", [1, 5])
def test_quadratic_is_symmetric_bowl(chunk):
    m = Quadratic()
    d1, d2 = L.random_directions(L.trainable_params(m), "random", seed=0)
    assert float(L.global_norm(d1)) == pytest.approx(1.0) and float(L.global_norm(d2)) == pytest.approx(1.0)
    assert float(L.dot(d1, d2)) == pytest.approx(0.0, abs=1e-6)
    g = torch.linspace(-1, 1, 5)
    land = L.evaluate_grid(m, _sq, [(torch.zeros(3, 1), torch.zeros(3))], d1, d2, g, g, chunk=chunk, progress=False)
    A, B = torch.meshgrid(g.double(), g.double(), indexing="ij")
    torch.testing.assert_close(land.loss, A**2 + B**2, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(land.loss, land.loss.flip(0).flip(1))  # L(a, b) = L(-a, -b)
    assert land.numbers()["loss_centre"] == pytest.approx(0.0, abs=1e-12)


def _tiny_classifier():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 16), nn.LayerNorm(16), nn.GELU(), nn.Dropout(0.5), nn.Linear(16, 3))


@pytest.mark.parametrize("kind,chunk", [("random", 1), ("filter", 4)])
def test_centre_equals_model_loss_and_model_untouched(kind, chunk):
    m = _tiny_classifier()
    m[0].requires_grad_(False)  # frozen params are not perturbed by default
    before = {n: p.clone() for n, p in m.state_dict().items()}
    x = torch.randn(2, 8, 4, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([[0, 1, 2, 0, 1, 2, 0, 1]] * 2)
    batches = [(x[0], y[0]), (x[1][:5], y[1][:5])]
    theta = L.trainable_params(m)
    assert set(theta) == {"1.weight", "1.bias", "4.weight", "4.bias"}
    d1, d2 = L.random_directions(theta, kind, seed=3)
    g = torch.linspace(-1, 1, 3)
    m.train()
    land = L.evaluate_grid(m, F.cross_entropy, batches, d1, d2, g, g, chunk=chunk, progress=False)
    assert m.training  # mode restored
    m.eval()
    with torch.no_grad():
        expect = sum(F.cross_entropy(m(xb), yb, reduction="sum") for xb, yb in batches) / 13
    assert float(land.loss[1, 1]) == pytest.approx(float(expect), rel=1e-5)
    for n, p in m.state_dict().items():
        assert torch.equal(p, before[n]), n
    assert float(land.loss.max()) > float(land.loss.min())


def test_filter_normalisation_matches_row_norms():
    theta = {"w": torch.tensor([[3.0, 4.0], [0.0, 1.0]]), "b": torch.tensor([0.0, 2.0])}
    d1, _ = L.random_directions(theta, "filter", seed=0)
    torch.testing.assert_close(d1["w"].norm(dim=1), torch.tensor([5.0, 1.0]))
    assert float(d1["b"].norm()) == pytest.approx(2.0)


def test_training_direction_reaches_init():
    m = _tiny_classifier()
    theta_T = L.trainable_params(m)
    theta_0 = {n: t + 0.1 * torch.randn_like(t) for n, t in theta_T.items()}
    d1, d2 = L.training_directions(theta_0, theta_T, seed=0)
    for n in theta_T:  # a = -1 is the initial weights
        torch.testing.assert_close(theta_T[n] - d1[n], theta_0[n])
    assert float(L.dot(d1, d2)) == pytest.approx(0.0, abs=1e-5)
    assert float(L.global_norm(d2)) == pytest.approx(float(L.global_norm(d1)), rel=1e-5)
    with pytest.raises(Lm2vError):
        L.training_directions(theta_T, theta_T)


def test_plot_landscape(tmp_path):
    g = torch.linspace(-1, 1, 5)
    A, B = torch.meshgrid(g, g, indexing="ij")
    land = L.Landscape(g, g, (A**2 + B**2).double(), "random")
    L.plot_landscape(land, tmp_path / "c.png", tmp_path / "s.png")
    assert (tmp_path / "c.png").stat().st_size > 1000 and (tmp_path / "s.png").stat().st_size > 1000
