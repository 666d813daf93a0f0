"""Independent recomputations the tests compare the library against.

Each helper is written from the definition with plain torch (autograd loops, einsum, hand-made
preprocessing), so an expected value never comes from the function under test.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import torch


def per_sample_ntk(fn: Callable[..., torch.Tensor], inputs: Sequence[tuple], params: Sequence[torch.Tensor]
                   ) -> torch.Tensor:
    """Theta_ij = sum_o <d f_o(x_i) / d theta, d f_o(x_j) / d theta> (the trace-contracted empirical NTK).

    One backward pass per sample and output: ``fn(*inputs[i])`` is a batch of one, (1, O).
    Parameters the output does not depend on count as zero gradients. Returns (n, n) float64.
    """
    rows = []
    for args in inputs:
        out = fn(*args)[0]  # (O,)
        per_output = []
        for o in range(out.shape[0]):
            grads = torch.autograd.grad(out[o], list(params), retain_graph=True, allow_unused=True)
            flat = [(torch.zeros_like(p) if g is None else g).reshape(-1) for g, p in zip(grads, params)]
            per_output.append(torch.cat(flat).double())
        rows.append(torch.stack(per_output))  # (O, P)
    jac = torch.stack(rows)  # (n, O, P)
    return torch.einsum("iop,jop->ij", jac, jac)


def kernel_alignment(a: torch.Tensor, b: torch.Tensor, centred: bool = False) -> float:
    """S = tr(A^T B) / (||A||_F ||B||_F) (shared/PROTOCOL.md); ``centred``: the same on H A H, H B H."""
    a, b = a.double(), b.double()
    if centred:
        n = a.shape[0]
        h = torch.eye(n, dtype=torch.float64) - torch.full((n, n), 1.0 / n, dtype=torch.float64)
        a, b = h @ a @ h, h @ b @ h
    inner = torch.einsum("ij,ij->", a, b)  # tr(A^T B)
    return float(inner / (torch.einsum("ij,ij->", a, a).sqrt() * torch.einsum("ij,ij->", b, b).sqrt()))


def ridge_retrieval_top1(z_query: torch.Tensor, z_key: torch.Tensor, groups: torch.Tensor, fit: Sequence[int],
                         test: Sequence[int], alpha: float) -> float:
    """Held-out top-1 of query -> key retrieval after a ridge map fitted on the ``fit`` rows.

    Both sides centred by their fit-row means; W = (X^T X + alpha I)^-1 X^T Y on the fit rows (closed
    form); each held-out query X_i W retrieves the held-out key of largest cosine, a hit when that
    key's group equals the query's. Returns hits / len(test).
    """
    zq, zk = z_query.double(), z_key.double()
    fit, test = torch.as_tensor(list(fit)), torch.as_tensor(list(test))
    mq, mk = zq[fit].mean(0), zk[fit].mean(0)
    x, y = zq[fit] - mq, zk[fit] - mk
    w = torch.linalg.solve(x.T @ x + alpha * torch.eye(x.shape[1], dtype=torch.float64), x.T @ y)  # (Dq, Dk)
    q, k = (zq[test] - mq) @ w, zk[test] - mk
    cos = torch.einsum("id,jd->ij", q, k) / (q.norm(dim=1)[:, None] * k.norm(dim=1)[None, :])
    g = groups[test]
    return float((g[cos.argmax(1)] == g).double().mean())


def normalised(images_u8: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 images (N, 3, H, W) -> (pixel / 255 - mean) / std, per channel (no resize)."""
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return (images_u8.float() / 255.0 - m) / s


def run_test_accuracy(run: str | Path) -> float:
    """Top-1 accuracy on the test split of a finished classification run, recomputed from its files:
    the model rebuilt from config.yaml + model.safetensors, the whole test split in one forward pass."""
    from lm2vision.data import load_imageset_splits
    from lm2vision.train import load_run_model

    model, cfg = load_run_model(run)
    test = load_imageset_splits(cfg.data).test
    assert test.images.shape[-1] == cfg.model.image_size, "stored size = model size: no resize needed"
    with torch.no_grad():
        pred = model.eval()(normalised(test.images, cfg.data.mean, cfg.data.std)).argmax(-1)
    return float((pred == test.labels).float().mean())


def miou_and_pixel_acc(preds: Sequence[torch.Tensor], targets: Sequence[torch.Tensor], num_classes: int,
                       ignore: int = 255) -> tuple[float, float]:
    """mIoU (classes with a non-empty union) and pixel accuracy, counted pixel by pixel per class."""
    inter = torch.zeros(num_classes, dtype=torch.float64)
    union = torch.zeros(num_classes, dtype=torch.float64)
    correct = total = 0
    for p, t in zip(preds, targets):
        keep = t != ignore
        p, t = p[keep], t[keep]
        correct += int((p == t).sum())
        total += t.numel()
        for k in range(num_classes):
            inter[k] += int(((p == k) & (t == k)).sum())
            union[k] += int(((p == k) | (t == k)).sum())
    present = union > 0
    return float((inter[present] / union[present]).mean()), correct / total
