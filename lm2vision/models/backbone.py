"""A language model's transformer blocks as a vision backbone.

image (B, 3, S, S) -> patch tokens (B, T, C) -> the language model's own blocks (fed through
``inputs_embeds``, so every family runs its own embedding norm, positions, attention and final
norm) -> pooling (B, C) -> linear head (B, K). The interface follows timm:
``forward_features``, ``pool``, ``forward_head``, ``reset_classifier``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import bounds, choices, validate
from ..errors import Lm2vError
from .arch import ArchSpec
from .freeze import GROUPS, TrainableSpec


@dataclass
class ModelConfig:
    """What backbone to build. Saved with every run, so a checkpoint can be rebuilt from it."""

    name: str = "minilm"  # alias (minilm, tiny-*), Hugging Face hub id, or local directory
    pretrained: bool = True  # False: same config, fresh init, the weights are never read
    image_size: int = field(default=32, metadata=bounds(ge=1))  # after preprocessing (32 native CIFAR; 224 as the paper)
    patch_size: int = field(default=4, metadata=bounds(ge=1))  # 4 at 32 px (64 tokens); 16 at 224 px (196 tokens)
    # model: reuse the LM's learned table; learned: ours
    positions: str = field(default="auto", metadata=choices("auto", "model", "learned", "none"))
    pooling: str = field(default="auto", metadata=choices("auto", "last", "mean", "first"))  # auto: last if causal, else mean
    attention: str = field(default="auto", metadata=choices("auto", "causal", "bidirectional"))  # auto: as pretrained
    # Hugging Face's attention registry; eager: its own kernels. flash_* / flex_attention fall back to sdpa
    # (one warning) where the package, a CUDA GPU or the family's support is missing
    attn_implementation: str = field(default="sdpa", metadata=choices(
        "sdpa", "eager", "flex_attention", "flash_attention_2", "flash_attention_3"))
    dropout: float | None = field(default=None, metadata=bounds(ge=0, lt=1))  # None keeps the model's own rates
    num_classes: int = field(default=10, metadata=bounds(ge=1))
    gradient_checkpointing: bool = False
    init_seed: int = 0  # seeds the fresh parts (patch embedding, head, our positions, scratch blocks)
    # Image size and mean/std of the images. auto: an image model's own (its preprocessor_config.json,
    # timm's pretrained_cfg, else its family's default), data.mean/std and model.image_size for a language
    # backbone; data: always data.mean/std and model.image_size (positions interpolated where the family can)
    preprocessing: str = field(default="auto", metadata=choices("auto", "data"))


def check_model_config(cfg: ModelConfig) -> None:
    """Reject impossible settings with one line each: the declared choices and bounds (a config
    built in Python skips ``load_config``), then the patch grid."""
    validate(cfg, "model")
    if cfg.image_size % cfg.patch_size:
        raise Lm2vError(f"image_size {cfg.image_size} is not divisible by patch_size {cfg.patch_size}")


class PatchEmbed(nn.Module):
    """Non-overlapping p x p patches -> C-dim tokens: a Conv2d (kernel = stride = p) by its weights.

    The forward pass cuts the image into patch vectors and applies the conv's weight as one matrix
    product, which is the same function (the conv never overlaps) but runs as a plain GEMM: cuDNN's
    strided conv kernel and its layout copies took 2.4% of an H100 training step at 224/16.
    """

    def __init__(self, patch_size: int, width: int):
        super().__init__()
        self.proj = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, ch, H, W = x.shape  # (B, 3, H, W) -> (B, T, 3 * p * p), each row ordered as the weight's (3, p, p)
        p = self.proj.kernel_size[0]
        patches = x.reshape(B, ch, H // p, p, W // p, p).permute(0, 2, 4, 1, 3, 5)  # (B, h, w, 3, p, p)
        patches = patches.reshape(B, (H // p) * (W // p), ch * p * p)
        return F.linear(patches, self.weight_matrix(), self.proj.bias)  # (B, T, C)

    def weight_matrix(self) -> torch.Tensor:
        """The weight as (C, 3 * p * p), rows = output channels (for covariance analyses)."""
        return self.proj.weight.flatten(1)


@torch.no_grad()
def fresh_head(old: nn.Linear, width: int, num_classes: int, seed: int) -> nn.Linear:
    """A new (width -> num_classes) linear head, weight N(0, 0.02) drawn from ``seed``, bias 0, with
    ``old``'s dtype, device and train/eval mode (timm's ``reset_classifier``)."""
    g = torch.Generator().manual_seed(seed)
    # Built on the CPU and moved, as before: the throwaway default init draws from the global CPU RNG.
    head = nn.Linear(width, num_classes, dtype=old.weight.dtype).to(old.weight.device)
    head.weight.copy_(torch.randn(head.weight.shape, generator=g) * 0.02)
    head.bias.zero_()
    return head.train(old.training)


def enable_checkpointing(lm: nn.Module) -> None:
    """Recompute each block's activations in the backward pass instead of storing them.

    Always non-reentrant: the reentrant form (the default of transformers 4.x) gives the blocks no
    gradient when their input needs none (a frozen patch embedding), and torch.compile traces it.
    A family whose Hugging Face model has no checkpointing (ALBERT, XLNet) is a one-line error.
    """
    if not getattr(lm, "supports_gradient_checkpointing", False):
        raise Lm2vError(f"{type(lm).__name__} ({lm.config.model_type}) does not support gradient checkpointing: "
                        "set model.gradient_checkpointing=false")
    kwargs = {"use_reentrant": False}
    if hasattr(lm, "activation_checkpointing_enable"):  # transformers >= 5.2x; the old name warns there
        lm.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


class VisionBackbone(nn.Module):
    """A Hugging Face language model driven by image patches. Build it with ``create_backbone``."""

    def __init__(self, lm: nn.Module, spec: ArchSpec, cfg: ModelConfig):
        super().__init__()
        check_model_config(cfg)
        self.cfg, self.spec, self.lm = cfg, spec, lm
        spec.check_config(lm.config)
        self.width: int = lm.config.hidden_size  # of the blocks and the pooled output
        self.embed_width: int = spec.input_width(lm.config)  # of the patch tokens fed as inputs_embeds
        self.grid_size = cfg.image_size // cfg.patch_size
        self.num_tokens = self.grid_size**2
        self.causal = spec.causal if cfg.attention == "auto" else cfg.attention == "causal"
        self.positions = cfg.positions if cfg.positions != "auto" else ("none" if spec.rotary else "model")
        self.pooling = cfg.pooling if cfg.pooling != "auto" else ("last" if self.causal else "mean")
        self._check_positions()
        self._check_attention()
        self._drop_word_embeddings()
        self.patch_embed = PatchEmbed(cfg.patch_size, self.embed_width)
        learned = self.positions == "learned"
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_tokens, self.embed_width)) if learned else None
        self.head = nn.Linear(self.width, cfg.num_classes)
        self.fixed_params: set[str] = self._disable_model_positions()
        self._crop_model_positions()
        self._init_patch_and_positions()
        self.reset_classifier(cfg.num_classes)
        self.trainable_spec: TrainableSpec | None = None  # set by apply_trainable
        self.residual_dtype: torch.dtype | None = None  # set by set_residual_dtype (runtime.residual_bf16)
        self._residual_hooks: list = []
        if cfg.gradient_checkpointing:
            enable_checkpointing(self.lm)
        impl = getattr(self.lm.config, "_attn_implementation", None)
        if impl in ("flash_attention_2", "flash_attention_3") and self.causal != spec.causal:
            raise Lm2vError(f"model.attention={cfg.attention} needs a custom attention mask, which {impl} does not "
                            "take: use model.attn_implementation=sdpa (or flex_attention)")

    def set_residual_dtype(self, dtype: torch.dtype | None) -> None:
        """Cast the hidden states entering every block to ``dtype`` under autocast (None: undo), so the
        residual adds of a pre-norm block (GPT-2, LLaMA, Qwen) stay in ``dtype`` instead of fp32: half
        the bytes of the residual stream. Outside autocast (evaluation in fp32) nothing changes."""
        for handle in self._residual_hooks:
            handle.remove()
        self._residual_hooks, self.residual_dtype = [], dtype
        if dtype is None:
            return

        def cast(module, args, kwargs):
            if not torch.is_autocast_enabled(self.head.weight.device.type):
                return None
            if args:
                return (args[0].to(dtype), *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": kwargs["hidden_states"].to(dtype)}

        self._residual_hooks = [b.register_forward_pre_hook(cast, with_kwargs=True) for b in self.blocks]

    # -- construction helpers -------------------------------------------------------------
    def _check_positions(self) -> None:
        if self.positions == "model" and self.spec.rotary:
            raise Lm2vError(f"{self.spec.family} has no position table (rotary or relative positions): "
                            "model.positions must be none or learned")
        key = self.spec.max_positions_key
        limit = getattr(self.lm.config, key) - self.spec.first_position(self.lm.config) if key else None
        if self.positions == "model" and limit is not None and self.num_tokens > limit:
            raise Lm2vError(f"{self.num_tokens} patch tokens exceed the model's {limit} positions; use bigger patches")

    def _check_attention(self) -> None:
        if self.causal != self.spec.causal and not self.spec.mask_4d:
            raise Lm2vError(f"{self.spec.family} takes no custom attention mask: model.attention must be auto or "
                            f"{'causal' if self.spec.causal else 'bidirectional'}")

    def _drop_word_embeddings(self) -> None:
        # Patch tokens replace words: keep a 1-row table so the module tree stays intact.
        parent_path, _, leaf = self.spec.word_embed.rpartition(".")
        parent = self.lm.get_submodule(parent_path)  # "" is the model itself
        setattr(parent, leaf, nn.Embedding(1, self.embed_width))
        for p in getattr(parent, leaf).parameters():
            p.requires_grad_(False)

    def _disable_model_positions(self) -> set[str]:
        """Zero the LM's own position table unless we reuse it; returns names never to train."""
        fixed = {f"lm.{self.spec.word_embed}.weight"} | self._unused_params()
        if self.spec.pos_embed and self.positions != "model":
            table = self.lm.get_submodule(self.spec.pos_embed)
            with torch.no_grad():
                table.weight.zero_()
            table.weight.requires_grad_(False)
            fixed.add(f"lm.{self.spec.pos_embed}.weight")
        return fixed

    def _unused_params(self) -> set[str]:
        """The model's parameters that patch tokens never reach (``spec.unused_params``), frozen."""
        if not self.spec.unused_params:
            return set()
        unused = re.compile("|".join(self.spec.unused_params))
        names = set()
        for name, p in self.lm.named_parameters():
            if unused.search(name):
                p.requires_grad_(False)
                names.add(f"lm.{name}")
        return names

    def _crop_model_positions(self) -> None:
        """Keep only the rows of a reused position table that patch tokens read (nanoGPT's
        ``crop_block_size``): the rest would be trained, decayed and saved for nothing."""
        if self.positions != "model":
            return
        table = self.lm.get_submodule(self.spec.pos_embed)
        rows = self.spec.first_position(self.lm.config) + self.num_tokens
        table.weight = nn.Parameter(table.weight.detach()[:rows].clone(), requires_grad=table.weight.requires_grad)
        table.num_embeddings = rows
        setattr(self.lm.config, self.spec.max_positions_key, rows)  # so the config describes the table

    @torch.no_grad()
    def _init_patch_and_positions(self) -> None:
        # Patch weight, then our position table, from one generator: the draws every saved run used.
        g = torch.Generator().manual_seed(self.cfg.init_seed)
        self._draw_patch_embed(g)
        if self.pos_embed is not None:
            self.pos_embed.copy_(torch.randn(self.pos_embed.shape, generator=g) * 0.02)

    @torch.no_grad()
    def _draw_patch_embed(self, g: torch.Generator) -> None:
        w = self.patch_embed.proj.weight
        w.copy_(torch.randn(w.shape, generator=g) * 0.02)
        self.patch_embed.proj.bias.zero_()

    def reset_patch_embed(self, seed: int | None = None) -> None:
        """Re-draw the patch projection (weight N(0, 0.02), bias 0) from ``seed`` (default
        ``init_seed``), as stage 2 ``reinit`` does. Our position table is left as it is."""
        self._draw_patch_embed(torch.Generator().manual_seed(self.cfg.init_seed if seed is None else seed))

    @torch.no_grad()
    def reset_classifier(self, num_classes: int, seed: int | None = None) -> None:
        """A new linear head with ``num_classes`` outputs, init N(0, 0.02) as the paper, drawn from
        ``seed`` (default ``init_seed + 1``). It keeps the old head's dtype, device and train/eval mode."""
        self.head = fresh_head(self.head, self.width, num_classes, self.cfg.init_seed + 1 if seed is None else seed)
        self.cfg.num_classes = num_classes

    # -- the timm-style interface ---------------------------------------------------------
    @property
    def blocks(self) -> nn.ModuleList:
        return self.lm.get_submodule(self.spec.blocks)

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def patch_size(self) -> int:
        """Side of the input patches (patch-wise analyses such as the input AGOP)."""
        return self.cfg.patch_size

    def attention_mask(self, x: torch.Tensor) -> torch.Tensor | None:
        """None keeps the family's own masking (fast SDPA paths); else a 4D mask (B, 1, T, T)."""
        if self.causal == self.spec.causal:
            return None
        T = x.shape[1]
        allowed = torch.ones(T, T, dtype=torch.bool, device=x.device)
        if self.causal:
            allowed = allowed.tril()
        mask = allowed[None, None].expand(x.shape[0], 1, T, T)
        if self.cfg.attn_implementation == "eager":  # eager adds the mask to the scores
            return torch.zeros(mask.shape, dtype=x.dtype, device=x.device).masked_fill(~mask, torch.finfo(x.dtype).min)
        return mask

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, S, S), normalised -> tokens (B, T, C) after the model's final norm."""
        if x.shape[-1] != self.cfg.image_size or x.shape[-2] != self.cfg.image_size:
            raise Lm2vError(f"expected {self.cfg.image_size}px images, got {tuple(x.shape[-2:])}")
        tokens = self.patch_embed(x)  # (B, T, C)
        if self.pos_embed is not None:
            tokens = tokens + self.pos_embed
        out = self.lm(inputs_embeds=tokens, attention_mask=self.attention_mask(tokens), use_cache=False)
        return out.last_hidden_state  # (B, T, C)

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, T, C) -> (B, C) by the configured pooling."""
        if self.pooling == "last":
            return tokens[:, -1]
        if self.pooling == "first":
            return tokens[:, 0]
        return tokens.mean(dim=1)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Tokens (B, T, C) -> logits (B, K), or pooled features (B, C) if ``pre_logits``."""
        pooled = self.pool(x)
        return pooled if pre_logits else self.head(pooled)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def block_fn(self) -> Callable[[nn.Module, torch.Tensor], torch.Tensor]:
        """How to call one of this family's blocks on hidden states (B, T, C) -> (B, T, C) outside
        the language model (copies of blocks used as a decoder, say). Blocks keep their own default
        masking; rotary families also get the model's (cos, sin) for positions 0..T-1."""
        if not self.spec.standalone_blocks:
            raise Lm2vError(f"{self.spec.family} blocks cannot run outside the model (they need its relative "
                            "position encodings): use another family for blocks copied from the language model")
        rotary = self.lm.get_submodule(self.spec.rotary_emb) if self.spec.rotary_emb else None

        def run(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
            kw = {}
            if rotary is not None:
                kw["position_embeddings"] = rotary(x, torch.arange(x.shape[1], device=x.device)[None])
            out = block(x, **kw)
            return out[0] if isinstance(out, (tuple, list)) else out

        return run

    # -- named groups for freezing and analyses -------------------------------------------
    def layer_groups(self) -> dict[str, list[str]]:
        """Parameter names per group: patch, pos, embed, norm, final_norm, attn, mlp, head, block.<i>.

        ``embed`` holds the model's other input tables and modules (BERT's token types, ALBERT's projection
        from its embedding width to its hidden width); ``norm`` is every
        norm; ``final_norm`` the norms outside the blocks (embedding norm, final norm). Within a block,
        ``attn``, ``mlp`` and ``norm`` partition its parameters for every family: a norm is never
        attention or MLP, wherever it sits (BERT's ``attention.output.LayerNorm``, Qwen3's ``q_norm``).
        Groups overlap otherwise (a block's LayerNorm is in ``norm`` and in ``block.<i>``); position
        tables that are switched off, the unused word table and the parameters patch tokens never reach
        (``spec.unused_params``: XLNet's segment terms) are ``fixed_params`` and belong to no group.
        A family sharing one block's weights across its layers (ALBERT) has one ``block.0``: block
        selectors pick weights, so ``first:1`` trains every layer and ``first:2`` is refused.
        """
        groups: dict[str, list[str]] = {g: [] for g in GROUPS}
        groups.update({f"block.{i}": [] for i in range(self.num_blocks)})
        norms = self._norm_param_names()
        for name, _ in self.named_parameters():
            if name not in self.fixed_params:
                for group in self._groups_of(name, name in norms):
                    groups[group].append(name)
        return groups

    def _groups_of(self, name: str, norm: bool) -> list[str]:
        prefix = f"lm.{self.spec.blocks}."
        if name.startswith(prefix):
            index, _, rest = name[len(prefix):].partition(".")
            if norm:  # checked first: BERT keeps LayerNorms under attention.output. and output.
                return [f"block.{index}", "norm"]
            if rest.startswith(self.spec.attn):
                return [f"block.{index}", "attn"]
            return [f"block.{index}"] + (["mlp"] if rest.startswith(self.spec.mlp) else [])
        if norm:
            return ["norm", "final_norm"]
        if name.startswith("patch_embed."):
            return ["patch"]
        if name.startswith("head."):
            return ["head"]
        if name == "pos_embed" or name in self._model_tables(self.spec.pos_embed):
            return ["pos"]
        if name in self._model_tables(*self.spec.extra_embeds) or name.startswith(self._embed_prefixes()):
            return ["embed"]
        return []

    def _embed_prefixes(self) -> tuple[str, ...]:
        return tuple(f"lm.{path}." for path in self.spec.embed_modules)

    def _model_tables(self, *paths: str | None) -> set[str]:
        return {f"lm.{path}.weight" for path in paths if path}

    def no_weight_decay(self) -> set[str]:
        """Names kept out of weight decay (timm's hook, read by ``build_optimizer``): position tables
        (ours and the model's), the other additive input tables, every norm parameter and every bias.
        Decay would pull these towards zero, which for a table or a norm gain is not a smaller model."""
        names = self._model_tables(self.spec.pos_embed, *self.spec.extra_embeds) | self._norm_param_names()
        names |= {n for n, _ in self.named_parameters() if n == "pos_embed" or n.rpartition(".")[2] == "bias"}
        return names

    def _norm_param_names(self) -> set[str]:
        names = set()
        for mname, module in self.named_modules():
            if isinstance(module, nn.LayerNorm) or type(module).__name__.endswith(("RMSNorm", "LayerNorm")):
                names.update(f"{mname}.{p}" for p, _ in module.named_parameters(recurse=False))
        return names
