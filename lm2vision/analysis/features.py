"""Feature geometry: t-SNE / PCA pictures of pooled features (``lm2vision.train.loop.extract_features``)
coloured by class, and the numbers that back them (silhouette, cross-validated kNN accuracy, linear
separability); per-layer pooled features (:func:`layer_features`) for layer-wise comparisons (CKA)."""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

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


# -- per-layer features ---------------------------------------------------------------------------

LAYER_POOLING = ("mean", "model")


def layer_names(num_layers: int) -> list[str]:
    """Names of :func:`layer_features`' entries: ``embed``, then ``block.0`` ... ``block.{L-1}``."""
    return ["embed"] + [f"block.{i}" for i in range(num_layers - 1)]


def _pool_tokens(h: torch.Tensor, model, pooling: str) -> torch.Tensor:
    if pooling == "model" and hasattr(model, "pool"):
        return model.pool(h).float()  # (B, C)
    return (h.mean(dim=1) if h.ndim == 3 else h.flatten(2).mean(dim=2)).float()  # (B, T, C) or (B, C, H, W)


@contextmanager
def _block_taps(model) -> Iterator[list[torch.Tensor]]:
    """Hooks that record the input of the first block (the family's own embedding: norm, positions)
    and the output of every block but the last, whose output the final norm turns into
    ``forward_features`` (the Hugging Face ``hidden_states`` convention)."""
    seen: list[torch.Tensor] = []

    def embed(module, args, kwargs):
        seen.append(args[0] if args else kwargs["hidden_states"])

    def block(module, args, out):
        seen.append(out[0] if isinstance(out, (tuple, list)) else out)

    blocks = model.blocks
    handles = [blocks[0].register_forward_pre_hook(embed, with_kwargs=True)]
    handles += [b.register_forward_hook(block) for b in list(blocks)[:-1]]
    try:
        yield seen
    finally:
        for h in handles:
            h.remove()


def _backbone_layers(model, x: torch.Tensor, pooling: str) -> list[torch.Tensor]:
    with _block_taps(model) as seen:
        final = model.forward_features(x)  # (B, T, C)
    if len(seen) != model.num_blocks:
        raise Lm2vError(f"expected {model.num_blocks} hooked activations, got {len(seen)} (blocks ran twice?)")
    return [_pool_tokens(h, model, pooling) for h in (*seen, final)]


def _pixel_model_layers(model, x: torch.Tensor) -> list[torch.Tensor]:
    out = model(pixel_values=x, output_hidden_states=True)
    if getattr(out, "hidden_states", None) is None:
        raise Lm2vError(f"{type(model).__name__} returns no hidden_states")
    return [_pool_tokens(h, model, "mean") for h in out.hidden_states]


def iter_layer_features(model, images: torch.Tensor, batch_size: int = 128,
                        pooling: str = "model") -> Iterator[list[torch.Tensor]]:
    """Per batch of ``images``: the pooled features of every layer, a list of (b, C) float32 on the CPU.

    ``model``: an lm2vision backbone (``blocks``, ``forward_features``, ``pool``; hooks on its blocks)
    or a Hugging Face pixel model (``pixel_values``, its ``hidden_states``). Eval mode (restored
    afterwards), no grad; each batch is moved to the model's device. ``pooling``: ``model`` (the
    backbone's own ``pool``; mean for Hugging Face models) or ``mean`` over tokens.
    """
    if pooling not in LAYER_POOLING:
        raise Lm2vError(f"pooling must be one of {', '.join(LAYER_POOLING)}, got {pooling!r}")
    backbone = all(hasattr(model, a) for a in ("blocks", "forward_features", "pool"))
    if not backbone and getattr(model, "main_input_name", None) != "pixel_values":
        raise Lm2vError(f"{type(model).__name__} takes no images (neither an lm2vision backbone nor a pixel model)")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        for x in images.split(batch_size):
            with torch.no_grad():
                x = x.to(device)
                feats = _backbone_layers(model, x, pooling) if backbone else _pixel_model_layers(model, x)
            yield [f.cpu() for f in feats]
    finally:
        model.train(was_training)


def layer_features(model, images: torch.Tensor, batch_size: int = 128, pooling: str = "model") -> list[torch.Tensor]:
    """Pooled features of the embedding and of every block: L + 1 tensors (N, C) for L blocks.

    Entry 0 is the input of the first block, entry i the output of block i - 1, and the last entry is
    ``model.pool(model.forward_features(images))`` (after the final norm) with ``pooling="model"``.
    See :func:`iter_layer_features` for the models it takes; names: :func:`layer_names`.
    """
    batches = list(iter_layer_features(model, images, batch_size, pooling))
    if not batches:
        raise Lm2vError("layer_features needs at least one image")
    return [torch.cat(layer) for layer in zip(*batches)]
