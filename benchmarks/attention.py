#!/usr/bin/env python
"""Forward + backward time of PyTorch's SDPA backends on one attention shape, one device.

The training step spends far more of its time in attention than attention's share of the FLOPs
(short sequences: 196 tokens at 224/16), and PyTorch picks the backend by a fixed priority, not by
speed. This script times each backend (``torch.nn.attention.sdpa_kernel``) on the shape of a
training step so that ``runtime.sdpa`` can be set from a measurement.

q, k and v are strided views of one (B, T, 3, H, D) tensor, as a fused QKV projection gives them.
Time: median of ``--reps`` runs (CUDA events; perf_counter on CPU) after 3 warm-ups.
TFLOP/s counts the whole T x T matrix: 3 * 4 * B * H * T^2 * D per forward + backward (the
convention of ``throughput.py``), also when causal masking lets a kernel skip half of it.

Example (GPU): python benchmarks/attention.py --batch 256 --heads 16 --tokens 196 --head-dim 64 --causal --dropout 0.1
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from lm2vision.utils.timing import median_seconds  # noqa: E402

BACKENDS = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
            "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=196)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--causal", action="store_true")
    ap.add_argument("--dropout", type=float, default=0.0)
    ap.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default=None, help="default: bf16 on CUDA, fp32 on CPU")
    ap.add_argument("--backends", default=",".join(BACKENDS), help=f"comma list of {', '.join(BACKENDS)}")
    ap.add_argument("--reps", type=int, default=10)
    return ap.parse_args(argv)


def make_qkv(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """q, k, v (B, H, T, D) as strided views of one leaf (B, T, 3, H, D) that needs a gradient."""
    g = torch.Generator(device=device).manual_seed(0)
    qkv = torch.randn(args.batch, args.tokens, 3, args.heads, args.head_dim, device=device, dtype=dtype, generator=g)
    qkv.requires_grad_(True)
    return qkv, *(qkv[:, :, i].transpose(1, 2) for i in range(3))


def time_backend(args: argparse.Namespace, name: str, device: torch.device, dtype: torch.dtype) -> float | None:
    """Seconds per forward + backward with only ``name`` allowed; None if it cannot run this case."""
    qkv, q, k, v = make_qkv(args, device, dtype)
    grad = torch.randn(args.batch, args.heads, args.tokens, args.head_dim, device=device, dtype=dtype)

    def fwd_bwd() -> None:
        with sdpa_kernel(BACKENDS[name]):
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=args.dropout, is_causal=args.causal)
        out.backward(grad)
        qkv.grad = None

    try:
        return median_seconds(fwd_bwd, device, args.reps)
    except RuntimeError as e:  # "No available kernel" and kernel-specific refusals
        print(f"{name}: cannot run this case ({str(e).strip().splitlines()[0][:160]})", file=sys.stderr)
        return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    names = [n.strip() for n in args.backends.split(",")]
    unknown = [n for n in names if n not in BACKENDS]
    if unknown:
        print(f"error: unknown backend(s) {unknown}; choose from {list(BACKENDS)}", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    dtype_name = args.dtype or ("bf16" if device.type == "cuda" else "fp32")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype_name]
    flops = 3 * 4 * args.batch * args.heads * args.tokens**2 * args.head_dim
    print(f"shape B={args.batch} H={args.heads} T={args.tokens} D={args.head_dim} causal={args.causal} "
          f"dropout={args.dropout} {dtype_name} on {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}, "
          f"torch {torch.__version__}")
    print("| backend | fwd+bwd ms | TFLOP/s (full T x T) |\n|---|---|---|")
    times = {}
    for name in names:
        t = time_backend(args, name, device, dtype)
        if t is not None:
            times[name] = t
        print(f"| {name} | {t * 1e3:.3f} | {flops / t / 1e12:.1f} |" if t else f"| {name} | n/a | n/a |")
    if not times:
        print("error: no backend can run this case", file=sys.stderr)
        return 2
    print(f"fastest: {min(times, key=times.get)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
