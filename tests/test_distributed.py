"""Two processes under torchrun (gloo, CPU) give the result of one process with the same global batch."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import TINY_RUN
from lm2vision.train import read_metrics

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _lm2v(args: list[str], nproc: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    if nproc == 1:
        cmd = [sys.executable, "-m", "lm2vision.cli.main", *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}",
               f"--master-port={_free_port()}", "-m", "lm2vision.cli.main", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("stage_args", [
    ["train"],  # DDP
    ["bridge", "labels.ratio=0.5"],
    ["bridge", "runtime.distributed=fsdp", "trainable.blocks=first:1"],  # FSDP2 with frozen blocks
])
def test_two_gloo_processes_match_one_process(tmp_path, stage_args):
    over = [o for o in TINY_RUN if not o.startswith("optim.epochs")] + ["optim.epochs=2", "optim.batch_size=16"]
    results = {}
    for nproc in (1, 2):
        out = tmp_path / f"np{nproc}"
        proc = _lm2v([stage_args[0], "--out", str(out), *over, *stage_args[1:]], nproc)
        assert proc.returncode == 0, proc.stderr[-6000:]
        assert f"{nproc} process(es)" in proc.stdout + proc.stderr
        results[nproc] = (load_file(str(out / "model.safetensors")), read_metrics(out))
    (w1, m1), (w2, m2) = results[1], results[2]
    assert w1.keys() == w2.keys()
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], atol=2e-5, rtol=1e-4, msg=k)
    init = load_file(str(tmp_path / "np1" / "init.safetensors"))
    assert all(not torch.equal(init[k], w2[k]) for k in init)  # the trained weights did move
    for a, b in zip(m1, m2):
        for key in ("train_loss", "train_acc", "val_acc", "test_acc"):
            if key in a:
                assert b[key] == pytest.approx(a[key], abs=1e-4), key


def test_runtime_sdpa_switches_pytorch_backends():
    from lm2vision.train.config import RuntimeConfig
    from lm2vision.train.distributed import setup_runtime

    names = ("cudnn", "flash", "mem_efficient", "math")
    before = {n: getattr(torch.backends.cuda, f"{n}_sdp_enabled")() for n in names}
    try:
        setup_runtime(RuntimeConfig(device="cpu", sdpa="flash,math"))
        assert {n: getattr(torch.backends.cuda, f"{n}_sdp_enabled")() for n in names} == {
            "cudnn": False, "flash": True, "mem_efficient": False, "math": True}
        setup_runtime(RuntimeConfig(device="cpu"))  # auto leaves them as they are
        assert not torch.backends.cuda.cudnn_sdp_enabled() and torch.backends.cuda.flash_sdp_enabled()
    finally:
        for n, on in before.items():
            getattr(torch.backends.cuda, f"enable_{n}_sdp")(on)


def test_teardown_leaves_a_gloo_group_and_releases_the_gil(monkeypatch):
    import torch.distributed as dist

    from lm2vision.train import distributed as D

    slept = []
    monkeypatch.setattr(D.time, "sleep", lambda s: slept.append((s, dist.is_initialized())))
    D.teardown(D.Runtime(device=torch.device("cpu"), amp_dtype=None))  # one process: nothing to leave
    assert slept == []
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    D.teardown(D.Runtime(device=torch.device("cpu"), amp_dtype=None, rank=0, world_size=2))
    assert not dist.is_initialized()
    assert slept == [(D.GLOO_DRAIN_S, False)]  # the sleep comes after the group is gone
