"""Gradient checkpointing (ModelConfig.gradient_checkpointing): same gradients, fewer stored activations."""
from __future__ import annotations

import pytest
import torch

from lm2vision.models import ModelConfig, create_backbone

from conftest import FAMILIES


def _grads_and_saved_bytes(name: str, checkpointing: bool) -> tuple[dict[str, torch.Tensor], int]:
    model = create_backbone(ModelConfig(name=name, pretrained=False, dropout=0.0, gradient_checkpointing=checkpointing))
    model.patch_embed.requires_grad_(False)  # the blocks' input then needs no gradient (partial training)
    model.train()
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    saved = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(x).square().sum()
    loss.backward()
    return {n: p.grad for n, p in model.named_parameters() if p.requires_grad}, sum(saved)


@pytest.mark.parametrize("name", FAMILIES)
def test_checkpointing_same_gradients_less_memory(name):
    plain, plain_bytes = _grads_and_saved_bytes(name, False)
    ckpt, ckpt_bytes = _grads_and_saved_bytes(name, True)
    assert plain.keys() == ckpt.keys()
    for n in plain:
        assert ckpt[n] is not None, f"{n} got no gradient under checkpointing"
        torch.testing.assert_close(ckpt[n], plain[n], rtol=1e-5, atol=1e-6)
    assert ckpt_bytes < 0.5 * plain_bytes  # only block inputs are kept during the forward pass
