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


def _images_from_patches(patches, p):
    """Patch vectors (N*4, 3*p*p) in (c, kh, kw) order -> images (N, 3, 2p, 2p), 4 patches each, placed by
    hand (rows of the 2x2 grid in turn); the order of patches does not change their covariance."""
    imgs = torch.zeros(patches.shape[0] // 4, 3, 2 * p, 2 * p)
    for n, vec in enumerate(patches):
        r, c = divmod(n % 4, 2)
        imgs[n // 4, :, r * p:(r + 1) * p, c * p:(c + 1) * p] = vec.reshape(3, p, p)
    return imgs


def test_patch_embed_alignment_end_to_end_and_errors(tmp_path):
    # Patches +-s_i q_i for 8 orthonormal q_i (s = 8..1): mean 0, Sigma_X = sum_i 2 s_i^2 q_i q_i^T / 15
    # exactly, so its top-5 eigenvectors are q_1..q_5 and the other 40 eigenvalues are 0.
    p, D, k = 4, 48, 5
    Q = _orthogonal(D, 3).float()  # columns q_i
    s = torch.arange(8, 0, -1, dtype=torch.float32)
    patches = torch.cat([s[:, None] * Q[:, :8].T, -s[:, None] * Q[:, :8].T])  # (16, 48)
    imgs = _images_from_patches(patches, p)  # (4, 3, 8, 8)
    scales = torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0])  # distinct: Sigma_W's eigenvectors are the rows themselves
    aligned = (scales[:, None] * Q[:, :k].T).reshape(k, 3, p, p)  # rows q_1..q_5
    a = A.patch_embed_alignment(aligned, imgs, k=k)
    assert (a.dim, a.chance_energy) == (48, pytest.approx(5 / 48))
    assert a.energy == pytest.approx(1.0, abs=1e-6) and a.max_cosine == pytest.approx(1.0, abs=1e-6)
    sigma = (2 * s.double() ** 2 / 15).tolist() + [0.0] * 40
    assert a.sigma == pytest.approx(sigma, abs=1e-5)
    # tau_i = q_i^T (W^T W / C) q_i = scale_i^2 / 5 on the top 5, 0 where W has no component
    assert a.tau == pytest.approx((scales.double() ** 2 / 5).tolist() + [0.0] * 43, abs=1e-5)
    orthogonal = (scales[:, None] * Q[:, 8:8 + k].T).reshape(k, 3, p, p)  # rows q_9..q_13, outside the data
    b = A.patch_embed_alignment(orthogonal, imgs, k=k)
    assert b.energy == pytest.approx(0.0, abs=1e-6) and b.max_cosine == pytest.approx(0.0, abs=1e-6)
    assert b.tau[:8] == pytest.approx([0.0] * 8, abs=1e-5)  # W is blind to every direction the data uses
    A.plot_eigen_mapping({"aligned": a, "orthogonal": b}, tmp_path / "e.png")
    assert (tmp_path / "e.png").stat().st_size > 1000
    with pytest.raises(Lm2vError):
        A.extract_patches(torch.randn(1, 3, 7, 7), 4)
    with pytest.raises(Lm2vError):
        A.covariance_alignment(torch.eye(3), torch.eye(3), k=4)
