"""Smoke test of benchmarks/throughput.py: the whole script on CPU with the tiniest shape."""
from __future__ import annotations


import pytest

from conftest import load_benchmark

def _load():
    return load_benchmark("throughput")


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


@pytest.mark.perf  # parses torch.profiler's table layout, which changes between torch releases
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


CEILING = ["--device", "cpu", "--layers", "1", "--width", "32", "--heads", "2", "--sizes", "32/8", "--steps", "2",
           "--epochs", "1", "--batch", "4", "--no-compile", "--no-baseline", "--ceiling"]


def _ceiling_numbers(out: str) -> tuple[float, float, float, float]:
    """(img/s of the table, ceiling img/s, its MFU %, share %) from the footnote
    '...run at X img/s = Y% MFU; they are Z% of our step's time'."""
    line = next(ln for ln in out.splitlines() if "matrix products alone" in ln)
    ceiling = float(line.split(" run at ")[1].split(" img/s")[0])
    mfu = float(line.split("img/s = ")[1].split("% MFU")[0])
    share = float(line.split("they are ")[1].split("%")[0])
    return float(_table(out)[0]["img/s"]), ceiling, mfu, share


def test_ceiling_footnote_arithmetic(capsys, one_thread):
    assert _load().main(CEILING) == 0
    img_s, ceiling, mfu, share = _ceiling_numbers(capsys.readouterr().out)
    # share = our step's time per image over the matmuls' = 100 * img/s / ceiling img/s; MFU = 100 * ceiling *
    # FLOPs/img / 989 TFLOP/s (FLOPs/img from the formula in test_throughput_script_runs_on_cpu). Tolerance:
    # the printed rounding (img/s to 0.1, the percentages to 3 significant digits).
    flops = 6 * ((3 * 64 * 32 + 32) + (12 * 32 * 32 + 13 * 32) + 64) * 16 + 6 * 330 + 12 * 16 * 16 * 32
    rounding = 0.05 / img_s + 0.05 / ceiling + 5e-3
    assert share == pytest.approx(100 * img_s / ceiling, rel=rounding)
    assert mfu == pytest.approx(100 * ceiling * flops / 989e12, rel=0.05 / ceiling + 5e-3)


@pytest.mark.perf  # a timing comparison: a loaded machine can time the matmuls alone slower than the step
def test_ceiling_matmuls_take_part_of_the_step(capsys, one_thread):
    assert _load().main(CEILING) == 0
    share = _ceiling_numbers(capsys.readouterr().out)[3]
    assert 0 < share < 100  # the matmuls are part of the step, never all of it


def test_block_gemms_are_the_family_weights():
    from lm2vision.models import ModelConfig, create_backbone

    tb = _load()
    gpt2 = create_backbone(ModelConfig(name="tiny-gpt2", pretrained=False))
    C = gpt2.width
    assert tb.block_gemms(gpt2) == [(C, 3 * C), (C, C), (C, 4 * C), (4 * C, C)]  # Conv1D c_attn, c_proj, c_fc, c_proj
    bert = create_backbone(ModelConfig(name="tiny-bert", pretrained=False))
    C, F_ = bert.width, bert.lm.config.intermediate_size
    assert tb.block_gemms(bert) == [(C, C)] * 4 + [(C, F_), (F_, C)]  # q, k, v, out, intermediate, output


def test_kernel_kinds_of_known_kernel_names():
    kind = _load().kernel_kind
    assert kind("nvjet_sm90_tst_256x128_64x4_1x2_h_bz_coopA_TNT") == "matmul"
    assert kind("sm90_xmma_gemm_bf16bf16_bf16f32") == "matmul"
    assert kind("cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma") == "attention"
    assert kind("void at::native::(anonymous namespace)::multi_tensor_apply_kernel<...>") == "optimizer + clipping"
    assert kind("triton_per_fused__to_copy_add_native_dropout_native_layer_norm_3") == "inductor (fused pointwise/norms)"
    assert kind("void at::native::reduce_kernel<128, 4>") == "other"


def test_attention_script_times_each_backend(capsys, one_thread):
    att = load_benchmark("attention")
    argv = ["--device", "cpu", "--batch", "2", "--heads", "2", "--tokens", "16", "--head-dim", "8", "--causal",
            "--backends", "math,flash,cudnn", "--reps", "3"]
    assert att.main(argv) == 0
    captured = capsys.readouterr()
    rows = {ln.split("|")[1].strip(): ln.split("|")[2].strip() for ln in captured.out.splitlines()
            if ln.startswith("| ") and "backend" not in ln}
    assert float(rows["math"]) > 0 and float(rows["flash"]) > 0  # both run on CPU
    assert rows["cudnn"] == "n/a" and "cudnn: cannot run this case" in captured.err
    assert captured.out.splitlines()[-1] in ("fastest: math", "fastest: flash")
    assert att.main(["--device", "cpu", "--backends", "math,xformers"]) == 2
    assert "unknown backend(s) ['xformers']" in capsys.readouterr().err
