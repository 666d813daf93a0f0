#!/usr/bin/env python
"""Training throughput of lm2vision against the method authors' style and a timm peer, in one process on one device.

For each image/patch setting (``--sizes``, default 224/16 and 32/4) it times training steps on the
same model shape (GPT-2 medium by default: 24 blocks, width 1024, 16 heads, random weights; at 224/16
that is exactly ViT-L/16's shape: 196 tokens):

baseline  the authors' style: Hugging Face eager attention, fp16 autocast + torch.amp.GradScaler,
          batch 64, torch.optim.AdamW with its defaults (not fused), a ``loss.item()`` every step
          (their logging), images augmented on the host per batch from uint8 CPU tensors by
          DataLoader workers (pinned, copied to the device every step).
ours      the library's real step, ``lm2vision.train.loop.train_epoch`` on ``ClassificationSteps`` (what
          ``train_one_epoch`` runs, plus the compiled optimizer step): uint8 images moved to the device
          once, augmentation on the device, SDPA attention, bf16 autocast, fused AdamW
          (``build_optimizer``), no host sync inside an epoch, optional torch.compile and gradient
          checkpointing, batch as large as fits (powers of two, OOM caught), and the speed levers of
          ``lm2vision.train.levers`` (``--compile-mode``, ``--compile-optimizer``, ``--residual-bf16``,
          ``--fp8``, ``--attn``), each applied by the library and named in the row's ``levers`` column.
peer      timm's ``--peer-model`` (ViT-L/16 by default) through the same step as ours: same batch, same
          uint8 data on the device and augmentation, bf16 autocast, fused AdamW, torch.compile when ours
          compiles (or ``--peer-compile``), label smoothing 0.1, clipping 1.0; only where its patch size
          is the setting's (224/16 for ViT-L/16).
qwen3     (``--qwen3-8b``, instead of the rows above) Qwen3-8B's shape from a ``Qwen3Config``, random
          weights, the paper's partial training (first 2 blocks + patch embedding, final norm, head),
          frozen weights cast to bf16, bf16 autocast; each size with and without gradient checkpointing
          (and with torchao float8 with ``--fp8``); an OOM is a row that says OOM.

``--levers-sweep`` runs our row with none of the levers, then once per lever switched on alone, and
prints each one's img/s against the no-lever row; levers this machine cannot run are listed in one line
with the reason.

Both baseline and ours use the same recipe otherwise: random-resized-crop (scale 0.2-1, bicubic) + flip
from 32 px stored images, label smoothing 0.1, gradient clipping 1.0, all parameters trained (stage 1).
Every run: one warm-up epoch (compilation, autotuning, DataLoader start), then ``--epochs`` timed
epochs of ``--steps`` steps with the device synchronised around them.

    img/s = timed images / timed seconds
    FLOPs/img = sum over weights applied to every token of 2 * n * T * (1 + g + t)
              + sum over the head's weights of 2 * n * (1 + g + t) + sum over blocks of 4 * T^2 * A * (1 + 2 g)
        n: the weight's size, T: tokens per image, A: attention width (heads x head dim; = C for GPT-2),
        t = 1 when the weight trains (its gradient), g = 1 when a trained parameter sits at or before it
        (the input gradient passes through it). Everything trained: 6 * P * T + 6 * P_head + 12 * L * T^2 * C.
        Qwen3 first:2 (patch embedding trained, so the gradient passes every block):
        6 * P_trained * T + 4 * P_frozen * T + 6 * P_head + 12 * L * T^2 * A.
        P: parameters applied to every token (patch embedding, blocks, norms; no embedding tables)
        the attention term counts the full T x T matrix; peer (timm ViT): 6 * P * T + 6 * P_head +
        12 * L * T^2 * C with T = patches + class token
    MFU = img/s * FLOPs/img / peak (``--peak-tflops``, 989 = H100 SXM bf16 dense)
    peak GiB = torch.cuda.max_memory_allocated over the timed epochs
    MiB/img = (peak - memory resident after the warm-up: weights, optimizer state, data) / batch,
        i.e. activations, gradients and workspace per image (compare with and without --grad-ckpt)

Example (GPU): python benchmarks/throughput.py
CPU check:     python benchmarks/throughput.py --device cpu --layers 2 --width 64 --heads 2 \\
                   --sizes 32/4,64/16 --steps 3 --batch 8
"""
from __future__ import annotations

import argparse
import gc
import os
import shutil
import sys
import tempfile
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from lm2vision.data import DataConfig, train_transform  # noqa: E402
from lm2vision.errors import Lm2vError, Lm2vWarning  # noqa: E402
from lm2vision.models import ModelConfig, TrainableSpec, VisionBackbone, apply_trainable, create_backbone  # noqa: E402
from lm2vision.models.backbone import enable_checkpointing  # noqa: E402
from lm2vision.models.factory import attention_kernel  # noqa: E402
from lm2vision.train import levers as lev  # noqa: E402
from lm2vision.train.config import OptimConfig, RuntimeConfig, sdpa_backends  # noqa: E402
from lm2vision.train.distributed import Runtime, setup_runtime  # noqa: E402
from lm2vision.train.loop import ClassificationSteps, DeviceSet, Schedule, train_epoch  # noqa: E402
from lm2vision.train.optim import build_optimizer, lr_at, set_lr  # noqa: E402
from lm2vision.utils.tables import markdown_table  # noqa: E402
from lm2vision.utils.timing import median_seconds  # noqa: E402

GPT2_MEDIUM = dict(layers=24, width=1024, heads=16)
QWEN3_8B = dict(layers=36, width=4096, heads=32)  # + 8 key/value heads, head dim 128, MLP 12288 (see write_qwen3_config)
QWEN3_TRAINABLE = TrainableSpec(blocks="first:2")  # the paper's partial training; groups: patch, pos, embed, final_norm, head
STORE_SIZE = 32  # stored images are CIFAR-sized; the augmentation resizes them to the model's input
NUM_CLASSES = 10
GiB, MiB = 2**30, 2**20
ATTN_CHOICES = ("sdpa", "eager", "flex_attention", "flash_attention_2", "flash_attention_3")
SWEEP_LEVERS = ("reduce-overhead", "compile-optimizer", "residual-bf16", "fp8",
                "attn=flash_attention_2", "attn=flash_attention_3", "attn=flex_attention")


class OutOfMemory(Lm2vError):
    """A row with a fixed batch ran out of device memory."""


@dataclass(frozen=True)
class Setting:
    """Input side S and patch side p: T = (S / p)^2 tokens per image."""

    image_size: int
    patch_size: int

    @property
    def label(self) -> str:
        return f"{self.image_size}/{self.patch_size}"

    @property
    def tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2


@dataclass
class Result:
    """One timed row of the table; ``img_per_s`` None: the row ran out of device memory."""

    setting: Setting
    run: str  # baseline | ours | peer | qwen3 first:2
    batch: int
    precision: str
    attention: str
    compiled: str
    ckpt: bool
    img_per_s: float | None
    flops_per_image: float
    peak_bytes: int | None
    act_bytes_per_image: float | None
    gemm_s_per_image: float | None = None  # the blocks' matrix products alone (--ceiling)
    levers: str = "none"  # the levers this row ran with, after this machine's fallbacks
    sweep: str | None = None  # --levers-sweep: the lever this row switches on ("none" for the reference row)

    def mfu(self, peak_tflops: float) -> float | None:
        return None if self.img_per_s is None else self.img_per_s * self.flops_per_image / (peak_tflops * 1e12)


@dataclass(frozen=True)
class LeverSet:
    """The speed levers one of our rows asks for, before this machine's fallbacks."""

    compile_mode: str = "default"
    compile_optimizer: bool = False
    residual_bf16: bool = False
    fp8: bool = False
    attn: str = "sdpa"

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "LeverSet":
        return cls(args.compile_mode, args.compile_optimizer, args.residual_bf16, args.fp8, args.attn)

    @classmethod
    def only(cls, lever: str) -> "LeverSet":
        """Nothing but ``lever`` (a name of SWEEP_LEVERS) switched on."""
        if lever.startswith("attn="):
            return cls(attn=lever.split("=", 1)[1])
        field, value = {"reduce-overhead": ("compile_mode", "reduce-overhead"), "compile-optimizer": ("compile_optimizer", True),
                        "residual-bf16": ("residual_bf16", True), "fp8": ("fp8", True)}[lever]
        return cls(**{field: value})

    def runtime(self, args: argparse.Namespace, compile_model: bool) -> RuntimeConfig:
        """The ``runtime.*`` fields that :func:`lm2vision.train.levers.resolve_levers` reads."""
        return RuntimeConfig(device=args.device, sdpa=args.sdpa, compile=compile_model, compile_mode=self.compile_mode,
                             compile_optimizer=self.compile_optimizer, residual_bf16=self.residual_bf16, fp8=self.fp8,
                             fp8_min_width=args.fp8_min_width)


def lever_label(lv: lev.Levers, attn: str) -> str:
    """'none', or the levers a row ran with after fallbacks, e.g. 'reduce-overhead, residual bf16'."""
    parts = [lv.compile_mode] if lv.compile and lv.compile_mode != "default" else []
    parts += ["optimizer compiled"] if lv.compile_optimizer else []
    parts += ["residual bf16"] if lv.residual_bf16 else []
    parts += [f"fp8 x{lv.fp8_layers} Linear"] if lv.fp8 else []
    parts += [f"attn={attn}"] if attn != "sdpa" else []
    return ", ".join(parts) or "none"


@contextmanager
def warnings_once():
    """The library's fallback warnings (``Lm2vWarning``) printed once each, however many rows hit them."""
    seen: set[str] = set()
    with warnings.catch_warnings():
        warnings.simplefilter("always", Lm2vWarning)
        show = warnings.showwarning

        def once(message, category, filename, lineno, file=None, line=None):
            if not issubclass(category, Lm2vWarning):
                return show(message, category, filename, lineno, file, line)
            if str(message) not in seen:
                seen.add(str(message))
                warn(str(message))

        warnings.showwarning = once
        yield


# -- arguments --------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--sizes", default="224/16,32/4", help="comma list of image_size/patch_size")
    ap.add_argument("--batch", default="auto",
                    help="ours: auto (largest power of two that fits) or ints, one per size or one for all")
    ap.add_argument("--max-batch", type=int, default=1024, help="upper end of the auto batch search")
    ap.add_argument("--baseline-batch", type=int, default=64)
    ap.add_argument("--baseline-workers", type=int, default=None,
                    help="DataLoader workers of the baseline (default: up to 8 on GPU, bounded by /dev/shm; 0 on CPU)")
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                    help="torch.compile our model (default: on for CUDA)")
    ap.add_argument("--compile-mode", default="default", help="lever: reduce-overhead adds CUDA graphs (needs --compile)",
                    choices=["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"])
    ap.add_argument("--compile-optimizer", action="store_true", help="lever: the optimizer step compiled, lr in a tensor")
    ap.add_argument("--residual-bf16", action="store_true", help="lever: the residual stream in bf16 (needs bf16 autocast)")
    ap.add_argument("--fp8", action="store_true", help="lever: torchao float8 (row-wise) on Linear layers >= --fp8-min-width")
    ap.add_argument("--fp8-min-width", type=int, default=4096, help="fp8 only on Linear layers this wide or more")
    ap.add_argument("--attn", choices=ATTN_CHOICES, default="sdpa", help="lever: our model's attn_implementation")
    ap.add_argument("--levers-sweep", action="store_true",
                    help="our row with no lever, then once per lever alone (img/s and ratio to the no-lever row)")
    ap.add_argument("--sweep-levers", default=",".join(SWEEP_LEVERS), help="the levers --levers-sweep tries")
    ap.add_argument("--sdpa", default="auto",
                    help="ours: runtime.sdpa, the allowed SDPA backends (auto = PyTorch's order; see attention.py)")
    ap.add_argument("--grad-ckpt", action="store_true", help="gradient checkpointing in our model (and the peer)")
    ap.add_argument("--amp", choices=["bf16", "off"], default=None,
                    help="our autocast (default: bf16 on CUDA and for --qwen3-8b, off on CPU)")
    ap.add_argument("--steps", type=int, default=20, help="optimizer steps per epoch")
    ap.add_argument("--epochs", type=int, default=2, help="timed epochs (after one warm-up epoch)")
    ap.add_argument("--layers", type=int, default=None, help=f"blocks (default {GPT2_MEDIUM['layers']}; Qwen3 36)")
    ap.add_argument("--width", type=int, default=None, help=f"hidden size (default {GPT2_MEDIUM['width']}; Qwen3 4096)")
    ap.add_argument("--heads", type=int, default=None, help=f"attention heads (default {GPT2_MEDIUM['heads']}; Qwen3 32)")
    ap.add_argument("--hf-config", default=None,
                    help="local Hugging Face model directory (config.json) instead of the GPT-2 shape")
    ap.add_argument("--dropout", type=float, default=None, help="dropout of both models (default: the config's own)")
    ap.add_argument("--baseline", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--peer", action=argparse.BooleanOptionalAction, default=None,
                    help="the timm peer row (default: on when timm is importable)")
    ap.add_argument("--peer-model", default="vit_large_patch16_224", help="timm model name of the peer row")
    ap.add_argument("--peer-compile", action=argparse.BooleanOptionalAction, default=None,
                    help="torch.compile the peer (default: as ours)")
    ap.add_argument("--qwen3-8b", action="store_true",
                    help="only the Qwen3-8B rows (partial training of the first 2 blocks; --layers/--width/--heads shrink it)")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads); 1 on a busy shared CPU")
    ap.add_argument("--profile", type=int, default=0, metavar="ROWS",
                    help="after timing, profile one more epoch of ours and print the ROWS costliest kernels/ops")
    ap.add_argument("--ceiling", action=argparse.BooleanOptionalAction, default=None,
                    help="also time the blocks' matrix products alone at our batch (default: on for CUDA)")
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="device peak for MFU (H100 SXM bf16 dense: 989)")
    return ap.parse_args(argv)


def parse_sizes(text: str) -> list[Setting]:
    out = []
    for item in text.split(","):
        S, _, p = item.strip().partition("/")
        if not (S.isdigit() and p.isdigit()) or int(p) == 0 or int(S) % int(p):
            raise Lm2vError(f"bad size {item!r}: expected image_size/patch_size with the patch dividing the image, e.g. 224/16")
        out.append(Setting(int(S), int(p)))
    return out


def parse_batches(text: str, n: int) -> list[int | None]:
    """None means search; one value applies to every size."""
    if text == "auto":
        return [None] * n
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise Lm2vError(f"--batch must be auto or integers, got {text!r}") from None
    if len(values) not in (1, n) or min(values) < 1:
        raise Lm2vError(f"--batch needs 1 or {n} positive integers, got {text!r}")
    return values * n if len(values) == 1 else values


def parse_sweep(text: str) -> list[str]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    bad = [n for n in names if n not in SWEEP_LEVERS]
    if bad or not names:
        raise Lm2vError(f"--sweep-levers: unknown lever(s) {bad}; choose from {', '.join(SWEEP_LEVERS)}")
    return names


def check_args(args: argparse.Namespace) -> None:
    shape = (args.layers, args.width, args.heads)
    if args.hf_config and any(v is not None for v in shape):
        raise Lm2vError("--hf-config fixes the shape: drop --layers/--width/--heads")
    if args.steps < 1 or args.epochs < 1:
        raise Lm2vError("--steps and --epochs must be >= 1")
    if args.fp8_min_width < 16:
        raise Lm2vError("--fp8-min-width must be >= 16 (the float8 kernels' tile)")
    sdpa_backends(args.sdpa)
    parse_sweep(args.sweep_levers)
    if args.levers_sweep and LeverSet.from_args(args) != LeverSet():
        raise Lm2vError("--levers-sweep switches each lever on alone, from none: drop --compile-mode, "
                        "--compile-optimizer, --residual-bf16, --fp8 and --attn")
    if args.qwen3_8b and (args.hf_config or args.levers_sweep):
        raise Lm2vError("--qwen3-8b builds its own shape and runs only its rows: drop --hf-config and --levers-sweep")
    if args.qwen3_8b and args.amp == "off":
        raise Lm2vError("--qwen3-8b trains under bf16 autocast (its frozen weights are bf16): drop --amp off")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise Lm2vError("--device cuda but no CUDA device is available")


def check_compile_mode(args: argparse.Namespace, compile_model: bool) -> None:
    """Like ``runtime.compile_mode``: a mode without compiling is an error, not a silent no-op."""
    if args.compile_mode != "default" and not compile_model:
        raise Lm2vError(f"--compile-mode {args.compile_mode} needs --compile (torch.compile is off: the default off CUDA)")


# -- model ------------------------------------------------------------------------------------
def write_gpt2_config(args: argparse.Namespace, folder: str) -> str:
    """A GPT-2 config (no weights) of the requested shape, saved so it loads by path."""
    from transformers import GPT2Config

    L = args.layers or GPT2_MEDIUM["layers"]
    C = args.width or GPT2_MEDIUM["width"]
    H = args.heads or GPT2_MEDIUM["heads"]
    if C % H:
        raise Lm2vError(f"--width {C} is not divisible by --heads {H}")
    GPT2Config(n_embd=C, n_layer=L, n_head=H, n_positions=1024).save_pretrained(folder)
    return folder


def write_qwen3_config(args: argparse.Namespace, folder: str) -> str:
    """Qwen3-8B's shape (36 blocks, width 4096, 32 query and 8 key/value heads of 128, MLP 12288, RMSNorm eps 1e-6,
    rope theta 1e6) as a config without weights; --layers/--width/--heads shrink it (key/value heads = heads / 4,
    head dim = width / heads, MLP 3 x width, as in Qwen3-8B). A small vocabulary: the images come in as inputs_embeds."""
    from transformers import Qwen3Config

    L = args.layers or QWEN3_8B["layers"]
    C = args.width or QWEN3_8B["width"]
    H = args.heads or QWEN3_8B["heads"]
    if C % H:
        raise Lm2vError(f"--width {C} is not divisible by --heads {H}")
    Qwen3Config(hidden_size=C, num_hidden_layers=L, num_attention_heads=H, num_key_value_heads=H // 4 if H % 4 == 0 else H,
                head_dim=C // H, intermediate_size=3 * C, rms_norm_eps=1e-6, rope_theta=1e6, vocab_size=16,
                max_position_embeddings=4096, tie_word_embeddings=False).save_pretrained(folder)
    return folder


def build_model(name: str, s: Setting, attn: str, ckpt: bool, dropout: float | None, device: torch.device) -> VisionBackbone:
    """The stage-1 model: random weights, every block, patch embedding, positions and head trained."""
    cfg = ModelConfig(name=name, pretrained=False, image_size=s.image_size, patch_size=s.patch_size,
                      attn_implementation=attn, gradient_checkpointing=ckpt, dropout=dropout, num_classes=NUM_CLASSES)
    model = create_backbone(cfg)
    apply_trainable(model, TrainableSpec())
    return model.to(device)


def build_partial(name: str, s: Setting, attn: str, device: torch.device) -> VisionBackbone:
    """The paper's large-model variant: random weights, ``QWEN3_TRAINABLE`` trained (the library's
    ``apply_trainable``), every frozen weight cast to bf16 (an 8B model's fp32 copy would not leave room)."""
    cfg = ModelConfig(name=name, pretrained=False, image_size=s.image_size, patch_size=s.patch_size,
                      attn_implementation=attn, num_classes=NUM_CLASSES)
    model = create_backbone(cfg)
    apply_trainable(model, QWEN3_TRAINABLE)
    for p in model.parameters():
        if not p.requires_grad:
            p.data = p.data.to(torch.bfloat16)
    return model.to(device)


def set_checkpointing(model: VisionBackbone, on: bool) -> None:
    """Gradient checkpointing on (the library's ``enable_checkpointing``) or off, in place."""
    if on:
        enable_checkpointing(model.lm)
    elif hasattr(model.lm, "activation_checkpointing_disable"):
        model.lm.activation_checkpointing_disable()
    else:
        model.lm.gradient_checkpointing_disable()


def actual_attn(model: nn.Module) -> str:
    """The attention implementation the model was built with (after any fallback)."""
    config = getattr(getattr(model, "lm", None), "config", None)
    return getattr(config, "_attn_implementation", None) or "sdpa"


def attention_width(model: VisionBackbone) -> int:
    """Query heads x head dimension (Qwen3 sets head_dim; GPT-2's is width / heads: the width)."""
    cfg = model.lm.config
    heads, head_dim = getattr(cfg, "num_attention_heads", None), getattr(cfg, "head_dim", None)
    return heads * head_dim if heads and head_dim else model.width


def param_positions(model: VisionBackbone) -> dict[str, int]:
    """Where each parameter acts in the forward order: -1 before the blocks (patch embedding, positions,
    embedding tables), i in block i, L after them (final norm), L + 1 the head."""
    L = model.num_blocks
    groups = model.layer_groups()
    where = {n: i for i in range(L) for n in groups[f"block.{i}"]}
    tables = embedding_tables(model)
    for n, _ in model.named_parameters():
        if n not in where:
            before = n.startswith("patch_embed.") or n == "pos_embed" or n in tables
            where[n] = -1 if before else L + 1 if n.startswith("head.") else L
    return where


def embedding_tables(model: nn.Module) -> set[str]:
    return {f"{m_name}.{n}" for m_name, m in model.named_modules() if isinstance(m, nn.Embedding)
            for n, _ in m.named_parameters()}


def flops_per_image(model: VisionBackbone) -> float:
    """Training FLOPs per image (see the module docstring): each weight applied to every token costs 2 * n * T
    forward, 2 * n * T more for its input gradient when a trained parameter sits at or before it, and
    2 * n * T more for its own gradient when it trains; the head the same with one token; attention
    4 * T^2 * A forward and 8 * T^2 * A backward in every block the gradient passes. Everything trained, this
    is 6 * P * T + 6 * P_head + 12 * L * T^2 * C; embedding tables and the additive position table cost nothing."""
    T, L, A = model.num_tokens, model.num_blocks, attention_width(model)
    where, skip = param_positions(model), embedding_tables(model) | {"pos_embed"}
    params = [(n, p) for n, p in model.named_parameters()]
    trained = [where[n] for n, p in params if p.requires_grad]
    first = min(trained) if trained else L + 2  # the gradient passes position k iff first <= k
    total = 0.0
    for n, p in params:
        if n not in skip:
            tokens = 1 if where[n] == L + 1 else T
            total += 2.0 * p.numel() * tokens * (1 + (first <= where[n]) + p.requires_grad)
    return total + sum(4.0 * T * T * A * (1 + 2 * (first <= i)) for i in range(L))


# -- device helpers ---------------------------------------------------------------------------
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.OutOfMemoryError) or "out of memory" in str(e).lower()


def say(text: str) -> None:
    print(text, flush=True)


def warn(text: str) -> None:
    """Loud: printed on stdout (next to the table) and stderr."""
    print(f"WARNING: {text}", flush=True)
    print(f"WARNING: {text}", file=sys.stderr, flush=True)


@dataclass
class Timing:
    seconds: float
    resident: int | None  # bytes allocated after the warm-up (weights, optimizer state, data)
    peak: int | None  # max bytes allocated during the timed epochs


def time_epochs(run_epoch: Callable[[int], None], first: int, n: int, device: torch.device) -> Timing:
    """Time ``n`` epochs (already warmed up), synchronising the device before and after."""
    sync(device)
    cuda = device.type == "cuda"
    resident = torch.cuda.memory_allocated(device) if cuda else None
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
        retries = torch.cuda.memory_stats(device).get("num_alloc_retries", 0)
    t0 = time.perf_counter()
    for epoch in range(first, first + n):
        run_epoch(epoch)
    sync(device)
    seconds = time.perf_counter() - t0
    if cuda and torch.cuda.memory_stats(device).get("num_alloc_retries", 0) > retries:
        warn("the allocator had to free cached blocks and retry (memory nearly full): throughput suffers; try a smaller --batch")
    return Timing(seconds, resident, torch.cuda.max_memory_allocated(device) if cuda else None)


def make_result(s: Setting, run: str, batch: int, images: int, t: Timing, flops: float, **kw) -> Result:
    act = (t.peak - t.resident) / batch if t.peak is not None else None
    return Result(s, run, batch, img_per_s=images / t.seconds, flops_per_image=flops, peak_bytes=t.peak,
                  act_bytes_per_image=act, **kw)


def oom_result(s: Setting, run: str, batch: int, flops: float, **kw) -> Result:
    """A row that ran out of device memory: it says OOM instead of stopping the script."""
    return Result(s, run, batch, img_per_s=None, flops_per_image=flops, peak_bytes=None, act_bytes_per_image=None, **kw)


# -- ours: the library's training step --------------------------------------------------------
def random_images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n random uint8 CIFAR-sized images (n, 3, 32, 32) and labels (n,), on the CPU."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, STORE_SIZE, STORE_SIZE), dtype=torch.uint8, generator=g)
    return images, torch.randint(0, NUM_CLASSES, (n,), generator=g)


@dataclass
class OurRun:
    """Everything one timed run needs: the model, the callable that runs it (compiled or not), the
    compiled optimizer step (or None) and one epoch's function."""

    model: nn.Module
    step_model: nn.Module
    step_fn: Callable[[], None] | None
    epoch_fn: Callable[[nn.Module, int], dict] | None
    batch: int
    levers: lev.Levers


def make_run(model: nn.Module, s: Setting, batch: int, steps: int, rt: Runtime, lv: lev.Levers,
             args: argparse.Namespace) -> OurRun:
    """The library's training step around ``model`` (ours, the peer and Qwen3 alike): ``build_optimizer``
    (fused AdamW on CUDA), uint8 images on the device once (``DeviceSet``), ``ClassificationSteps`` (device
    augmentation, label smoothing 0.1), ``train_epoch`` (autocast, clipping 1.0, no host sync), the model
    and optimizer step compiled as ``lv`` says (``compile_forward``, ``tensor_lr`` + ``compiled_step``)."""
    ocfg = OptimConfig(epochs=1 + args.epochs, batch_size=batch, warmup_epochs=1.0)
    optimizer = build_optimizer(model, ocfg)
    data = DeviceSet(*(t.to(rt.device) for t in random_images(steps * batch, seed=0)))  # moved once
    sched = Schedule.of(ocfg, steps)
    task = ClassificationSteps(data, DataConfig(), s.image_size, 0, batch, ocfg.label_smoothing, rt)
    step_fn = None
    if lv.compile_optimizer:
        lev.tensor_lr(optimizer)
        step_fn = lev.compiled_step(optimizer)
    run = OurRun(model, lev.compile_forward(model, lv), step_fn, None, batch, lv)

    def epoch_fn(forward: nn.Module, epoch: int) -> dict:
        return train_epoch(task, epoch, model, optimizer, sched, ocfg, 0, rt, forward=forward, progress=False,
                           step_fn=run.step_fn)

    run.epoch_fn = epoch_fn
    return run


def resolve(ls: LeverSet, args: argparse.Namespace, rt: Runtime, compile_model: bool) -> lev.Levers:
    """The library's resolution of ``ls`` on this machine (each fallback one warning)."""
    return lev.resolve_levers(ls.runtime(args, compile_model), rt.device, rt.amp_dtype)


def build_ours(args: argparse.Namespace, name: str, s: Setting, batch: int, steps: int, rt: Runtime,
               compile_model: bool, ls: LeverSet = LeverSet()) -> OurRun:
    model = build_model(name, s, ls.attn, args.grad_ckpt, args.dropout, rt.device)
    lv = resolve(ls, args, rt, compile_model)
    lev.apply_model_levers(model, lv, args.fp8_min_width)  # fp8 swaps layers: before the optimizer
    return make_run(model, s, batch, steps, rt, lv, args)


def fits(args: argparse.Namespace, name: str, s: Setting, batch: int, rt: Runtime, ls: LeverSet = LeverSet()) -> bool:
    """Does one eager training step at ``batch`` (with the model levers of ``ls``) fit in device memory?"""
    eager = replace(ls, compile_mode="default", compile_optimizer=False)
    return step_fits(lambda: build_ours(args, name, s, batch, 1, rt, False, eager), rt)


def step_fits(make: Callable[[], OurRun], rt: Runtime) -> bool:
    """Does one epoch of the run ``make()`` builds fit in device memory (only OOM is an answer)?"""
    run = None
    try:
        run = make()
        run.epoch_fn(run.model, 0)
        sync(rt.device)
        ok = True
    except Exception as e:  # noqa: BLE001 - only OOM is an answer, anything else is re-raised
        if not is_oom(e):
            raise
        ok = False
    if run is not None:
        run.model.zero_grad(set_to_none=True)  # a step cut short by OOM leaves gradients behind
    run = None
    free_memory(rt.device)
    return ok


def largest_fitting(fits_fn: Callable[[int], bool], smallest: int, largest: int) -> int | None:
    """Largest power-of-two multiple of ``smallest`` up to ``largest`` for which ``fits_fn`` holds
    (climbing from ``smallest``, stopping at the first that does not fit); None if none does."""
    best, b = None, smallest
    while b <= largest and fits_fn(b):
        best, b = b, 2 * b
    return best


def search_batch(args: argparse.Namespace, name: str, s: Setting, rt: Runtime, ls: LeverSet = LeverSet()) -> int:
    """Largest power of two up to --max-batch whose eager step fits (CPU: 32, nothing to fill)."""
    if rt.device.type != "cuda":
        say(f"[{s.label}] ours: --batch auto on {rt.device.type} -> 32")
        return 32

    def probe(b: int) -> bool:
        ok = fits(args, name, s, b, rt, ls)
        say(f"[{s.label}] ours: batch {b} {'fits' if ok else 'does not fit'}")
        return ok

    best = largest_fitting(probe, 16, args.max_batch)
    if best is None:
        raise Lm2vError(f"[{s.label}] not even batch 16 fits; try --grad-ckpt or a smaller shape")
    return best


def warm_up(run: OurRun) -> str:
    """The warm-up epoch (compiles); a failing torch.compile is reported and the row runs eager."""
    lv = run.levers
    if not (lv.compile or lv.compile_optimizer):
        run.epoch_fn(run.model, 0)
        return "off"
    torch._dynamo.reset()  # each run compiles afresh, with nothing cached from the last
    try:
        graph_break_counter().clear()
        run.epoch_fn(run.step_model, 0)
        report_graph_breaks()
        return "off" if not lv.compile else "on" if lv.compile_mode == "default" else lv.compile_mode
    except Exception as e:  # noqa: BLE001 - any compiler failure: say so, then run eager
        if is_oom(e):
            raise
        warn(f"torch.compile failed ({type(e).__name__}: {str(e).strip().splitlines()[0][:200]}); this row runs EAGER")
        torch._dynamo.reset()
        run.step_model, run.step_fn = run.model, None
        lv.compile = lv.compile_optimizer = False
        run.epoch_fn(run.model, 0)
        return "FAILED->eager"


def time_run(run: OurRun, args: argparse.Namespace, rt: Runtime) -> tuple[Timing, str]:
    """Warm up (compiling) and time ``--epochs`` epochs: the timing and the compile column."""
    compiled = warm_up(run)
    return time_epochs(lambda e: run.epoch_fn(run.step_model, e), 1, args.epochs, rt.device), compiled


def graph_break_counter():
    from torch._dynamo.utils import counters  # a private counter, but the only count of breaks there is

    return counters["graph_break"]


def report_graph_breaks() -> None:
    """Graph breaks split the compiled model and cost speed: name them. Explicit ``torch._dynamo.graph_break()``
    calls are left out: PyTorch's optimizer step makes two on purpose (its no_grad boundary, pytorch#104053)."""
    breaks = {r: n for r, n in graph_break_counter().items() if "torch._dynamo.graph_break()" not in str(r)}
    if breaks:
        reasons = "; ".join(str(r).strip().splitlines()[0][:120] for r in list(breaks)[:3])
        warn(f"torch.compile: {sum(breaks.values())} graph break(s) in the compiled step: {reasons}")


def block_gemms(model: VisionBackbone) -> list[tuple[int, int]]:
    """(in, out) of every weight matrix one block applies to each token (Linear and GPT-2's Conv1D)."""
    shapes = []
    for m in model.blocks[0].modules():
        if isinstance(m, nn.Linear):
            shapes.append((m.in_features, m.out_features))
        elif type(m).__name__ == "Conv1D":  # transformers' GPT-2 layer: weight (in, out)
            shapes.append(tuple(m.weight.shape))
    return shapes


def gemm_seconds_per_image(shapes: list[tuple[int, int]], blocks: int, tokens: int, batch: int, dtype: torch.dtype,
                           device: torch.device) -> float:
    """Seconds per image of the blocks' matrix products alone at ``batch``: for every weight (k, n)
    of a block (``shapes``, from :func:`block_gemms`), Y = X W, dX = dY W^T and dW = X^T dY on random
    (batch * T)-row operands, times the number of blocks. The rest of the step (norms, activations,
    attention, optimizer) costs nothing here, so 1 / this bounds img/s for this shape and library."""
    M = batch * tokens
    total = 0.0
    g = torch.Generator(device=device).manual_seed(0)
    for k, n in shapes:
        total += three_products_seconds(M, k, n, dtype, device, g)
    return total * blocks / batch


def three_products_seconds(M: int, k: int, n: int, dtype: torch.dtype, device: torch.device,
                           g: torch.Generator) -> float:
    """Median seconds of Y = X W, dX = dY W^T and dW = X^T dY on random (M, k), (k, n), (M, n) operands,
    summed (the operands are freed on return)."""
    x, w, dy = (torch.randn(*shape, device=device, dtype=dtype, generator=g) for shape in ((M, k), (k, n), (M, n)))
    return sum(median_seconds(fn, device) for fn in (lambda: x @ w, lambda: dy @ w.T, lambda: x.T @ dy))


def profile_epoch(run_epoch: Callable[[], None], device: torch.device, rows: int, label: str) -> None:
    """One more epoch under torch.profiler; prints the ops/kernels with the most self time on the device."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        run_epoch()
        sync(device)
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    say(f"[{label}] ours: profile of one epoch, by {key}")
    say(prof.key_averages().table(sort_by=key, row_limit=rows))
    if cuda:
        say(f"[{label}] ours: device time by kernel kind: " + kernel_shares(prof.key_averages()))


KERNEL_KINDS = (  # first match wins; names as cuBLAS, PyTorch and Inductor give their kernels
    ("matmul", ("gemm", "xmma", "cutlass", "nvjet", "cublas")),
    ("attention", ("flash", "fmha", "attention")),
    ("optimizer + clipping", ("adam", "multi_tensor", "foreach")),
    ("inductor (fused pointwise/norms)", ("triton_",)),
)


def kernel_kind(name: str) -> str:
    low = name.lower()
    return next((kind for kind, keys in KERNEL_KINDS if any(k in low for k in keys)), "other")


def kernel_shares(events) -> str:
    """'matmul 61.2% (80.1 ms), ...': each kind's share of all device kernel time in ``events``."""
    from torch.autograd import DeviceType

    totals: dict[str, float] = {}
    for e in events:
        if e.device_type == DeviceType.CUDA:
            kind = kernel_kind(e.key)
            totals[kind] = totals.get(kind, 0.0) + e.self_device_time_total
    whole = sum(totals.values()) or 1.0
    parts = sorted(totals.items(), key=lambda kv: -kv[1])
    return ", ".join(f"{k} {100 * v / whole:.1f}% ({v / 1e3:.1f} ms)" for k, v in parts) + f"; total {whole / 1e3:.1f} ms"


def precision_of(rt: Runtime) -> str:
    return "bf16 autocast" if rt.amp_dtype == torch.bfloat16 else "fp32"


def attention_label(args: argparse.Namespace, impl: str) -> str:
    if impl != "sdpa":
        return impl
    return "sdpa" if args.sdpa == "auto" else f"sdpa {args.sdpa}"


def measure_ours(args: argparse.Namespace, name: str, s: Setting, batch: int, rt: Runtime, compile_model: bool,
                 ls: LeverSet = LeverSet(), sweep: str | None = None) -> Result:
    run = build_ours(args, name, s, batch, args.steps, rt, compile_model, ls)
    say(f"[{s.label}] ours: {run.levers.header()}")
    t, compiled = time_run(run, args, rt)
    if args.profile and sweep in (None, "none"):
        profile_epoch(lambda: run.epoch_fn(run.step_model, 1 + args.epochs), rt.device, args.profile, s.label)
    impl = actual_attn(run.model)
    result = make_result(s, "ours", batch, args.steps * batch * args.epochs, t, flops_per_image(run.model),
                         precision=precision_of(rt), attention=attention_label(args, impl), compiled=compiled,
                         ckpt=args.grad_ckpt, levers=lever_label(run.levers, impl), sweep=sweep)
    if (args.ceiling if args.ceiling is not None else rt.device.type == "cuda") and sweep in (None, "none"):
        shape = (block_gemms(run.model), run.model.num_blocks, run.model.num_tokens)
        run = None  # free the step's memory for the operands
        free_memory(rt.device)
        result.gemm_s_per_image = gemm_seconds_per_image(*shape, batch, rt.amp_dtype or torch.float32, rt.device)
    return result


def run_ours(args: argparse.Namespace, name: str, s: Setting, batch: int | None, rt: Runtime, compile_model: bool,
             ls: LeverSet = LeverSet(), sweep: str | None = None) -> Result:
    """Our row. An automatic batch is the eager search's result, doubled when compiled (Inductor's
    step keeps fewer activations: on an H100 at 224/16, 128 fits eagerly and 256 compiled); one that
    runs out of memory once compiled is halved (said aloud)."""
    auto = batch is None
    batch = search_batch(args, name, s, rt, ls) if auto else batch
    if auto and compile_model and rt.device.type == "cuda" and 2 * batch <= args.max_batch:
        batch *= 2
        say(f"[{s.label}] ours: compiled, so trying twice the eager batch: {batch}")
    while True:
        say(f"[{s.label}] ours{f' [{sweep}]' if sweep else ''}: batch {batch}, compile {'on' if compile_model else 'off'}, "
            f"grad ckpt {'on' if args.grad_ckpt else 'off'}")
        try:
            return measure_ours(args, name, s, batch, rt, compile_model, ls, sweep)
        except Exception as e:  # noqa: BLE001
            if not is_oom(e):
                raise
        free_memory(rt.device)
        if not auto or batch <= 16:
            raise OutOfMemory(f"[{s.label}] ours: batch {batch} runs out of device memory; pass a smaller --batch or --grad-ckpt")
        warn(f"[{s.label}] ours: batch {batch} ran out of memory in the timed run; retrying with {batch // 2}")
        batch //= 2


# -- levers sweep -----------------------------------------------------------------------------
def lm_class(name: str):
    """The transformers model class ``name``'s config builds, or None when it cannot be told."""
    try:
        config = transformers.AutoConfig.from_pretrained(name)
        return transformers.AutoModel._model_mapping[type(config)]
    except Exception:  # noqa: BLE001 - unknown: the build itself then decides (and warns)
        return None


def attn_unavailable(name: str, impl: str) -> str | None:
    """Why ``model.attn_implementation=impl`` would fall back to sdpa here, or None: this machine (the
    library's own check, ``attention_kernel``) or the family (transformers' support flags)."""
    if impl in ("sdpa", "eager"):
        return None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        chosen = attention_kernel(impl)
    if chosen != impl:
        return str(caught[-1].message) if caught else f"{impl} cannot run here"
    cls = lm_class(name)
    flag = "_supports_flex_attn" if impl == "flex_attention" else "_supports_flash_attn"
    if cls is not None and not getattr(cls, flag, True):
        return f"transformers has no {impl} for {cls.__name__}"
    return None


def fp8_layer_count(model: nn.Module, min_width: int) -> int:
    """Linear layers that ``runtime.fp8`` would convert (the library's ``fp8_filter``)."""
    keep = lev.fp8_filter(min_width)
    return sum(keep(m, n) for n, m in model.named_modules())


def lever_unavailable(lever: str, args: argparse.Namespace, name: str, s: Setting, rt: Runtime,
                      compile_model: bool) -> str | None:
    """Why ``lever`` cannot run alone here (the library's fallback note), or None."""
    ls = LeverSet.only(lever)
    if lever.startswith("attn="):
        return attn_unavailable(name, ls.attn)
    if lever == "fp8" and lev.fp8_unavailable(rt.device):
        return lev.fp8_unavailable(rt.device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Lm2vWarning)  # the reason goes into the one line instead
        lv = resolve(ls, args, rt, compile_model or lever == "reduce-overhead")
    if lv.notes:
        return lv.notes[0]
    if lever == "reduce-overhead" and not compile_model:
        return "needs --compile (our model is not compiled in this run)"
    if lever == "fp8":
        n = fp8_layer_count(build_model(name, s, "sdpa", False, args.dropout, torch.device("cpu")), args.fp8_min_width)
        if not n:
            return f"no nn.Linear layer of this model is {args.fp8_min_width} wide or more (--fp8-min-width)"
    return None


def sweep_plan(args: argparse.Namespace, name: str, s: Setting, rt: Runtime, compile_model: bool) -> list[str]:
    """The levers of --sweep-levers that can run here; the others in one printed line, with the reason."""
    levers, missing = [], []
    for lever in parse_sweep(args.sweep_levers):
        why = lever_unavailable(lever, args, name, s, rt, compile_model)
        (missing.append(f"{lever} ({why})") if why else levers.append(lever))
    say("levers sweep: not available here: " + "; ".join(missing) if missing
        else "levers sweep: every lever asked for is available here")
    return levers


def run_sweep(args: argparse.Namespace, name: str, s: Setting, batch: int, rt: Runtime, compile_model: bool,
              levers: list[str]) -> list[Result]:
    """Our row once per lever alone, at the no-lever row's batch; one that runs out of memory says OOM."""
    out = []
    for lever in levers:
        try:
            out.append(run_ours(args, name, s, batch, rt, compile_model, LeverSet.only(lever), sweep=lever))
        except OutOfMemory as e:
            warn(str(e))
            out.append(oom_result(s, "ours", batch, 0.0, precision=precision_of(rt), attention="-", compiled="-",
                                  ckpt=args.grad_ckpt, levers=lever, sweep=lever))
        free_memory(rt.device)
    return out


# -- peer: timm's ViT through the same step ----------------------------------------------------
def import_timm():
    """timm, or None (the caller says the row is skipped)."""
    try:
        import timm
    except ImportError:
        return None
    return timm


def peer_kwargs(args: argparse.Namespace) -> dict:
    """--layers/--width/--heads shrink the peer as they shrink ours (its default, ViT-L, is ours' shape);
    --dropout sets its dropout rates as it sets ours (unset: timm's own, none for ViT-L)."""
    keys = dict(layers="depth", width="embed_dim", heads="num_heads")
    kw = {keys[k]: getattr(args, k) for k in keys if getattr(args, k) is not None}
    if args.dropout is not None:
        kw.update(drop_rate=args.dropout, proj_drop_rate=args.dropout, attn_drop_rate=args.dropout)
    return kw


def build_peer(timm, args: argparse.Namespace, s: Setting, device: torch.device) -> nn.Module | None:
    """timm's model at the setting's image size, or None (said aloud) when its patch is another size."""
    model = timm.create_model(args.peer_model, pretrained=False, num_classes=NUM_CLASSES, img_size=s.image_size,
                              **peer_kwargs(args))
    patch = model.patch_embed.patch_size[0]
    if patch != s.patch_size:
        say(f"[{s.label}] peer row skipped: {args.peer_model} has {patch} px patches, this setting {s.patch_size} px")
        return None
    if args.grad_ckpt:
        model.set_grad_checkpointing(True)
    return model.to(device)


def peer_flops_per_image(model: nn.Module) -> float:
    """6 * P * T + 6 * P_head + 12 * L * T^2 * C for a timm ViT: T = patches + prefix (class) tokens; P
    everything but the head and the additive position/class/register tokens."""
    T = model.patch_embed.num_patches + getattr(model, "num_prefix_tokens", 0)
    head = {id(p) for p in model.get_classifier().parameters()}
    skip = {"pos_embed", "cls_token", "reg_token", "dist_token"}
    P = sum(p.numel() for n, p in model.named_parameters() if id(p) not in head and n not in skip)
    P_head = sum(p.numel() for p in model.get_classifier().parameters())
    return 6.0 * P * T + 6.0 * P_head + 12.0 * len(model.blocks) * T * T * model.embed_dim


def run_peer(timm, args: argparse.Namespace, s: Setting, batch: int, rt: Runtime, compile_peer: bool) -> Result | None:
    """The peer row at our row's batch; None when its patch size is not the setting's."""
    model = build_peer(timm, args, s, rt.device)
    if model is None:
        return None
    fused = getattr(getattr(model.blocks[0], "attn", None), "fused_attn", False)
    labels = dict(precision=precision_of(rt), attention="sdpa (timm)" if fused else "eager (timm)",
                  ckpt=args.grad_ckpt, levers="none")
    say(f"[{s.label}] peer {args.peer_model}: batch {batch}, compile {'on' if compile_peer else 'off'}")
    flops = peer_flops_per_image(model)
    try:
        run = make_run(model, s, batch, args.steps, rt, lev.Levers(compile=compile_peer), args)
        t, compiled = time_run(run, args, rt)
    except Exception as e:  # noqa: BLE001
        if not is_oom(e):
            raise
        return oom_result(s, "peer", batch, flops, compiled="-", **labels)
    return make_result(s, "peer", batch, args.steps * batch * args.epochs, t, flops, compiled=compiled, **labels)


def peer_timm(args: argparse.Namespace):
    """timm when the peer row runs; a missing timm is one printed line, and the rest runs."""
    if args.peer is False:
        return None
    timm = import_timm()
    if timm is None:
        say("peer row skipped: timm is not installed")
    return timm


# -- Qwen3-8B: partial training of the first 2 blocks -------------------------------------------
QWEN3_RUN = "qwen3 first:2"


def qwen3_batch(args: argparse.Namespace, model: VisionBackbone, s: Setting, batch: int | None, rt: Runtime,
                lv: lev.Levers) -> int | None:
    """``batch``, or the largest power of two from 8 whose eager step fits (CPU: 32); None if none fits."""
    if batch is not None:
        return batch
    if rt.device.type != "cuda":
        return 32
    eager = replace(lv, compile=False, compile_optimizer=False)

    def probe(b: int) -> bool:
        ok = step_fits(lambda: make_run(model, s, b, 1, rt, eager, args), rt)
        say(f"[{s.label}] qwen3: batch {b} {'fits' if ok else 'does not fit'}")
        return ok

    return largest_fitting(probe, 8, args.max_batch)


def qwen3_row(args: argparse.Namespace, model: VisionBackbone, s: Setting, batch: int | None, rt: Runtime,
              lv: lev.Levers, ckpt: bool) -> Result:
    """One Qwen3 row; running out of device memory gives a row that says OOM."""
    set_checkpointing(model, ckpt)
    lv = replace(lv)  # this row's copy: a compile failure falls back (and is labelled) in this row only
    flops = flops_per_image(model)

    def labels(compiled: str) -> dict:
        impl = actual_attn(model)
        return dict(precision="bf16 autocast, frozen weights bf16", attention=attention_label(args, impl),
                    compiled=compiled, ckpt=ckpt, levers=lever_label(lv, impl))

    b = qwen3_batch(args, model, s, batch, rt, lv)
    if b is None:
        say(f"[{s.label}] qwen3: not even batch 8 fits (grad ckpt {'on' if ckpt else 'off'})")
        return oom_result(s, QWEN3_RUN, 8, flops, **labels("-"))
    say(f"[{s.label}] qwen3: batch {b}, grad ckpt {'on' if ckpt else 'off'}, {lv.header()}")
    try:
        t, compiled = time_run(make_run(model, s, b, args.steps, rt, lv, args), args, rt)
    except Exception as e:  # noqa: BLE001
        if not is_oom(e):
            raise
        say(f"[{s.label}] qwen3: batch {b} ran out of device memory")
        model.zero_grad(set_to_none=True)
        free_memory(rt.device)
        return oom_result(s, QWEN3_RUN, b, flops, **labels("-"))
    return make_result(s, QWEN3_RUN, b, args.steps * b * args.epochs, t, flops, **labels(compiled))


def run_qwen3(args: argparse.Namespace, name: str, rt: Runtime, compile_model: bool) -> list[Result]:
    """Per size: the bf16 model with and without gradient checkpointing, then (``--fp8``, where the
    library says float8 can run here) a fresh model converted to float8, the same two ways."""
    variants = [False]
    if args.fp8:
        why = lev.fp8_unavailable(rt.device)
        (say(f"qwen3: fp8 rows skipped: {why}") if why else variants.append(True))
    sizes = parse_sizes(args.sizes)
    results = []
    for s, batch in zip(sizes, parse_batches(args.batch, len(sizes))):
        for fp8 in variants:
            t0 = time.perf_counter()
            model = build_partial(name, s, args.attn, rt.device)
            lv = resolve(replace(LeverSet.from_args(args), fp8=fp8), args, rt, compile_model)
            lev.apply_model_levers(model, lv, args.fp8_min_width)
            say(f"[{s.label}] qwen3: built in {time.perf_counter() - t0:.1f} s")
            for ckpt in (False, True):
                results.append(qwen3_row(args, model, s, batch, rt, lv, ckpt))
            model = None
            free_memory(rt.device)
    return results


# -- baseline: the authors' style -------------------------------------------------------------
class HostBatches(torch.utils.data.Dataset):
    """Item i = one augmented float batch made on the host from uint8 CPU images (a DataLoader job)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch: int, image_size: int):
        self.images, self.labels, self.batch, self.image_size = images, labels, batch, image_size
        self.dcfg = DataConfig()

    def __len__(self) -> int:
        return len(self.images) // self.batch

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(int(torch.randint(2**62, ())))
        idx = torch.randint(len(self.images), (self.batch,), generator=g)
        return train_transform(self.images[idx], self.image_size, g, self.dcfg), self.labels[idx]


def baseline_workers(args: argparse.Namespace, device: torch.device, batch_bytes: int) -> int:
    """Up to 8 workers on GPU, as many as /dev/shm holds with 2 batches prefetched each (0 on CPU)."""
    if args.baseline_workers is not None:
        return args.baseline_workers
    if device.type != "cuda":
        return 0
    want = min(8, os.cpu_count() or 1)
    try:
        shm = shutil.disk_usage("/dev/shm").free
    except OSError:
        return want
    fit = int(0.5 * shm // (3 * batch_bytes))
    if fit < want:
        warn(f"/dev/shm has {shm / GiB:.1f} GiB free: baseline DataLoader uses {fit} workers instead of {want}")
    return min(want, fit)


def baseline_loader(args: argparse.Namespace, s: Setting, device: torch.device) -> torch.utils.data.DataLoader:
    images, labels = random_images(args.steps * args.baseline_batch, seed=0)
    workers = baseline_workers(args, device, args.baseline_batch * 3 * s.image_size**2 * 4)
    say(f"[{s.label}] baseline: host augmentation in {workers} DataLoader worker(s)")
    return torch.utils.data.DataLoader(HostBatches(images, labels, args.baseline_batch, s.image_size), batch_size=None,
                                       shuffle=True, num_workers=workers, pin_memory=device.type == "cuda",
                                       persistent_workers=workers > 0)


def baseline_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                   loader: torch.utils.data.DataLoader, device: torch.device, amp: bool, epoch: int, steps: int) -> None:
    """MAE/DeiT-style epoch: per-step host batch copy, fp16 autocast, scaler, clip, loss.item()."""
    model.train()
    for it, (x, y) in enumerate(loader):
        set_lr(optimizer, lr_at(epoch * steps + it, 10 * steps, steps, 1e-3 * x.shape[0] / 256, 1e-6))
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
        loss_value = loss.item()  # their per-step logging and finiteness check: a host sync
        if loss_value != loss_value:
            raise RuntimeError("baseline loss is NaN")
        optimizer.zero_grad()
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(optimizer)
        scaler.update()


def run_baseline(args: argparse.Namespace, name: str, s: Setting, device: torch.device) -> Result:
    amp = device.type == "cuda"  # CPU: fp32 (a CPU check only proves the path runs)
    precision = "fp16 + GradScaler" if amp else "fp32"
    say(f"[{s.label}] baseline: batch {args.baseline_batch}, eager attention, {precision}, AdamW (not fused)")
    set_tf32(device, False)  # PyTorch's defaults, as their scripts leave them
    model = build_model(name, s, "eager", False, args.dropout, device)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3, weight_decay=0.05)
    scaler = torch.amp.GradScaler(device.type, enabled=amp)
    loader = baseline_loader(args, s, device)
    try:
        def run_epoch(epoch: int) -> None:
            baseline_epoch(model, optimizer, scaler, loader, device, amp, epoch, args.steps)

        run_epoch(0)
        t = time_epochs(run_epoch, 1, args.epochs, device)
    except Exception as e:  # noqa: BLE001
        if is_oom(e):
            raise Lm2vError(f"[{s.label}] baseline batch {args.baseline_batch} runs out of device memory; "
                            "pass a smaller --baseline-batch") from None
        raise
    finally:
        set_tf32(device, True)
    n = args.steps * args.baseline_batch * args.epochs
    return make_result(s, "baseline", args.baseline_batch, n, t, flops_per_image(model),
                       precision=precision, attention="eager", compiled="off", ckpt=False)


def set_tf32(device: torch.device, on: bool) -> None:
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = on
        torch.backends.cudnn.allow_tf32 = on


# -- report -----------------------------------------------------------------------------------
COLUMNS = ["setting", "tokens", "run", "batch", "precision", "attention", "compile", "levers", "grad ckpt",
           "img/s", "MFU %", "peak GiB", "MiB/img", "x baseline"]


def table_row(r: Result, peak_tflops: float, base: Result | None) -> list[str]:
    if r.img_per_s is None:
        speed = ["OOM", "-", "-", "-", "-"]
    else:
        gib = f"{r.peak_bytes / GiB:.2f}" if r.peak_bytes is not None else "n/a"
        mib = f"{r.act_bytes_per_image / MiB:.1f}" if r.act_bytes_per_image is not None else "n/a"
        ratio = "1.00" if r is base else f"{r.img_per_s / base.img_per_s:.2f}" if base is not None else "-"
        speed = [f"{r.img_per_s:.1f}", f"{100 * r.mfu(peak_tflops):.3g}", gib, mib, ratio]
    return [r.setting.label, str(r.setting.tokens), r.run, str(r.batch), r.precision, r.attention, r.compiled,
            r.levers, "on" if r.ckpt else "off", *speed]


def format_table(results: list[Result], peak_tflops: float) -> str:
    rows = []
    for r in results:
        base = next((b for b in results if b.setting == r.setting and b.run == "baseline"), None)
        rows.append(dict(zip(COLUMNS, table_row(r, peak_tflops, base))))  # cells pre-formatted per column
    return markdown_table(rows, COLUMNS)


SWEEP_COLUMNS = ["setting", "lever", "levers ran", "batch", "img/s", "x no levers"]


def format_sweep(results: list[Result]) -> str:
    """The levers sweep: each lever's img/s and its ratio to our no-lever row of the same setting."""
    rows = []
    for r in results:
        if r.sweep is None:
            continue
        base = next(b for b in results if b.setting == r.setting and b.sweep == "none")
        speed = ["OOM", "-"] if r.img_per_s is None else [f"{r.img_per_s:.1f}", f"{r.img_per_s / base.img_per_s:.2f}"]
        rows.append(dict(zip(SWEEP_COLUMNS, [r.setting.label, r.sweep, r.levers, str(r.batch), *speed])))
    return "levers sweep (ours, one lever at a time):\n\n" + markdown_table(rows, SWEEP_COLUMNS)


def flops_notes(results: list[Result], args: argparse.Namespace) -> list[str]:
    """One GFLOP/img line per (setting, kind of row)."""
    notes, seen = [], set()
    for r in results:
        if r.run == "baseline" or (r.setting, r.run) in seen:
            continue
        seen.add((r.setting, r.run))
        who = "" if r.run == "ours" else f" {args.peer_model}" if r.run == "peer" else f" {r.run}"
        notes.append(f"{r.setting.label}{who}: {r.flops_per_image / 1e9:.4g} GFLOP/img")
    return notes


def footnotes(results: list[Result], args: argparse.Namespace, device: torch.device) -> str:
    notes = [f"MFU against {args.peak_tflops:g} TFLOP/s" + (" (meaningless on CPU)" if device.type != "cuda" else "")
             + "; MiB/img = (peak - resident weights/optimizer state/data after warm-up) / batch: activations, "
             "gradients and workspace per image; timed: "
             f"{args.epochs} epoch(s) x {args.steps} steps after 1 warm-up epoch."]
    if any(r.run in ("baseline", "ours") for r in results):
        notes.append("FLOPs/img = 6*P*T + 6*P_head + 12*L*T^2*C (fwd+bwd; P = parameters applied to every token, "
                     "embedding tables excluded).")
    if any(r.run == QWEN3_RUN for r in results):
        notes.append("qwen3 first:2: FLOPs/img = 6*P_trained*T + 4*P_frozen*T + 6*P_head + 12*L*T^2*A (every frozen block "
                     "lies after a trained one, so its input gradient is computed; A = heads x head dim).")
    if any(r.run == "peer" for r in results):
        notes.append("peer: FLOPs/img = 6*P*T + 6*P_head + 12*L*T^2*C with T = patches + class token.")
    notes += flops_notes(results, args)
    for r in results:
        if r.gemm_s_per_image:
            ceiling = 1.0 / r.gemm_s_per_image
            notes.append(f"{r.setting.label}: the blocks' matrix products alone (batch {r.batch}, random operands) run at "
                         f"{ceiling:.1f} img/s = {100 * ceiling * r.flops_per_image / (args.peak_tflops * 1e12):.3g}% MFU; "
                         f"they are {100 * r.img_per_s * r.gemm_s_per_image:.3g}% of our step's time")
    ours: dict[str, Result] = {}
    for r in results:
        if r.run == "ours":
            ours.setdefault(r.setting.label, r)  # the first: the no-lever row of a sweep
    if "224/16" in ours and "32/4" in ours:
        speed = ours["32/4"].img_per_s / ours["224/16"].img_per_s
        notes.append(f"native resolution: 32/4 runs {speed:.2f}x as many img/s as 224/16 (target >= 3x)")
    return "\n".join(notes)


def describe(args: argparse.Namespace, name: str, device: torch.device) -> str:
    if args.qwen3_8b:
        shape = (f"Qwen3 shape {args.layers or QWEN3_8B['layers']} blocks, width {args.width or QWEN3_8B['width']}, "
                 f"{args.heads or QWEN3_8B['heads']} heads, random weights, first 2 blocks trained, frozen weights bf16")
    elif args.hf_config:
        shape = f"--hf-config {args.hf_config}"
    else:
        shape = (f"GPT-2 shape {args.layers or GPT2_MEDIUM['layers']} blocks, width {args.width or GPT2_MEDIUM['width']}, "
                 f"{args.heads or GPT2_MEDIUM['heads']} heads, random weights")
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    return f"device: {where} | torch {torch.__version__} | transformers {transformers.__version__} | model: {shape}"


# -- main -------------------------------------------------------------------------------------
def run_benchmark(args: argparse.Namespace, name: str) -> list[Result]:
    if args.threads:
        torch.set_num_threads(args.threads)
    amp = args.amp or ("bf16" if args.device.startswith("cuda") or args.qwen3_8b else "off")
    rt = setup_runtime(RuntimeConfig(device=args.device, amp=amp, sdpa=args.sdpa))
    compile_model = rt.device.type == "cuda" if args.compile is None else args.compile
    check_compile_mode(args, compile_model)
    say(describe(args, name, rt.device))
    if args.qwen3_8b:
        say("--qwen3-8b: the Qwen3 rows only (no baseline, ours or peer rows)")
        return run_qwen3(args, name, rt, compile_model)
    sizes = parse_sizes(args.sizes)
    timm = peer_timm(args)
    levers = sweep_plan(args, name, sizes[0], rt, compile_model) if args.levers_sweep else []
    results = []
    for s, batch in zip(sizes, parse_batches(args.batch, len(sizes))):
        if args.baseline:
            results.append(run_baseline(args, name, s, rt.device))
            free_memory(rt.device)
        ls = LeverSet() if args.levers_sweep else LeverSet.from_args(args)
        ours = run_ours(args, name, s, batch, rt, compile_model, ls, sweep="none" if args.levers_sweep else None)
        results.append(ours)
        free_memory(rt.device)
        results += run_sweep(args, name, s, ours.batch, rt, compile_model, levers)
        if timm is not None:
            compile_peer = compile_model if args.peer_compile is None else args.peer_compile
            peer = run_peer(timm, args, s, ours.batch, rt, compile_peer)
            results += [peer] if peer is not None else []
            free_memory(rt.device)
        torch._dynamo.reset()  # each size compiles afresh, with nothing cached from the last
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        check_args(args)
        parse_sizes(args.sizes)
        with tempfile.TemporaryDirectory() as folder, warnings_once():
            write = write_qwen3_config if args.qwen3_8b else write_gpt2_config
            name = args.hf_config or write(args, folder)
            results = run_benchmark(args, name)
    except Lm2vError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    text = format_table(results, args.peak_tflops)
    if any(r.sweep for r in results):
        text += "\n\n" + format_sweep(results)
    say("\n" + text + "\n\n" + footnotes(results, args, torch.device(args.device)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
