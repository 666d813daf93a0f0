"""The two sides of a pair, loaded and fed: a vision backbone (by name or from an lm2vision run
directory) and a language model (hub id, local path, 'minilm' or a tiny alias) with its tokenizer,
each wrapped in its embedder (:mod:`.encoders`) now and at initialisation."""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn

from ..errors import Lm2vError
from ..models import ModelConfig, TINY_CONFIGS, create_backbone, embedded_minilm_path, load_lm_config, tiny_config
from ..train.rundir import is_run_dir, load_run_model
from .encoders import TextEmbedder, VisionEmbedder


# -- tokenisation --------------------------------------------------------------------------------
class ByteTokenizer:
    """A trivial tokenizer for in-memory test models: UTF-8 bytes folded into ``vocab_size - 1`` ids."""

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size

    def __call__(self, text: str) -> list[int]:
        return [1 + b % (self.vocab_size - 1) for b in text.encode()]


def tokenize(tokenizer, texts: Sequence[str], max_length: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Texts -> ids (N, T) and mask (N, T), right-padded with id 0 (masked out everywhere)."""
    rows = []
    for t in texts:
        ids = tokenizer(t) if isinstance(tokenizer, ByteTokenizer) else tokenizer(t)["input_ids"]
        rows.append(list(ids)[:max_length])
    T = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), T, dtype=torch.long)
    mask = torch.zeros(len(rows), T, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r)
        mask[i, :len(r)] = 1
    return ids, mask


# -- loading -------------------------------------------------------------------------------------
@dataclass
class Side:
    """One model of a pair: its embedder now, at initialisation, and how to feed it."""

    name: str
    now: nn.Module
    init: nn.Module
    image_size: int | None = None  # vision only
    patch_size: int | None = None  # vision only: the patch side of the input AGOP
    mean: tuple[float, ...] | None = None  # vision only: the normalisation its images get
    std: tuple[float, ...] | None = None
    tokenizer: object | None = None  # language only


def load_vision(spec: str, image_size: int = 32, patch_size: int = 4, out_dim: int | None = 8, seed: int = 0) -> Side:
    """A vision side from an lm2vision run directory (now = final weights, init = ``init.safetensors``;
    its images as it was trained: image size, mean and std) or a backbone name for ``create_backbone``
    (now = pretrained, init = same architecture, fresh): a language model fed ``patch_size`` patches of
    ``image_size`` images, or an image model (ViT, ResNet, ...) at its own preprocessing."""
    mean = std = None
    if is_run_dir(spec):
        now, cfg = load_run_model(spec)
        init, _ = load_run_model(spec, weights="init.safetensors")
        mean, std = tuple(cfg.data.mean), tuple(cfg.data.std)
    else:
        cfg = ModelConfig(name=spec, pretrained=tiny_config(spec) is None, image_size=image_size, patch_size=patch_size)
        now = create_backbone(cfg)
        init = create_backbone(ModelConfig(**{**cfg.__dict__, "pretrained": False}))
        prep = getattr(now, "prep", None)  # an image model's own normalisation
        mean, std = (prep.mean, prep.std) if prep is not None else (None, None)
    wrap = lambda b: VisionEmbedder(b, out_dim, seed).eval()  # noqa: E731
    return Side(spec, wrap(now), wrap(init), image_size=now.cfg.image_size, patch_size=now.patch_size,
                mean=mean, std=std)


def _text_source(spec: str) -> str:
    if spec == "minilm":
        return str(embedded_minilm_path())
    return spec


def _load_text_model(spec: str):
    """(model, tokenizer) of a tiny alias (fresh init, byte tokenizer), 'minilm', a path or a hub id."""
    from transformers import AutoModel, AutoTokenizer

    if spec in TINY_CONFIGS:
        config = load_lm_config(spec)
        torch.manual_seed(0)
        return AutoModel.from_config(config), ByteTokenizer(config.vocab_size)
    source = _text_source(spec)
    try:
        model = AutoModel.from_pretrained(source, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as e:
        hint = " (offline? give a local directory)" if not Path(source).exists() else ""
        raise Lm2vError(f"cannot load language model {spec!r}{hint}: {str(e).splitlines()[0]}") from None
    return model, tokenizer


def text_side(name: str, model: nn.Module, tokenizer, out_dim: int | None = 8, seed: int = 0,
              token_embeddings: bool = False) -> Side:
    """A language side from an in-memory model: init = the same config freshly initialised (seed 0)."""
    from transformers import AutoModel

    torch.manual_seed(0)
    init = AutoModel.from_config(copy.deepcopy(model.config))
    wrap = lambda m: TextEmbedder(m, out_dim, seed, token_embeddings).eval()  # noqa: E731
    return Side(name, wrap(model), wrap(init), tokenizer=tokenizer)


def load_language(spec: str, out_dim: int | None = 8, seed: int = 0, token_embeddings: bool = False) -> Side:
    """A language side by hub id, local path, 'minilm' (offline) or a tiny alias."""
    model, tokenizer = _load_text_model(spec)
    return text_side(spec, model, tokenizer, out_dim, seed, token_embeddings)
