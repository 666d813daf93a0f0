#!/usr/bin/env python
"""Numerics of one speed lever: the same model, seed and data order trained twice, without and with the lever.

Both runs build the model from the same seed, see the same images in the same order with the same
crops and flips, and take ``--steps`` optimizer steps of the library's own training step
(``lm2vision.train.loop.train_epoch`` on ``ClassificationSteps``; levers from ``lm2vision.train.levers``);
the only difference is the lever. Every step's loss is recorded (on the device, read once at the end),
and the script prints the largest absolute loss gap and its step, the mean gap over the last 10% of
the steps and both final losses; ``--out FILE.json`` writes both curves.

    --lever none | residual_bf16 | fp8 | compile_optimizer | attn=NAME   (attn: sdpa against NAME)

``--lever none`` trains the same run twice: on the CPU the gap is exactly 0 (the known answer that
shows both runs see the same data); on a GPU it is the run-to-run noise floor of non-deterministic
kernels (``--deterministic`` asks PyTorch for deterministic ones), against which a lever's gap is read.
A lever this machine cannot run is one line on stderr and exit status 2.

The data are learnable: uint8 32 px images, each a per-class random template mixed with noise, with
random labels, so the loss falls and the curves are training curves, not noise around ln(10).

GPU:  python benchmarks/numerics.py --lever residual_bf16 --steps 300 --device cuda --out residual.json
CPU:  python benchmarks/numerics.py --lever none --steps 4 --device cpu --layers 1 --width 32 --heads 2 \\
          --size 32/8 --batch 4
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # throughput.py: shapes, model builders, levers

import throughput as tp  # noqa: E402

from lm2vision.data import DataConfig  # noqa: E402
from lm2vision.errors import Lm2vError, Lm2vWarning  # noqa: E402
from lm2vision.train import levers as lev  # noqa: E402
from lm2vision.train.config import OptimConfig, RuntimeConfig  # noqa: E402
from lm2vision.train.distributed import Runtime, setup_runtime  # noqa: E402
from lm2vision.train.loop import ClassificationSteps, DeviceSet, Schedule, train_epoch  # noqa: E402
from lm2vision.train.optim import build_optimizer  # noqa: E402

LEVERS = ("none", "residual_bf16", "fp8", "compile_optimizer", "attn=NAME")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lever", required=True, help="none | residual_bf16 | fp8 | compile_optimizer | attn=NAME")
    ap.add_argument("--steps", type=int, default=300, help="optimizer steps of each run")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--size", default="224/16", help="image_size/patch_size")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--amp", choices=["bf16", "off"], default=None, help="autocast (default: bf16 on CUDA, off on CPU)")
    ap.add_argument("--lr", type=float, default=3e-4, help="peak learning rate (warmup over the first 10%% of steps, then cosine)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dropout", type=float, default=0.0, help="dropout (default 0: a lever that changes the random "
                                                                "draws would otherwise change every mask)")
    ap.add_argument("--layers", type=int, default=None)
    ap.add_argument("--width", type=int, default=None)
    ap.add_argument("--heads", type=int, default=None)
    ap.add_argument("--hf-config", default=None, help="local Hugging Face model directory instead of the GPT-2 shape")
    ap.add_argument("--qwen3-8b", action="store_true",
                    help="Qwen3-8B's shape, first 2 blocks trained, frozen weights bf16 (as throughput.py --qwen3-8b)")
    ap.add_argument("--fp8-min-width", type=int, default=4096)
    ap.add_argument("--compile", action="store_true", help="torch.compile the model in both runs")
    ap.add_argument("--deterministic", action="store_true", help="torch.use_deterministic_algorithms in both runs")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=None, help="write both loss curves and the summary to this JSON file")
    return ap.parse_args(argv)


def lever_set(text: str) -> tp.LeverSet:
    """The ``--lever`` as the levers of throughput.py (one switched on, or none)."""
    if text.startswith("attn="):
        impl = text.split("=", 1)[1]
        if impl not in tp.ATTN_CHOICES or impl == "sdpa":
            raise Lm2vError(f"--lever {text}: NAME must be one of {', '.join(a for a in tp.ATTN_CHOICES if a != 'sdpa')}")
        return tp.LeverSet(attn=impl)
    fields = {"none": {}, "residual_bf16": dict(residual_bf16=True), "fp8": dict(fp8=True),
              "compile_optimizer": dict(compile_optimizer=True)}
    if text not in fields:
        raise Lm2vError(f"unknown --lever {text!r}: expected one of {', '.join(LEVERS)}")
    return tp.LeverSet(**fields[text])


def check_args(args: argparse.Namespace) -> None:
    if args.steps < 1 or args.batch < 1:
        raise Lm2vError("--steps and --batch must be >= 1")
    if args.hf_config and (args.qwen3_8b or any(v is not None for v in (args.layers, args.width, args.heads))):
        raise Lm2vError("--hf-config fixes the shape: drop --qwen3-8b and --layers/--width/--heads")
    if args.qwen3_8b and args.amp == "off":
        raise Lm2vError("--qwen3-8b trains under bf16 autocast (its frozen weights are bf16): drop --amp off")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise Lm2vError("--device cuda but no CUDA device is available")
    if len(tp.parse_sizes(args.size)) != 1:
        raise Lm2vError("--size takes one image_size/patch_size")


def options(args: argparse.Namespace) -> argparse.Namespace:
    """The fields throughput.py's helpers read (sdpa, fp8 width, device)."""
    return argparse.Namespace(device=args.device, sdpa="auto", fp8_min_width=args.fp8_min_width)


def unavailable(ls: tp.LeverSet, args: argparse.Namespace, name: str, rt: Runtime) -> str | None:
    """Why the lever cannot run here (the library's fallback note), or None; fp8's width is checked later."""
    if ls.attn != "sdpa":
        return tp.attn_unavailable(name, ls.attn)
    if ls.fp8:
        return lev.fp8_unavailable(rt.device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Lm2vWarning)  # the reason is the one line printed instead
        lv = lev.resolve_levers(ls.runtime(options(args), args.compile), rt.device, rt.amp_dtype)
    return lv.notes[0] if lv.notes else None


def learnable_images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n uint8 (3, 32, 32) images with random labels, each 60% its class's random template and 40% noise."""
    g = torch.Generator().manual_seed(seed)
    templates = torch.randint(0, 256, (tp.NUM_CLASSES, 3, tp.STORE_SIZE, tp.STORE_SIZE), generator=g).float()
    labels = torch.randint(0, tp.NUM_CLASSES, (n,), generator=g)
    noise = torch.randint(0, 256, (n, 3, tp.STORE_SIZE, tp.STORE_SIZE), generator=g).float()
    return (0.6 * templates[labels] + 0.4 * noise).round().to(torch.uint8), labels


class LossRecorder:
    """A task (see ``lm2vision.train.tasks.Task``) that is ``steps`` and keeps every micro-batch's loss
    on the device (no host sync inside the epoch)."""

    def __init__(self, steps: ClassificationSteps):
        self.steps, self.losses = steps, []

    @property
    def steps_per_epoch(self) -> int:
        return self.steps.steps_per_epoch

    def batches(self, epoch: int, accum: int):
        return self.steps.batches(epoch, accum)

    def loss(self, model, batch):
        loss, stats = self.steps.loss(model, batch)
        self.losses.append(loss.detach().float())
        return loss, stats

    def train_metrics(self, sums: list[float]) -> dict:
        return self.steps.train_metrics(sums)


def build(args: argparse.Namespace, name: str, s: tp.Setting, attn: str, device: torch.device):
    """The model of both runs, from the same seeds (``create_backbone``'s ``init_seed``)."""
    if args.qwen3_8b:
        return tp.build_partial(name, s, attn, device)
    return tp.build_model(name, s, attn, False, args.dropout, device)


def fp8_check(args: argparse.Namespace, name: str, s: tp.Setting) -> str | None:
    """Why fp8 converts nothing in this model (no Linear layer wide enough), or None."""
    if tp.fp8_layer_count(build(args, name, s, "sdpa", torch.device("cpu")), args.fp8_min_width):
        return None
    return f"no nn.Linear layer of this model is {args.fp8_min_width} wide or more (--fp8-min-width)"


def train_curve(args: argparse.Namespace, name: str, s: tp.Setting, rt: Runtime, ls: tp.LeverSet,
                data: DeviceSet) -> tuple[list[float], str]:
    """Per-step losses of one run with the levers ``ls``, and the library's levers line of the run."""
    model = build(args, name, s, ls.attn, rt.device)
    lv = lev.resolve_levers(ls.runtime(options(args), args.compile), rt.device, rt.amp_dtype)
    lev.apply_model_levers(model, lv, args.fp8_min_width)
    ocfg = OptimConfig(epochs=1, batch_size=args.batch, lr=args.lr, warmup_epochs=0.1)
    optimizer = build_optimizer(model, ocfg)
    step_fn = None
    if lv.compile_optimizer:
        lev.tensor_lr(optimizer)
        step_fn = lev.compiled_step(optimizer)
    task = LossRecorder(ClassificationSteps(data, DataConfig(), s.image_size, args.seed, args.batch,
                                            ocfg.label_smoothing, rt))
    train_epoch(task, 0, model, optimizer, Schedule.of(ocfg, args.steps), ocfg, args.seed, rt,
                forward=lev.compile_forward(model, lv), progress=False, step_fn=step_fn)
    header = f"{lv.header()}, attention {tp.actual_attn(model)}"
    return torch.stack(task.losses).cpu().tolist(), header


def compare(without: list[float], with_: list[float]) -> dict:
    """Largest |gap| and its step (1-based, the first on a tie), the mean |gap| over the last 10% of the
    steps (at least one), and both final losses."""
    gaps = [abs(a - b) for a, b in zip(without, with_)]
    worst = max(range(len(gaps)), key=lambda i: (gaps[i], -i)) if not any(math.isnan(g) for g in gaps) else \
        next(i for i, g in enumerate(gaps) if math.isnan(g))
    tail = max(1, math.ceil(len(gaps) / 10))
    return dict(max_gap=gaps[worst], max_gap_step=worst + 1, tail_steps=tail, tail_mean_gap=sum(gaps[-tail:]) / tail,
                final_without=without[-1], final_with=with_[-1])


def report(args: argparse.Namespace, s: tp.Setting, summary: dict, headers: tuple[str, str]) -> None:
    print(f"without: {headers[0]}")
    print(f"with:    {headers[1]}")
    print(f"largest |loss gap|: {summary['max_gap']:.6g} at step {summary['max_gap_step']} of {args.steps}")
    print(f"mean |loss gap| over the last {summary['tail_steps']} steps: {summary['tail_mean_gap']:.6g}")
    print(f"final loss: without {summary['final_without']:.6g}, with {summary['final_with']:.6g}")


def run(args: argparse.Namespace, name: str) -> int:
    s = tp.parse_sizes(args.size)[0]
    ls = lever_set(args.lever)
    amp = args.amp or ("bf16" if args.device.startswith("cuda") or args.qwen3_8b else "off")
    rt = setup_runtime(RuntimeConfig(device=args.device, amp=amp))
    why = unavailable(ls, args, name, rt) or (fp8_check(args, name, s) if ls.fp8 else None)
    if why:
        print(f"error: --lever {args.lever} cannot run here: {why}", file=sys.stderr)
        return 2
    if args.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    images, labels = learnable_images(args.steps * args.batch, args.seed)
    data = DeviceSet(images.to(rt.device), labels.to(rt.device))  # one epoch of --steps steps, each image once
    print(f"numerics: --lever {args.lever} | {args.steps} steps of batch {args.batch} at {s.label} | "
          f"{rt.device.type}, amp {amp} | {describe(args)}", flush=True)
    base, base_header = train_curve(args, name, s, rt, tp.LeverSet(), data)
    tp.free_memory(rt.device)
    torch._dynamo.reset()
    lever, lever_header = train_curve(args, name, s, rt, ls, data)
    summary = compare(base, lever)
    report(args, s, summary, (base_header, lever_header))
    if args.out:
        Path(args.out).write_text(json.dumps(dict(lever=args.lever, size=s.label, batch=args.batch, steps=args.steps,
                                                  device=rt.device.type, amp=amp, model=describe(args), **summary,
                                                  **{"without": base, "with": lever}), indent=1))
    return 0


def describe(args: argparse.Namespace) -> str:
    if args.hf_config:
        return f"--hf-config {args.hf_config}"
    family, shape = ("Qwen3", tp.QWEN3_8B) if args.qwen3_8b else ("GPT-2", tp.GPT2_MEDIUM)
    extra = ", first 2 blocks trained, frozen weights bf16" if args.qwen3_8b else ", everything trained"
    return (f"{family} shape {args.layers or shape['layers']} blocks, width {args.width or shape['width']}, "
            f"{args.heads or shape['heads']} heads{extra}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        check_args(args)
        lever_set(args.lever)
        if args.threads:
            torch.set_num_threads(args.threads)
        with tempfile.TemporaryDirectory() as folder, tp.warnings_once():
            write = tp.write_qwen3_config if args.qwen3_8b else tp.write_gpt2_config
            return run(args, args.hf_config or write(args, folder))
    except Lm2vError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
