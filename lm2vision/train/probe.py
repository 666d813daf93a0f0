"""Linear probe: a grid of linear heads, one per learning rate, trained together on features from
one frozen forward pass; the validation split picks the learning rate, the test split is read once."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .config import ProbeConfig


@dataclass
class ProbeResult:
    """Per-lr validation accuracies, the chosen lr and its head (acting on raw features)."""

    val_acc: dict[float, float]
    best_lr: float
    weight: torch.Tensor  # (K, C)
    bias: torch.Tensor  # (K,)
    history: list[dict]

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Class indices (N,) for raw features x (N, C)."""
        return (x @ self.weight.T + self.bias).argmax(-1)


def train_linear_grid(train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor, val_y: torch.Tensor,
                      num_classes: int, cfg: ProbeConfig, seed: int = 0, batch_size: int = 256) -> ProbeResult:
    """Train one linear head per lr in ``cfg.linear_lrs`` (AdamW) on standardised features.

    All heads see the same batches in the same order; the head with the best validation accuracy
    is returned, folded back to act on unstandardised features.
    """
    mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-6)
    tx, vx = (train_x - mean) / std, (val_x - mean) / std  # (N, C)
    g = torch.Generator().manual_seed(seed)
    heads = [torch.nn.Linear(tx.shape[1], num_classes).to(tx.device) for _ in cfg.linear_lrs]
    for h in heads:
        with torch.no_grad():
            h.weight.copy_(torch.randn(h.weight.shape, generator=g) * 0.01)
            h.bias.zero_()
    opt = torch.optim.AdamW([{"params": h.parameters(), "lr": lr} for h, lr in zip(heads, cfg.linear_lrs)],
                            weight_decay=cfg.linear_weight_decay)
    history = []
    for epoch in range(cfg.linear_epochs):
        order = torch.randperm(len(tx), generator=g).to(tx.device)
        for start in range(0, len(tx), batch_size):
            idx = order[start:start + batch_size]
            loss = sum(F.cross_entropy(h(tx[idx]), train_y[idx]) for h in heads)  # heads are independent
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if epoch == cfg.linear_epochs - 1 or epoch % 10 == 0:
            history.append({"epoch": epoch, "val_acc": _accs(heads, vx, val_y)})
    val = _accs(heads, vx, val_y)
    best = max(range(len(heads)), key=lambda i: val[i])
    h = heads[best]
    weight = (h.weight / std).detach()  # (K, C): W (x - m) / s = (W / s) x - (W / s) m
    bias = (h.bias - weight @ mean).detach()
    return ProbeResult(dict(zip(cfg.linear_lrs, val)), cfg.linear_lrs[best], weight, bias, history)


@torch.no_grad()
def _accs(heads: list[torch.nn.Linear], x: torch.Tensor, y: torch.Tensor) -> list[float]:
    return [float((h(x).argmax(-1) == y).float().mean()) for h in heads]
