"""Covariance alignment: known answers for identical and rotated-apart bases."""
import pytest
import torch

from lm2vision.analysis import alignment as A
from lm2vision.errors import Lm2vError


def _orthogonal(D, seed):
    q, _ = torch.linalg.qr(torch.randn(D, D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q


def test_identical_covariances_score_one():
    D, k = 12, 4
    Q = _orthogonal(D, 0)
    S = Q @ torch.diag(torch.linspace(10, 1, D, dtype=torch.float64)) @ Q.T
    a = A.covariance_alignment(S, S, k=k)
    assert a.energy == pytest.approx(1.0, abs=1e-9)
    assert a.max_cosine == pytest.approx(1.0, abs=1e-9)
    assert a.spearman == pytest.approx(1.0)
    assert a.tau == pytest.approx(a.sigma)
    assert a.chance_energy == pytest.approx(k / D)


def test_bases_rotated_apart_score_zero():
    D, k = 12, 4
    Q = _orthogonal(D, 1)
    lam = torch.linspace(10, 1, D, dtype=torch.float64)
    S_x = Q @ torch.diag(lam) @ Q.T
    S_w = Q @ torch.diag(lam.roll(k)) @ Q.T  # top-k of W = eigenvectors k..2k-1 of X
    a = A.covariance_alignment(S_w, S_x, k=k)
    assert a.energy == pytest.approx(0.0, abs=1e-9)
    assert a.max_cosine == pytest.approx(0.0, abs=1e-6)


def test_monotone_eigenvalue_mapping_keeps_basis():
    D = 10
    Q = _orthogonal(D, 2)
    lam = torch.linspace(5, 0.5, D, dtype=torch.float64)
    S_x = Q @ torch.diag(lam) @ Q.T
    S_w = Q @ torch.diag(lam.sqrt()) @ Q.T  # smooth monotone map sigma -> sqrt(sigma)
    a = A.covariance_alignment(S_w, S_x, k=3)
    assert a.energy == pytest.approx(1.0, abs=1e-9)
    assert a.spearman == pytest.approx(1.0)
    assert a.tau == pytest.approx(lam.sqrt().tolist())


def test_patch_extraction_matches_conv_weight_layout():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8)
    conv = torch.nn.Conv2d(3, 5, kernel_size=4, stride=4, bias=False)
    P = A.extract_patches(x, 4)  # (2*4, 48)
    W = A.weight_matrix(conv.weight)  # (5, 48)
    y = conv(x).flatten(2).transpose(1, 2).reshape(-1, 5).double()  # (N*T, C)
    assert P.shape == (8, 48) and W.shape == (5, 48)
    torch.testing.assert_close(P @ W.T, y, atol=1e-5, rtol=1e-5)


def test_patch_covariance_and_weight_covariance():
    X = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 2.0], [0.0, -2.0]])
    assert A.patch_covariance(X).flatten().tolist() == pytest.approx([2 / 3, 0, 0, 8 / 3])
    W = torch.tensor([[1.0, 1.0], [1.0, -1.0]])
    assert A.weight_covariance(W).flatten().tolist() == pytest.approx([1, 0, 0, 1])


def test_patch_embed_alignment_end_to_end_and_errors(tmp_path):
    torch.manual_seed(0)
    imgs = torch.randn(4, 3, 8, 8)
    a = A.patch_embed_alignment(torch.randn(16, 3, 4, 4), imgs, k=5)
    assert a.dim == 48 and 0 <= a.energy <= 1 and 0 <= a.max_cosine <= 1
    A.plot_eigen_mapping({"init": a}, tmp_path / "e.png")
    assert (tmp_path / "e.png").exists()
    with pytest.raises(Lm2vError):
        A.extract_patches(torch.randn(1, 3, 7, 7), 4)
    with pytest.raises(Lm2vError):
        A.covariance_alignment(torch.eye(3), torch.eye(3), k=4)
