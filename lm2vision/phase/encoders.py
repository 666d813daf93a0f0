"""The two sides of a pair as embedding networks: batch -> (B, O), ready for the NTK and AGOP
(loading and tokenising the sides: :mod:`.sides`).

Model output for the NTK (a documented choice): the pooled embedding, mapped by a fixed random
projection P (C, O) with entries N(0, 1/C) when ``out_dim`` is set (keeps the kernel cheap; the
projection is a buffer, never a parameter). ``embed`` returns the unprojected (B, C) embedding
used by the alignment score.

- vision: ``backbone.pool(backbone.forward_features(images))`` (the backbone's own pooling), for a
  :class:`~lm2vision.models.VisionBackbone` and an :class:`~lm2vision.models.ImageBackbone` alike.
- language: the mean of the last hidden states over the caption's real tokens, for every family
  (decoders too: with right padding a caption's last real token sits at a different place in each
  row). Masks are passed as one additive 4D mask (B, 1, T, T) (padding, plus causality for
  decoders), which keeps every sample independent under ``vmap``; a family that takes only a
  (B, T) padding mask (XLNet, ``ArchSpec.mask_4d``) gets that, and its own bidirectional attention.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..models import ImageBackbone, VisionBackbone
from ..models.arch import ARCH, ArchSpec


def _projection(width: int, out_dim: int | None, seed: int) -> torch.Tensor | None:
    if out_dim is None:
        return None
    g = torch.Generator().manual_seed(seed)
    return torch.randn(width, out_dim, generator=g) / width**0.5  # (C, O)


class VisionEmbedder(nn.Module):
    """Normalised images (B, 3, S, S) -> pooled embedding (B, O) of a vision backbone."""

    def __init__(self, backbone: VisionBackbone | ImageBackbone, out_dim: int | None = None, seed: int = 0):
        super().__init__()
        self.backbone = backbone
        self.out_width = out_dim or backbone.width  # O
        self.register_buffer("proj", _projection(backbone.width, out_dim, seed), persistent=False)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.pool(self.backbone.forward_features(x))  # (B, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.embed(x)
        return z if self.proj is None else z @ self.proj  # (B, O)

    def ntk_names(self) -> list[str]:
        """Parameters of the kernel: everything that shapes the embedding (head and fixed tables excluded)."""
        fixed = {f"backbone.{n}" for n in self.backbone.fixed_params}
        return [n for n, _ in self.named_parameters() if n not in fixed and not n.startswith("backbone.head.")]

    def agop_layers(self) -> dict[str, nn.Module]:
        """The backbone's blocks (the stages of hierarchical image models)."""
        return {f"block.{i}": b for i, b in enumerate(self.backbone.blocks)}


def _spec(model: nn.Module) -> ArchSpec | None:
    return ARCH.get(getattr(model.config, "model_type", ""))


def _is_causal(model: nn.Module) -> bool:
    spec = _spec(model)
    if spec is not None:
        return spec.causal
    return any(getattr(m, "is_causal", False) is True for m in model.modules())


class TextEmbedder(nn.Module):
    """Token ids (B, T) and mask (B, T) -> mean-pooled last hidden state (B, O) of a text model."""

    def __init__(self, model: nn.Module, out_dim: int | None = None, seed: int = 0, token_embeddings: bool = False):
        super().__init__()
        self.model = model
        self.token_embeddings = token_embeddings
        self.causal = _is_causal(model)
        spec = _spec(model)
        if spec is not None:
            spec.check_config(model.config)
        self.mask_4d = spec is None or spec.mask_4d
        self.out_width = out_dim or model.config.hidden_size  # O
        self.register_buffer("proj", _projection(model.config.hidden_size, out_dim, seed), persistent=False)

    def attention_mask(self, mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """(B, T) 0/1 -> additive (B, 1, T, T): padded keys (and future keys for decoders) blocked."""
        T = mask.shape[1]
        allowed = mask[:, None, None, :].bool().expand(-1, 1, T, T)
        if self.causal:
            allowed = allowed & torch.ones(T, T, dtype=torch.bool, device=mask.device).tril()
        return torch.zeros(allowed.shape, dtype=dtype, device=mask.device).masked_fill(~allowed, torch.finfo(dtype).min)

    def model_mask(self, mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The ``attention_mask`` the model takes: the additive (B, 1, T, T) of :meth:`attention_mask`,
        or the (B, T) padding mask itself for a family without 4D masks (``ArchSpec.mask_4d``)."""
        return self.attention_mask(mask, dtype) if self.mask_4d else mask.to(dtype)

    def embed_tokens(self, embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Input embeddings (B, T, C) -> mean-pooled (B, C) (the route AGOP differentiates)."""
        h = self.model(inputs_embeds=embeds, attention_mask=self.model_mask(mask, embeds.dtype)).last_hidden_state
        w = mask[:, :, None].to(h.dtype)  # (B, T, 1)
        return (h * w).sum(1) / w.sum(1)  # (B, C)

    def embed(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.embed_tokens(self.model.get_input_embeddings()(ids), mask)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        z = self.embed(ids, mask)
        return z if self.proj is None else z @ self.proj  # (B, O)

    def agop_layers(self) -> dict[str, nn.Module]:
        """The transformer blocks (from the architecture table; empty for families not in it)."""
        spec = _spec(self.model)
        if spec is None:
            return {}
        return {f"block.{i}": b for i, b in enumerate(self.model.get_submodule(spec.blocks))}

    def project(self, z: torch.Tensor) -> torch.Tensor:
        return z if self.proj is None else z @ self.proj

    def ntk_names(self) -> list[str]:
        """Parameters of the kernel: the trainable ones, without a pooler the mean pooling never uses
        and, unless ``token_embeddings``, without the token table (its Jacobian is sparse, one row per
        caption token, yet dense in memory: half of MiniLM's parameters)."""
        table = {id(p) for p in self.model.get_input_embeddings().parameters()}
        return [n for n, p in self.named_parameters() if p.requires_grad and not n.startswith("model.pooler.")
                and (self.token_embeddings or id(p) not in table)]
