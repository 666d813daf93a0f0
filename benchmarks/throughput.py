#!/usr/bin/env python
"""Training throughput of lm2vision against the method authors' style, in one process on one device.

For each image/patch setting (``--sizes``, default 224/16 and 32/4) it times two training steps on
the same model shape (GPT-2 medium by default: 24 blocks, width 1024, 16 heads, random weights):

baseline  the authors' style: Hugging Face eager attention, fp16 autocast + torch.amp.GradScaler,
          batch 64, torch.optim.AdamW with its defaults (not fused), a ``loss.item()`` every step
          (their logging), images augmented on the host per batch from uint8 CPU tensors by
          DataLoader workers (pinned, copied to the device every step).
ours      the library's real step, ``lm2vision.train.loop.train_one_epoch``: uint8 images moved to
          the device once, augmentation on the device, SDPA attention, bf16 autocast, fused AdamW
          (``build_optimizer``), no host sync inside an epoch, optional torch.compile and gradient
          checkpointing, batch as large as fits (powers of two, OOM caught).

Both use the same recipe otherwise: random-resized-crop (scale 0.2-1, bicubic) + flip from 32 px
stored images, label smoothing 0.1, gradient clipping 1.0, all parameters trained (stage 1).
Every run: one warm-up epoch (compilation, autotuning, DataLoader start), then ``--epochs`` timed
epochs of ``--steps`` steps with the device synchronised around them.

    img/s = timed images / timed seconds
    FLOPs/img = 6 * P * T + 6 * P_head + 12 * L * T^2 * C   (forward + backward)
        P: parameters applied to every token (patch embedding, blocks, norms; no embedding tables)
        T: tokens per image, L: blocks, C: width; the attention term counts the full T x T matrix
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
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from lm2vision.data import DataConfig, train_transform  # noqa: E402
from lm2vision.errors import Lm2vError  # noqa: E402
from lm2vision.models import ModelConfig, TrainableSpec, VisionBackbone, apply_trainable, create_backbone  # noqa: E402
from lm2vision.train.config import OptimConfig, RuntimeConfig, sdpa_backends  # noqa: E402
from lm2vision.train.distributed import Runtime, setup_runtime  # noqa: E402
from lm2vision.train.loop import DeviceSet, Schedule, train_one_epoch  # noqa: E402
from lm2vision.train.optim import build_optimizer, lr_at, set_lr  # noqa: E402
from lm2vision.utils.tables import markdown_table  # noqa: E402
from lm2vision.utils.timing import median_seconds  # noqa: E402

GPT2_MEDIUM = dict(layers=24, width=1024, heads=16)
STORE_SIZE = 32  # stored images are CIFAR-sized; the augmentation resizes them to the model's input
NUM_CLASSES = 10
GiB, MiB = 2**30, 2**20


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
    """One timed row of the table."""

    setting: Setting
    run: str  # baseline | ours
    batch: int
    precision: str
    attention: str
    compiled: str
    ckpt: bool
    img_per_s: float
    flops_per_image: float
    peak_bytes: int | None
    act_bytes_per_image: float | None
    gemm_s_per_image: float | None = None  # the blocks' matrix products alone (--ceiling)

    def mfu(self, peak_tflops: float) -> float:
        return self.img_per_s * self.flops_per_image / (peak_tflops * 1e12)


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
    ap.add_argument("--compile-mode", default="default", help="reduce-overhead adds CUDA graphs",
                    choices=["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"])
    ap.add_argument("--sdpa", default="auto",
                    help="ours: runtime.sdpa, the allowed SDPA backends (auto = PyTorch's order; see attention.py)")
    ap.add_argument("--grad-ckpt", action="store_true", help="gradient checkpointing in our model")
    ap.add_argument("--amp", choices=["bf16", "off"], default=None, help="our autocast (default: bf16 on CUDA, off on CPU)")
    ap.add_argument("--steps", type=int, default=20, help="optimizer steps per epoch")
    ap.add_argument("--epochs", type=int, default=2, help="timed epochs (after one warm-up epoch)")
    ap.add_argument("--layers", type=int, default=None, help=f"blocks (default {GPT2_MEDIUM['layers']})")
    ap.add_argument("--width", type=int, default=None, help=f"hidden size (default {GPT2_MEDIUM['width']})")
    ap.add_argument("--heads", type=int, default=None, help=f"attention heads (default {GPT2_MEDIUM['heads']})")
    ap.add_argument("--hf-config", default=None,
                    help="local Hugging Face model directory (config.json) instead of the GPT-2 shape")
    ap.add_argument("--dropout", type=float, default=None, help="dropout of both models (default: the config's own)")
    ap.add_argument("--baseline", action=argparse.BooleanOptionalAction, default=True)
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


def check_args(args: argparse.Namespace) -> None:
    shape = (args.layers, args.width, args.heads)
    if args.hf_config and any(v is not None for v in shape):
        raise Lm2vError("--hf-config fixes the shape: drop --layers/--width/--heads")
    if args.steps < 1 or args.epochs < 1:
        raise Lm2vError("--steps and --epochs must be >= 1")
    sdpa_backends(args.sdpa)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise Lm2vError("--device cuda but no CUDA device is available")


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


def build_model(name: str, s: Setting, attn: str, ckpt: bool, dropout: float | None, device: torch.device) -> VisionBackbone:
    """The stage-1 model: random weights, every block, patch embedding, positions and head trained."""
    cfg = ModelConfig(name=name, pretrained=False, image_size=s.image_size, patch_size=s.patch_size,
                      attn_implementation=attn, gradient_checkpointing=ckpt, dropout=dropout, num_classes=NUM_CLASSES)
    model = create_backbone(cfg)
    apply_trainable(model, TrainableSpec())
    return model.to(device)


def flops_per_image(model: VisionBackbone) -> float:
    """6 * P * T + 6 * P_head + 12 * L * T^2 * C (training step, see the module docstring)."""
    T, L, C = model.num_tokens, model.num_blocks, model.width
    tables = {id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
    head = {id(p) for p in model.head.parameters()}
    P = sum(p.numel() for n, p in model.named_parameters() if id(p) not in tables | head and n != "pos_embed")
    P_head = sum(p.numel() for p in model.head.parameters())
    return 6.0 * P * T + 6.0 * P_head + 12.0 * L * T * T * C


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


# -- ours: the library's training step --------------------------------------------------------
def random_images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n random uint8 CIFAR-sized images (n, 3, 32, 32) and labels (n,), on the CPU."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, STORE_SIZE, STORE_SIZE), dtype=torch.uint8, generator=g)
    return images, torch.randint(0, NUM_CLASSES, (n,), generator=g)


@dataclass
class OurRun:
    """Everything one of our runs needs: the model, the step's callable and one epoch's function."""

    model: VisionBackbone
    step_model: nn.Module
    epoch_fn: Callable[[nn.Module, int], dict]
    batch: int


def build_ours(args: argparse.Namespace, name: str, s: Setting, batch: int, steps: int, rt: Runtime,
               compile_model: bool) -> OurRun:
    model = build_model(name, s, "sdpa", args.grad_ckpt, args.dropout, rt.device)
    ocfg = OptimConfig(epochs=1 + args.epochs, batch_size=batch, warmup_epochs=1.0)
    dcfg = DataConfig()
    optimizer = build_optimizer(model, ocfg)  # fused AdamW on CUDA
    data = DeviceSet(*(t.to(rt.device) for t in random_images(steps * batch, seed=0)))  # moved once
    sched = Schedule.of(ocfg, steps)
    step_model = torch.compile(model, mode=args.compile_mode) if compile_model else model

    def epoch_fn(net: nn.Module, epoch: int) -> dict:
        return train_one_epoch(net, optimizer, data, epoch, sched, ocfg, dcfg, s.image_size, seed=0, rt=rt, progress=False)

    return OurRun(model, step_model, epoch_fn, batch)


def fits(args: argparse.Namespace, name: str, s: Setting, batch: int, rt: Runtime) -> bool:
    """Does one eager training step at ``batch`` fit in device memory?"""
    try:
        run = build_ours(args, name, s, batch, steps=1, rt=rt, compile_model=False)
        run.epoch_fn(run.model, 0)
        sync(rt.device)
        ok = True
    except Exception as e:  # noqa: BLE001 - only OOM is an answer, anything else is re-raised
        if not is_oom(e):
            raise
        ok = False
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


def search_batch(args: argparse.Namespace, name: str, s: Setting, rt: Runtime) -> int:
    """Largest power of two up to --max-batch whose eager step fits (CPU: 32, nothing to fill)."""
    if rt.device.type != "cuda":
        say(f"[{s.label}] ours: --batch auto on {rt.device.type} -> 32")
        return 32

    def probe(b: int) -> bool:
        ok = fits(args, name, s, b, rt)
        say(f"[{s.label}] ours: batch {b} {'fits' if ok else 'does not fit'}")
        return ok

    best = largest_fitting(probe, 16, args.max_batch)
    if best is None:
        raise Lm2vError(f"[{s.label}] not even batch 16 fits; try --grad-ckpt or a smaller shape")
    return best


def warm_up(run: OurRun, compile_model: bool, mode: str) -> str:
    """The warm-up epoch (compiles); a failing torch.compile is reported and the row runs eager."""
    if not compile_model:
        run.epoch_fn(run.model, 0)
        return "off"
    try:
        graph_break_counter().clear()
        run.epoch_fn(run.step_model, 0)
        report_graph_breaks()
        return "on" if mode == "default" else mode
    except Exception as e:  # noqa: BLE001 - any compiler failure: say so, then run eager
        if is_oom(e):
            raise
        warn(f"torch.compile failed ({type(e).__name__}: {str(e).strip().splitlines()[0][:200]}); this row runs EAGER")
        torch._dynamo.reset()
        run.step_model = run.model
        run.epoch_fn(run.model, 0)
        return "FAILED->eager"


def graph_break_counter():
    from torch._dynamo.utils import counters  # a private counter, but the only count of breaks there is

    return counters["graph_break"]


def report_graph_breaks() -> None:
    """Graph breaks split the compiled model and cost speed: name them."""
    breaks = graph_break_counter()
    if breaks:
        reasons = "; ".join(str(r).strip().splitlines()[0][:120] for r in list(breaks)[:3])
        warn(f"torch.compile: {sum(breaks.values())} graph break(s) in our model: {reasons}")


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
        x, w, dy = (torch.randn(*shape, device=device, dtype=dtype, generator=g) for shape in ((M, k), (k, n), (M, n)))
        for fn in (lambda: x @ w, lambda: dy @ w.T, lambda: x.T @ dy):
            total += median_seconds(fn, device)
        del x, w, dy
    return total * blocks / batch


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


def measure_ours(args: argparse.Namespace, name: str, s: Setting, batch: int, rt: Runtime, compile_model: bool) -> Result:
    run = build_ours(args, name, s, batch, args.steps, rt, compile_model)
    compiled = warm_up(run, compile_model, args.compile_mode)
    t = time_epochs(lambda e: run.epoch_fn(run.step_model, e), 1, args.epochs, rt.device)
    if args.profile:
        profile_epoch(lambda: run.epoch_fn(run.step_model, 1 + args.epochs), rt.device, args.profile, s.label)
    precision = "bf16 autocast" if rt.amp_dtype == torch.bfloat16 else "fp32"
    attention = "sdpa" if args.sdpa == "auto" else f"sdpa {args.sdpa}"
    result = make_result(s, "ours", batch, args.steps * batch * args.epochs, t, flops_per_image(run.model),
                         precision=precision, attention=attention, compiled=compiled, ckpt=args.grad_ckpt)
    if args.ceiling if args.ceiling is not None else rt.device.type == "cuda":
        shape = (block_gemms(run.model), run.model.num_blocks, run.model.num_tokens)
        run = None  # free the step's memory for the operands
        free_memory(rt.device)
        result.gemm_s_per_image = gemm_seconds_per_image(*shape, batch, rt.amp_dtype or torch.float32, rt.device)
    return result


def run_ours(args: argparse.Namespace, name: str, s: Setting, batch: int | None, rt: Runtime, compile_model: bool) -> Result:
    """Our row. An automatic batch is the eager search's result, doubled when compiled (Inductor's
    step keeps fewer activations: on an H100 at 224/16, 128 fits eagerly and 256 compiled); one that
    runs out of memory once compiled is halved (said aloud)."""
    auto = batch is None
    batch = search_batch(args, name, s, rt) if auto else batch
    if auto and compile_model and rt.device.type == "cuda" and 2 * batch <= args.max_batch:
        batch *= 2
        say(f"[{s.label}] ours: compiled, so trying twice the eager batch: {batch}")
    while True:
        say(f"[{s.label}] ours: batch {batch}, compile {'on' if compile_model else 'off'}, "
            f"grad ckpt {'on' if args.grad_ckpt else 'off'}")
        try:
            return measure_ours(args, name, s, batch, rt, compile_model)
        except Exception as e:  # noqa: BLE001
            if not is_oom(e):
                raise
        free_memory(rt.device)
        if not auto or batch <= 16:
            raise Lm2vError(f"[{s.label}] ours: batch {batch} runs out of device memory; pass a smaller --batch or --grad-ckpt")
        warn(f"[{s.label}] ours: batch {batch} ran out of memory in the timed run; retrying with {batch // 2}")
        batch //= 2


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
COLUMNS = ["setting", "tokens", "run", "batch", "precision", "attention", "compile", "grad ckpt",
           "img/s", "MFU %", "peak GiB", "MiB/img", "x baseline"]


def table_row(r: Result, peak_tflops: float, base: Result | None) -> list[str]:
    gib = f"{r.peak_bytes / GiB:.2f}" if r.peak_bytes is not None else "n/a"
    mib = f"{r.act_bytes_per_image / MiB:.1f}" if r.act_bytes_per_image is not None else "n/a"
    ratio = f"{r.img_per_s / base.img_per_s:.2f}" if base is not None and r is not base else "1.00" if r is base else "-"
    return [r.setting.label, str(r.setting.tokens), r.run, str(r.batch), r.precision, r.attention, r.compiled,
            "on" if r.ckpt else "off", f"{r.img_per_s:.1f}", f"{100 * r.mfu(peak_tflops):.3g}", gib, mib, ratio]


def format_table(results: list[Result], peak_tflops: float) -> str:
    rows = []
    for r in results:
        base = next((b for b in results if b.setting == r.setting and b.run == "baseline"), None)
        rows.append(dict(zip(COLUMNS, table_row(r, peak_tflops, base))))  # cells pre-formatted per column
    return markdown_table(rows, COLUMNS)


def footnotes(results: list[Result], args: argparse.Namespace, device: torch.device) -> str:
    notes = [f"FLOPs/img = 6*P*T + 6*P_head + 12*L*T^2*C (fwd+bwd; P = parameters applied to every token, "
             f"embedding tables excluded); MFU against {args.peak_tflops:g} TFLOP/s"
             + (" (meaningless on CPU)" if device.type != "cuda" else "") + ".",
             "MiB/img = (peak - resident weights/optimizer state/data after warm-up) / batch: activations, "
             "gradients and workspace per image; timed: "
             f"{args.epochs} epoch(s) x {args.steps} steps after 1 warm-up epoch."]
    for r in results:
        if r.run == "ours":
            notes.append(f"{r.setting.label}: {r.flops_per_image / 1e9:.4g} GFLOP/img")
        if r.gemm_s_per_image:
            ceiling = 1.0 / r.gemm_s_per_image
            notes.append(f"{r.setting.label}: the blocks' matrix products alone (batch {r.batch}, random operands) run at "
                         f"{ceiling:.1f} img/s = {100 * ceiling * r.flops_per_image / (args.peak_tflops * 1e12):.3g}% MFU; "
                         f"they are {100 * r.img_per_s * r.gemm_s_per_image:.3g}% of our step's time")
    ours = {r.setting.label: r for r in results if r.run == "ours"}
    if "224/16" in ours and "32/4" in ours:
        speed = ours["32/4"].img_per_s / ours["224/16"].img_per_s
        notes.append(f"native resolution: 32/4 runs {speed:.2f}x as many img/s as 224/16 (target >= 3x)")
    return "\n".join(notes)


def describe(args: argparse.Namespace, name: str, device: torch.device) -> str:
    shape = f"--hf-config {args.hf_config}" if args.hf_config else (
        f"GPT-2 shape {args.layers or GPT2_MEDIUM['layers']} blocks, width {args.width or GPT2_MEDIUM['width']}, "
        f"{args.heads or GPT2_MEDIUM['heads']} heads, random weights")
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    return f"device: {where} | torch {torch.__version__} | transformers {transformers.__version__} | model: {shape}"


# -- main -------------------------------------------------------------------------------------
def run_benchmark(args: argparse.Namespace, name: str) -> list[Result]:
    if args.threads:
        torch.set_num_threads(args.threads)
    amp = args.amp or ("bf16" if args.device.startswith("cuda") else "off")
    rt = setup_runtime(RuntimeConfig(device=args.device, amp=amp, sdpa=args.sdpa))
    compile_model = rt.device.type == "cuda" if args.compile is None else args.compile
    say(describe(args, name, rt.device))
    results = []
    for s, batch in zip(parse_sizes(args.sizes), parse_batches(args.batch, len(parse_sizes(args.sizes)))):
        if args.baseline:
            results.append(run_baseline(args, name, s, rt.device))
            free_memory(rt.device)
        results.append(run_ours(args, name, s, batch, rt, compile_model))
        free_memory(rt.device)
        torch._dynamo.reset()  # each size compiles afresh, with nothing cached from the last
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        check_args(args)
        parse_sizes(args.sizes)
        with tempfile.TemporaryDirectory() as folder:
            name = args.hf_config or write_gpt2_config(args, folder)
            results = run_benchmark(args, name)
    except Lm2vError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    say("\n" + format_table(results, args.peak_tflops) + "\n\n" + footnotes(results, args, torch.device(args.device)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
