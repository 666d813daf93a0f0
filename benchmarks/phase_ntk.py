"""Time and memory of the three empirical-NTK methods (lm2vision.phase.ntk) per model size and N.

Each configuration runs in a forked child so that its peak memory is its own: CUDA peak allocated
memory on a GPU, peak resident-set growth on CPU (after a 2-sample warm-up call, which is not
timed). The error column is the relative Frobenius
distance to the exact (jacobian or vjp) kernel of the same run, when one was computed.

Examples::

    python benchmarks/phase_ntk.py                                   # CPU, small MLPs and tiny-gpt2
    python benchmarks/phase_ntk.py --models minilm --samples 576 --methods projection --device cuda \\
        --image-size 224 --patch-size 16                             # 22M-parameter target (< 1 min)
    python benchmarks/phase_ntk.py --models gpt2-medium-shape --samples 64 --methods projection \\
        --device cuda --image-size 224 --patch-size 16 --memory-budget 2e10
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lm2vision.phase.ntk import NTKConfig, empirical_ntk  # noqa: E402


def build(name: str, image_size: int, patch_size: int, out_dim: int):
    """(network (B, ...) -> (B, O), example input maker, parameter names) for a model name."""
    if name.startswith("mlp"):  # mlp<width>: 3 hidden layers on 64-dim inputs
        w = int(name[3:])
        net = nn.Sequential(nn.Linear(64, w), nn.Tanh(), nn.Linear(w, w), nn.Tanh(), nn.Linear(w, out_dim))
        return net, (lambda n: torch.randn(n, 64)), None
    from lm2vision.models import ModelConfig, create_backbone
    from lm2vision.phase.encoders import VisionEmbedder

    source, pretrained = name, name == "minilm" or Path(name).is_dir()  # a local model folder: its weights
    if name == "gpt2-medium-shape":  # GPT-2 medium's shape, random weights, no download
        from transformers import GPT2Config

        source = tempfile.mkdtemp()
        GPT2Config(n_embd=1024, n_layer=24, n_head=16, n_positions=1024).save_pretrained(source)
    cfg = ModelConfig(name=source, pretrained=pretrained, image_size=image_size, patch_size=patch_size)
    emb = VisionEmbedder(create_backbone(cfg), out_dim=out_dim).eval()
    return emb, (lambda n: torch.randn(n, 3, image_size, image_size)), emb.ntk_names()


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB


def _child(args, model: str, n: int, method: str, queue) -> None:
    torch.manual_seed(0)
    device = torch.device(args.device)
    net, make_x, names = build(model, args.image_size, args.patch_size, args.out_dim)
    net = net.to(device)
    x = make_x(n).to(device)
    n_params = sum(p.numel() for k, p in net.named_parameters() if names is None or k in set(names))
    cfg = NTKConfig(method=method, proj_dim=args.proj_dim, memory_budget=args.memory_budget, chunk=args.chunk)
    empirical_ntk(net, x[:2], cfg=cfg, names=names)  # warm-up: first torch.func calls trace and allocate
    base = _rss_mb()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    theta = empirical_ntk(net, x, cfg=cfg, names=names)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    mem = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else _rss_mb() - base
    queue.put((n_params, seconds, mem, theta.double().cpu().numpy()))  # numpy: no shared-memory handle


def run_one(args, model: str, n: int, method: str):
    ctx = mp.get_context("fork" if args.device == "cpu" else "spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(args, model, n, method, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result[:3] + (torch.from_numpy(result[3]),)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["mlp64", "mlp256", "tiny-gpt2"],
                   help="mlp<width>, tiny-gpt2 / tiny-bert / ..., minilm, a local model folder, gpt2-medium-shape")
    p.add_argument("--samples", nargs="+", type=int, default=[8, 32])
    p.add_argument("--methods", nargs="+", default=["jacobian", "vjp", "projection"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--out-dim", type=int, default=8)
    p.add_argument("--proj-dim", type=int, default=4096)
    p.add_argument("--memory-budget", type=float, default=2e9)
    p.add_argument("--chunk", type=int, default=0)
    p.add_argument("--image-size", type=int, default=16)
    p.add_argument("--patch-size", type=int, default=4)
    args = p.parse_args(argv)
    mem_unit = "MiB (CUDA peak)" if args.device != "cpu" else "MiB (peak RSS growth)"
    print(f"device={args.device} out_dim={args.out_dim} proj_dim={args.proj_dim} torch={torch.__version__}")
    print(f"{'model':>18} {'params':>10} {'N':>5} {'method':>10} {'seconds':>9} {mem_unit:>22} {'rel.err':>8}")
    for model in args.models:
        for n in args.samples:
            exact = None
            for method in args.methods:
                n_params, seconds, mem, theta = run_one(args, model, n, method)
                if method in ("jacobian", "vjp") and exact is None:
                    exact = theta
                err = float((theta - exact).norm() / exact.norm()) if exact is not None else float("nan")
                print(f"{model:>18} {n_params:>10,d} {n:>5} {method:>10} {seconds:>9.3f} {mem:>22.1f} {err:>8.1e}",
                      flush=True)


if __name__ == "__main__":
    main()
