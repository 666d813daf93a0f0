"""A vision backbone with a dense head: ``Detector`` (DETR) and ``Segmenter``.

Both take normalised images (B, 3, S, S), run ``backbone.forward_features`` to get the patch
tokens (B, T, C) with T = grid_size ** 2, and hand them to their head.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import Lm2vError
from .heads import DetrHead, DetrHeadConfig, LinearDecoder, MaskTransformer, SegHeadConfig, copy_blocks


def patch_tokens(backbone: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Normalised images (B, 3, S, S) -> patch tokens (B, grid**2, C)."""
    tokens = backbone.forward_features(x)  # (B, T, C)
    if tokens.shape[1] != backbone.grid_size ** 2:
        raise Lm2vError(f"backbone returned {tokens.shape[1]} tokens, expected {backbone.grid_size ** 2} patch tokens")
    return tokens


class Detector(nn.Module):
    """Backbone + DETR head. ``forward(x)`` -> ``{"logits", "boxes", "aux"}``."""

    def __init__(self, backbone: nn.Module, num_classes: int, cfg: DetrHeadConfig):
        super().__init__()
        self.backbone = backbone
        self.head = DetrHead(backbone.width, backbone.grid_size, num_classes, cfg)

    def forward(self, x: torch.Tensor) -> dict:
        return self.head(patch_tokens(self.backbone, x))


class Segmenter(nn.Module):
    """Backbone + mask-transformer or linear decoder. ``forward(x)`` -> logits (B, K, S, S)."""

    def __init__(self, backbone: nn.Module, num_classes: int, cfg: SegHeadConfig):
        super().__init__()
        self.backbone = backbone
        C, g = backbone.width, backbone.grid_size
        if cfg.decoder == "linear":
            self.head: nn.Module = LinearDecoder(C, g, num_classes)
        elif cfg.decoder == "mask" and cfg.init_from_lm_blocks > 0:
            blocks = copy_blocks(backbone.blocks, cfg.init_from_lm_blocks)
            self.head = MaskTransformer(C, g, num_classes, C, blocks=blocks, block_fn=backbone.block_fn())
            with torch.no_grad():  # start the input projection as identity: tokens enter the copied blocks as-is
                self.head.proj_dec.weight.copy_(torch.eye(C))
                self.head.proj_dec.bias.zero_()
        elif cfg.decoder == "mask":
            self.head = MaskTransformer(C, g, num_classes, cfg.d_model, cfg.num_layers, cfg.num_heads,
                                        cfg.ffn_ratio, cfg.dropout)
        else:
            raise Lm2vError(f"head.decoder must be mask or linear, got {cfg.decoder!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        masks = self.head(patch_tokens(self.backbone, x))  # (B, K, g, g)
        return F.interpolate(masks, size=x.shape[-2:], mode="bilinear", align_corners=False)
