"""Feature geometry: t-SNE / PCA pictures of pooled features (``lm2vision.train.loop.extract_features``)
coloured by class, and the numbers that back them (silhouette, cross-validated kNN accuracy, linear
separability)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..errors import Lm2vError


def _check(features: np.ndarray, labels: np.ndarray, folds: int) -> None:
    if features.ndim != 2 or len(features) != len(labels):
        raise Lm2vError(f"features {features.shape} and labels {labels.shape} do not match")
    counts = np.bincount(labels)
    counts = counts[counts > 0]
    if len(counts) < 2:
        raise Lm2vError("cluster metrics need at least two classes in the sample")
    if counts.min() < folds:
        raise Lm2vError(f"every class needs >= {folds} samples for {folds}-fold CV (smallest has {counts.min()})")


def cluster_metrics(features, labels, k: int = 10, folds: int = 5, seed: int = 0) -> dict:
    """Silhouette and kNN CV accuracy (euclidean on the raw features), logistic-regression CV accuracy
    (on standardised features, for conditioning), and the majority-class chance level."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import silhouette_score
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    _check(X, y, folds)
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    knn = KNeighborsClassifier(n_neighbors=min(k, len(y) - len(y) // folds - 1))
    lin = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    return {
        "n": int(len(y)),
        "silhouette": float(silhouette_score(X, y)),
        "knn_acc": float(cross_val_score(knn, X, y, cv=cv).mean()),
        "linear_acc": float(cross_val_score(lin, X, y, cv=cv).mean()),
        "chance_acc": float(np.bincount(y).max() / len(y)),
    }


def embed_pca(features, dim: int = 2) -> np.ndarray:
    """PCA projection (N, dim)."""
    from sklearn.decomposition import PCA

    return PCA(n_components=dim, random_state=0).fit_transform(np.asarray(features, dtype=np.float64))


def embed_tsne(features, seed: int = 42, perplexity: float = 30.0, pca_dim: int = 50) -> np.ndarray:
    """t-SNE (sklearn, ``random_state=seed``) after a PCA to ``pca_dim`` dims for speed: (N, 2)."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    X = np.asarray(features, dtype=np.float64)
    if X.shape[1] > pca_dim and X.shape[0] > pca_dim:
        X = PCA(n_components=pca_dim, random_state=0).fit_transform(X)
    perplexity = min(perplexity, (len(X) - 1) / 3)
    return TSNE(n_components=2, random_state=seed, perplexity=perplexity, init="pca").fit_transform(X)


def plot_embedding(xy: np.ndarray, labels, classes: Sequence[str], title: str, path: str | Path) -> None:
    """Scatter of a 2-D embedding coloured by true class."""
    from .plotting import new_figure, save_figure

    y = np.asarray(labels)
    fig, ax = new_figure(width=6.0, height=5.0)
    cmap = "tab10" if len(classes) <= 10 else "tab20"
    sc = ax.scatter(xy[:, 0], xy[:, 1], c=y, cmap=cmap, s=6, vmin=0, vmax=max(len(classes) - 1, 1))
    if len(classes) <= 20:
        handles = [ax.scatter([], [], color=sc.cmap(sc.norm(i)), s=12, label=c) for i, c in enumerate(classes)]
        ax.legend(handles=handles, fontsize=7, loc="best", markerscale=1.5)
    ax.set(title=title, xticks=[], yticks=[])
    save_figure(fig, path)


def feature_geometry(
    features: torch.Tensor, labels: torch.Tensor, classes: Sequence[str], out_dir: str | Path,
    seed: int = 42, threads: int | None = 1,
) -> dict:
    """Write ``tsne.png`` and ``pca.png`` into ``out_dir``; return the cluster metrics.

    ``threads`` caps the BLAS/OpenMP threads of scikit-learn (None: no cap). On a shared CPU,
    OpenMP spin-waiting made t-SNE of 1,000 points 3-6x slower with 2 threads than with 1.
    """
    from threadpoolctl import threadpool_limits

    out_dir = Path(out_dir)
    X, y = features.numpy(), labels.numpy()
    with threadpool_limits(limits=threads):
        metrics = cluster_metrics(X, y)
        xy = embed_tsne(X, seed=seed)
    plot_embedding(xy, y, classes, "t-SNE of pooled features", out_dir / "tsne.png")
    plot_embedding(embed_pca(X), y, classes, "PCA of pooled features", out_dir / "pca.png")
    return metrics
