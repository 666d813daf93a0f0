"""Smoke test of benchmarks/throughput.py: the whole script on CPU with the tiniest shape."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "throughput.py"


def _load():
    spec = importlib.util.spec_from_file_location("lm2v_throughput", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # a shared 2-core machine: spinning threads cost more than they give
    yield
    torch.set_num_threads(n)


def _table(out: str) -> list[dict[str, str]]:
    lines = [ln for ln in out.splitlines() if ln.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    return [dict(zip(header, (c.strip() for c in ln.strip("|").split("|")))) for ln in lines[2:]]


def test_throughput_script_runs_on_cpu(capsys, one_thread):
    tb = _load()
    argv = ["--device", "cpu", "--layers", "1", "--width", "32", "--heads", "2", "--sizes", "32/8",
            "--steps", "2", "--epochs", "1", "--batch", "4", "--baseline-batch", "4", "--no-compile"]
    assert tb.main(argv) == 0
    out = capsys.readouterr().out
    rows = _table(out)
    assert [(r["setting"], r["run"]) for r in rows] == [("32/8", "baseline"), ("32/8", "ours")]
    assert all(float(r["img/s"]) > 0 for r in rows)
    assert [r["attention"] for r in rows] == ["eager", "sdpa"]
    assert rows[1]["batch"] == "4" and rows[1]["tokens"] == "16"
    # FLOPs: P = patch 3*8*8*32+32, block 12*32^2+13*32, final norm 64; T = 16; head 32*10+10
    P = (3 * 64 * 32 + 32) + (12 * 32 * 32 + 13 * 32) + 64
    flops = 6 * P * 16 + 6 * 330 + 12 * 1 * 16 * 16 * 32
    assert f"32/8: {flops / 1e9:.4g} GFLOP/img" in out


def test_bad_size_is_one_line_error(capsys):
    assert _load().main(["--device", "cpu", "--sizes", "30/4"]) == 2
    assert "bad size '30/4'" in capsys.readouterr().err


def test_batch_search_takes_largest_power_of_two_that_fits():
    largest_fitting = _load().largest_fitting
    assert largest_fitting(lambda b: b <= 300, 16, 1024) == 256
    assert largest_fitting(lambda b: True, 16, 1024) == 1024
    assert largest_fitting(lambda b: False, 16, 1024) is None


def test_profile_prints_the_costliest_ops(capsys, one_thread):
    argv = ["--device", "cpu", "--layers", "1", "--width", "32", "--heads", "2", "--sizes", "32/8", "--steps", "2",
            "--epochs", "1", "--batch", "4", "--no-compile", "--no-baseline", "--profile", "8"]
    assert _load().main(argv) == 0
    out = capsys.readouterr().out
    table = out.split("profile of one epoch, by self_cpu_time_total", 1)[1].split("Self CPU time total")[0]
    rows = [ln.split() for ln in table.splitlines() if ln.strip() and not ln.startswith("-") and "Name" not in ln]
    assert len(rows) == 8  # --profile ROWS

    def us(cell: str) -> float:
        return float(cell.rstrip("mus")) * {"ms": 1e3, "us": 1.0, "s": 1e6}[cell.lstrip("0123456789.")]

    self_time = [us(r[-5]) for r in rows]  # the "Self CPU" column
    assert self_time == sorted(self_time, reverse=True) and self_time[0] > 0
    assert any(r[0] == "Optimizer.step#AdamW.step" for r in rows)  # the optimizer step is inside the epoch
