"""Feature geometry numbers separate well-separated classes and not random ones."""
import numpy as np
import pytest
import torch
from torch import nn

from lm2vision.analysis import features as Fe
from lm2vision.errors import Lm2vError
from lm2vision.train.loop import extract_features


def _two_gaussians(sep, n=100, d=8, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(2 * n, d))
    X[n:, 0] += sep
    y = np.repeat([0, 1], n)
    return X, y


def test_well_separated_classes_score_high():
    from threadpoolctl import threadpool_limits

    X, y = _two_gaussians(sep=20.0)
    m = Fe.cluster_metrics(X, y)
    assert m["knn_acc"] == pytest.approx(1.0) and m["linear_acc"] == pytest.approx(1.0)
    assert m["silhouette"] > 0.4
    assert m["chance_acc"] == pytest.approx(0.5)
    with threadpool_limits(limits=1):  # busy shared CPU: OpenMP spin-waits otherwise
        xy = Fe.embed_tsne(X)
    centroid_gap = np.linalg.norm(xy[y == 0].mean(0) - xy[y == 1].mean(0))
    spread = max(xy[y == 0].std(0).max(), xy[y == 1].std(0).max())
    assert centroid_gap > 3 * spread  # t-SNE keeps the two clusters apart


def test_identical_classes_score_chance():
    X, y = _two_gaussians(sep=0.0)
    m = Fe.cluster_metrics(X, y)
    assert 0.3 < m["knn_acc"] < 0.7 and 0.3 < m["linear_acc"] < 0.7
    assert abs(m["silhouette"]) < 0.05


def test_pca_first_axis_is_the_separation():
    X, y = _two_gaussians(sep=20.0)
    xy = Fe.embed_pca(X)
    assert xy.shape == (200, 2)
    assert abs(np.corrcoef(xy[:, 0], X[:, 0])[0, 1]) > 0.99


class _Pooler(nn.Module):
    def forward_features(self, x):
        return x.flatten(2).transpose(1, 2)  # (B, T, C=3)

    def pool(self, tokens):
        return tokens[:, -1]  # last token


def test_extract_features_and_geometry_files(tmp_path):
    imgs = torch.arange(4 * 3 * 2 * 2, dtype=torch.float32).reshape(4, 3, 2, 2)
    f = extract_features(_Pooler(), imgs, batch_size=3, progress=False)
    torch.testing.assert_close(f, imgs[:, :, 1, 1])
    X, y = _two_gaussians(sep=20.0, n=30)
    m = Fe.feature_geometry(torch.tensor(X), torch.tensor(y), ["a", "b"], tmp_path)
    assert m["knn_acc"] == pytest.approx(1.0)
    assert (tmp_path / "tsne.png").exists() and (tmp_path / "pca.png").exists()


def test_too_few_per_class_is_an_error():
    with pytest.raises(Lm2vError):
        Fe.cluster_metrics(np.zeros((6, 2)), np.array([0, 0, 0, 0, 0, 1]))
