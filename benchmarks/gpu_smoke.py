"""GPU-only paths in one script: run it on a GPU when one is lent (CI has none).

    python benchmarks/gpu_smoke.py                       # on CUDA: bf16 + compile + phase penalty + fused AdamW
    python benchmarks/gpu_smoke.py --device cpu --no-compile --no-nproc   # the same checks on a CPU (CI's test)

Each check prints ``PASS name: detail`` or ``FAIL name: detail``, and one JSON line per check goes to
``--out/gpu_smoke.jsonl``; the exit code is 1 if any check failed. The checks:

- ``fused_adamw``: the optimizer the trainer builds is fused AdamW on CUDA (unfused on CPU).
- ``phase_penalty_at_init``: the phase penalty of a (compiled) model at its reference weights is exactly
  lambda * |1 - target| under the run's autocast (S = 1): names resolve through ``torch.compile`` and
  the kernel is not taken in bf16.
- ``bridge_bf16_compile_phase``: a short phase-aware bridge run (adaptive lr + penalty) with the
  device's autocast and ``runtime.compile`` finishes with finite losses and S(t) logged.
- ``fp16_run``: a short run with ``runtime.amp=fp16`` finishes with a finite loss.
- ``flex_attention_matches_sdpa`` (CUDA only): flex attention on tiny-llama gives sdpa's tokens.
- ``levers_run`` (CUDA only): a short run with CUDA graphs, the compiled optimizer step and the bf16
  residual stream finishes with a finite loss.
- ``two_process_gloo``: two CPU processes under torchrun (gloo, no NCCL needed) give the weights of one
  process with the same global batch (skipped with ``--no-nproc``).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TINY = ["model.name=tiny-gpt2", "model.pretrained=false", "model.image_size=32", "model.patch_size=8",
        "model.dropout=0.0", "data.max_train_per_class=8", "data.max_test_per_class=2", "data.val_fraction=0.25",
        "optim.batch_size=20", "optim.epochs=2", "runtime.progress=false", "runtime.tensorboard=false"]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile (CPU CI)")
    p.add_argument("--no-nproc", action="store_true", help="skip the two-process gloo check")
    p.add_argument("--out", default=os.environ.get("OUT", "runs/gpu_smoke"), help="where the JSON lines go")
    return p.parse_args(argv)


def check_fused_adamw(device: torch.device) -> tuple[bool, str]:
    from lm2vision.models import ModelConfig, create_backbone
    from lm2vision.train.config import OptimConfig
    from lm2vision.train.optim import build_optimizer

    model = create_backbone(ModelConfig(name="tiny-gpt2", pretrained=False, image_size=32, patch_size=8)).to(device)
    fused = bool(build_optimizer(model, OptimConfig()).defaults.get("fused"))
    return fused == (device.type == "cuda"), f"fused={fused} on {device.type}"


def check_penalty_at_init(device: torch.device, amp: torch.dtype | None, compile_: bool) -> tuple[bool, str]:
    from lm2vision.models import ModelConfig, create_backbone
    from lm2vision.train.phase_hooks import PhaseController
    from lm2vision.train.config import PhaseConfig

    torch.manual_seed(0)
    model = create_backbone(ModelConfig(name="tiny-gpt2", pretrained=False, image_size=32, patch_size=8,
                                        dropout=0.0)).to(device)
    net = torch.compile(model) if compile_ else model
    probe = torch.randn(4, 3, 32, 32, device=device)
    ctl = PhaseController(PhaseConfig(penalty=0.1, target=0.6, every=1, probe_size=4), net, probe)
    with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
        net(probe).float().sum()  # the training step's forward runs under autocast; the penalty must not
    value = float(ctl.penalty(net))
    return abs(value - 0.04) < 1e-5, f"penalty {value:.8f}, expected 0.04 (compile={compile_}, amp={amp})"


def check_run(out: Path, extra: list[str]) -> tuple[bool, str]:
    from lm2vision.train import read_metrics, run_stage
    from lm2vision.train.recipe import stage_config

    summary = run_stage(stage_config("bridge", None, TINY + extra), out)
    records = [r for r in read_metrics(out) if "train_loss" in r]
    losses = [r["train_loss"] for r in records]
    ok = bool(records) and all(math.isfinite(x) for x in losses) and math.isfinite(summary["test_loss"])
    phase = [r["phase_S"] for r in records if "phase_S" in r]
    return ok, f"train losses {[round(x, 4) for x in losses]}" + (f", S(t) {[round(s, 4) for s in phase]}" if phase else "")


def check_flex(device: torch.device) -> tuple[bool, str]:
    """tiny-llama with flex attention gives sdpa's tokens from the same weights (fp32)."""
    from lm2vision.models import ModelConfig, create_backbone

    cfg = dict(name="tiny-llama", pretrained=False, image_size=16, patch_size=4, dropout=0.0)
    sdpa = create_backbone(ModelConfig(**cfg)).to(device).eval()
    flex = create_backbone(ModelConfig(**cfg, attn_implementation="flex_attention")).to(device).eval()
    flex.load_state_dict(sdpa.state_dict())
    x = torch.randn(2, 3, 16, 16, device=device)
    with torch.no_grad():
        gap = float((flex.forward_features(x) - sdpa.forward_features(x)).abs().max())
    impl = flex.lm.config._attn_implementation
    return impl == "flex_attention" and gap < 1e-4, f"{impl}, max |flex - sdpa| = {gap:.2e}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_two_process_gloo(tmp: Path) -> tuple[bool, str]:
    from safetensors.torch import load_file

    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    args = ["train", *TINY, "runtime.device=cpu"]
    for n in (1, 2):
        launch = ([sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={n}", f"--master-port={_free_port()}"]
                  if n > 1 else [sys.executable])
        proc = subprocess.run([*launch, "-m", "lm2vision.cli.main", *args[:1], "--out", str(tmp / f"np{n}"), *args[1:]],
                              env=env, capture_output=True, text=True, timeout=600)
        if proc.returncode:
            return False, f"{n} process(es) exited {proc.returncode}: {proc.stderr.strip().splitlines()[-1:]}"
    a, b = (load_file(str(tmp / f"np{n}" / "model.safetensors")) for n in (1, 2))
    gap = max(float((a[k] - b[k]).abs().max()) for k in a)
    return gap < 1e-4, f"largest weight difference 1 vs 2 processes: {gap:.2e}"


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_smoke: CUDA asked for but not available (use --device cpu)", file=sys.stderr)
        return 2
    amp = torch.bfloat16 if device.type == "cuda" else None
    compile_ = not args.no_compile
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runtime = [f"runtime.device={args.device}", f"runtime.compile={str(compile_).lower()}"]
    phase = ["phase.adaptive_lr=true", "phase.penalty=0.1", "phase.target=0.6", "phase.every=1", "phase.probe_size=4"]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        checks = [
            ("fused_adamw", lambda: check_fused_adamw(device)),
            ("phase_penalty_at_init", lambda: check_penalty_at_init(device, amp, compile_)),
            ("bridge_bf16_compile_phase", lambda: check_run(tmp / "phase", runtime + phase + ["runtime.amp=auto"])),
            ("fp16_run", lambda: check_run(tmp / "fp16", runtime + ["runtime.amp=fp16"])),
        ]
        if device.type == "cuda":  # the speed levers' GPU paths (issue 15); CPU runs test their fallbacks
            levers = ["runtime.compile=true", "runtime.compile_mode=reduce-overhead", "runtime.compile_optimizer=true",
                      "runtime.residual_bf16=true", "runtime.amp=bf16"]
            checks += [("flex_attention_matches_sdpa", lambda: check_flex(device)),
                       ("levers_run", lambda: check_run(tmp / "levers", [f"runtime.device={args.device}", *levers]))]
        if not args.no_nproc:
            checks.append(("two_process_gloo", lambda: check_two_process_gloo(tmp)))
        for name, fn in checks:
            t0 = time.perf_counter()
            try:
                ok, detail = fn()
            except Exception as e:  # a smoke test reports every failure, then the next check runs
                ok, detail = False, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            results.append({"check": name, "ok": ok, "detail": detail, "seconds": round(time.perf_counter() - t0, 2),
                            "device": str(device), "torch": torch.__version__})
            print(f"{'PASS' if ok else 'FAIL'} {name}: {detail}", flush=True)
    with open(out / "gpu_smoke.jsonl", "a") as f:
        for r in results:
            f.write(json.dumps(r) + "\n")
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
