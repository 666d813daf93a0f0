"""Dense heads on a generic token grid: patch tokens (B, T, C) with T = h * w.

- :class:`DetrHead`: learned object queries, a small transformer decoder over the (projected) tokens
  plus a fixed 2-D sine position code, class head (K + 1, last = no object) and a 3-layer box MLP
  (sigmoid, normalised cxcywh). Every decoder layer's output is also returned (auxiliary losses).
- :class:`MaskTransformer`: Segmenter's decoder (Strudel et al. 2021): K class embeddings appended as
  extra tokens, a few transformer blocks, masks = <normalised patch tokens, normalised class
  embeddings>, then LayerNorm over classes. Its blocks can be deep copies of the language model's
  first blocks (the paper initialises the decoder from GPT-2's first 2 blocks).
- :class:`LinearDecoder`: one linear layer per patch, the simple baseline.
Segmentation heads return low-resolution logits (B, K, h, w); callers upsample.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import Lm2vError


def sine_positions_2d(h: int, w: int, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """(h * w, dim) fixed sine/cosine code of the (y, x) grid positions (DETR's, normalised to [0, 2pi])."""
    if dim % 4:
        raise ValueError(f"dim must be divisible by 4, got {dim}")
    y, x = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    y, x = (y + 0.5) / h * 2 * math.pi, (x + 0.5) / w * 2 * math.pi
    freq = temperature ** (torch.arange(dim // 4, dtype=torch.float32) / (dim // 4))
    parts = [f(c.reshape(-1, 1) / freq) for c in (y, x) for f in (torch.sin, torch.cos)]
    return torch.cat(parts, dim=1)  # (h*w, dim)


class MLP(nn.Module):
    """``n`` linear layers with ReLU between them."""

    def __init__(self, d_in: int, d_hidden: int, d_out: int, n: int):
        super().__init__()
        dims = [d_in] + [d_hidden] * (n - 1) + [d_out]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == len(self.layers) - 1 else F.relu(layer(x))
        return x


@dataclass
class DetrHeadConfig:
    """DETR head size."""

    num_queries: int = 20
    d_model: int = 128
    num_layers: int = 3
    num_heads: int = 4
    ffn_dim: int = 512
    dropout: float = 0.0
    aux_loss: bool = True


class DetrHead(nn.Module):
    """Object queries decoded against patch tokens; see the module docstring."""

    def __init__(self, in_dim: int, grid_size: int, num_classes: int, cfg: DetrHeadConfig):
        super().__init__()
        d = cfg.d_model
        self.num_classes, self.aux_loss = num_classes, cfg.aux_loss
        self.input_proj = nn.Linear(in_dim, d)
        self.register_buffer("pos", sine_positions_2d(grid_size, grid_size, d)[None], persistent=False)
        self.query_embed = nn.Embedding(cfg.num_queries, d)
        self.layers = nn.ModuleList(
            nn.TransformerDecoderLayer(d, cfg.num_heads, cfg.ffn_dim, cfg.dropout, activation="relu",
                                       batch_first=True, norm_first=True)
            for _ in range(cfg.num_layers))
        self.norm = nn.LayerNorm(d)
        self.class_embed = nn.Linear(d, num_classes + 1)
        self.bbox_embed = MLP(d, d, 4, 3)

    def _predict(self, h: torch.Tensor) -> dict:
        h = self.norm(h)
        return {"logits": self.class_embed(h), "boxes": self.bbox_embed(h).sigmoid()}

    def forward(self, tokens: torch.Tensor) -> dict:
        """tokens (B, T, C) -> ``logits`` (B, Q, K+1), ``boxes`` (B, Q, 4) and ``aux`` (earlier layers)."""
        memory = self.input_proj(tokens) + self.pos  # (B, T, d)
        tgt = self.query_embed.weight[None].expand(tokens.shape[0], -1, -1)  # (B, Q, d)
        hs = []
        for layer in self.layers:
            tgt = layer(tgt, memory)
            hs.append(tgt)
        out = self._predict(hs[-1])
        out["aux"] = [self._predict(h) for h in hs[:-1]] if self.aux_loss and self.training else []
        return out


@dataclass
class SegHeadConfig:
    """Segmentation decoder: ``mask`` (Segmenter) or ``linear``.

    init_from_lm_blocks: k > 0 builds the mask decoder's blocks as deep copies of the backbone's
    first k blocks (width = backbone width; d_model, num_layers, num_heads and ffn_ratio are then
    taken from those blocks and ignored here).
    """

    decoder: str = "mask"
    d_model: int = 128
    num_layers: int = 2
    num_heads: int = 4
    ffn_ratio: int = 4
    dropout: float = 0.0
    init_from_lm_blocks: int = 0


def _default_block_fn(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return block(x)


class MaskTransformer(nn.Module):
    """Segmenter's mask transformer: patch tokens (B, T, C) -> class masks (B, K, h, w).

    blocks: optional ready-made blocks (e.g. deep copies of the language model's first blocks) run as
    ``block_fn(block, x)``; their width must equal ``d_model``.
    """

    def __init__(self, in_dim: int, grid_size: int, num_classes: int, d_model: int, num_layers: int = 2,
                 num_heads: int = 4, ffn_ratio: int = 4, dropout: float = 0.0,
                 blocks: nn.ModuleList | None = None, block_fn: Callable | None = None):
        super().__init__()
        self.grid_size, self.num_classes = grid_size, num_classes
        self.proj_dec = nn.Linear(in_dim, d_model)
        if blocks is None:
            blocks = nn.ModuleList(
                nn.TransformerEncoderLayer(d_model, num_heads, ffn_ratio * d_model, dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
                for _ in range(num_layers))
        self.blocks, self.block_fn = blocks, block_fn or _default_block_fn
        self.cls_emb = nn.Parameter(torch.randn(1, num_classes, d_model) * 0.02)
        self.decoder_norm = nn.LayerNorm(d_model)
        self.proj_patch = nn.Parameter(torch.randn(d_model, d_model) * d_model ** -0.5)
        self.proj_classes = nn.Parameter(torch.randn(d_model, d_model) * d_model ** -0.5)
        self.mask_norm = nn.LayerNorm(num_classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        B, T, _ = tokens.shape
        K, g = self.num_classes, self.grid_size
        x = torch.cat([self.proj_dec(tokens), self.cls_emb.expand(B, -1, -1)], dim=1)  # (B, T+K, d)
        for blk in self.blocks:
            x = self.block_fn(blk, x)
        x = self.decoder_norm(x)
        patches = F.normalize(x[:, :T] @ self.proj_patch, dim=-1)  # (B, T, d)
        cls_seg = F.normalize(x[:, T:] @ self.proj_classes, dim=-1)  # (B, K, d)
        masks = self.mask_norm(patches @ cls_seg.transpose(1, 2))  # (B, T, K)
        return masks.transpose(1, 2).reshape(B, K, g, g)


class LinearDecoder(nn.Module):
    """One linear layer per patch token: (B, T, C) -> (B, K, h, w)."""

    def __init__(self, in_dim: int, grid_size: int, num_classes: int):
        super().__init__()
        self.grid_size = grid_size
        self.head = nn.Linear(in_dim, num_classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        B, T, _ = tokens.shape
        return self.head(tokens).transpose(1, 2).reshape(B, -1, self.grid_size, self.grid_size)


def copy_blocks(blocks: nn.ModuleList, k: int) -> nn.ModuleList:
    """Deep copies of the first ``k`` of ``blocks`` (the language model's), for the decoder."""
    if not 0 < k <= len(blocks):
        raise Lm2vError(f"init_from_lm_blocks={k} must be in [1, {len(blocks)}] (the backbone's blocks)")
    return nn.ModuleList(copy.deepcopy(blocks[i]) for i in range(k))
