"""Smoke test of benchmarks/throughput.py: the whole script on CPU with the tiniest shape."""
from __future__ import annotations

import json
import math
import sys

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


# -- round 2 (issue 15): levers, the timm peer, Qwen3-8B rows, numerics -----------------------------
TINY = ["--device", "cpu", "--layers", "1", "--width", "32", "--heads", "2", "--steps", "2", "--epochs", "1",
        "--batch", "4", "--no-compile"]


def _tables(out: str) -> list[list[dict[str, str]]]:
    """Every Markdown table of the output, each as its rows (dicts by header)."""
    tables, block = [], []
    for ln in out.splitlines() + [""]:
        if ln.startswith("|"):
            block.append(ln)
        elif block:
            tables.append(_table("\n".join(block)))
            block = []
    return tables


def _cpu_fp8_reason() -> str:
    import torch

    from lm2vision.train.levers import fp8_unavailable

    return fp8_unavailable(torch.device("cpu"))


def test_levers_sweep_lists_unavailable_levers_and_ratios(capsys, one_thread):
    argv = TINY + ["--sizes", "32/8", "--no-baseline", "--no-peer", "--amp", "bf16", "--levers-sweep",
                   "--sweep-levers", "residual-bf16,reduce-overhead,fp8,attn=flex_attention"]
    assert _load().main(argv) == 0
    out = capsys.readouterr().out
    lines = [ln for ln in out.splitlines() if ln.startswith("levers sweep: not available here: ")]
    assert len(lines) == 1  # one line, every unavailable lever with its reason (the library's own words)
    assert "reduce-overhead (runtime.compile_mode=reduce-overhead captures CUDA graphs, and this run is on cpu" in lines[0]
    assert f"fp8 ({_cpu_fp8_reason()})" in lines[0]
    assert "attn=flex_attention (model.attn_implementation=flex_attention runs on CUDA GPUs" in lines[0]
    assert "residual-bf16" not in lines[0]
    table, sweep = _tables(out)
    assert [(r["run"], r["levers"]) for r in table] == [("ours", "none"), ("ours", "residual bf16")]
    assert [(r["lever"], r["levers ran"]) for r in sweep] == [("none", "none"), ("residual-bf16", "residual bf16")]
    base, lever = (float(r["img/s"]) for r in sweep)
    assert sweep[0]["x no levers"] == "1.00"
    assert float(sweep[1]["x no levers"]) == pytest.approx(lever / base, abs=0.006 + 0.1 / base)


def test_levers_sweep_refuses_levers_given_with_it(capsys):
    assert _load().main(["--device", "cpu", "--levers-sweep", "--residual-bf16"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--levers-sweep switches each lever on alone" in err[0]


def test_compile_mode_without_compile_is_an_error(capsys):
    assert _load().main(["--device", "cpu", "--no-compile", "--compile-mode", "reduce-overhead", "--sizes", "32/8"]) == 2
    assert "--compile-mode reduce-overhead needs --compile" in capsys.readouterr().err


def test_fallback_warning_printed_once_and_row_says_what_ran(capsys, one_thread):
    argv = TINY + ["--sizes", "32/16,32/8", "--no-baseline", "--no-peer", "--attn", "flash_attention_2"]
    assert _load().main(argv) == 0
    out = capsys.readouterr().out
    assert out.count("WARNING: model.attn_implementation=flash_attention_2") == 1  # two rows, one warning
    rows = _tables(out)[0]
    assert [(r["setting"], r["attention"], r["levers"]) for r in rows] == [("32/16", "sdpa", "none"), ("32/8", "sdpa", "none")]


def test_peer_row_skipped_without_timm(capsys, monkeypatch, one_thread):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm raises ImportError
    assert _load().main(TINY + ["--sizes", "32/16", "--no-baseline"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines().count("peer row skipped: timm is not installed") == 1
    assert [r["run"] for r in _tables(out)[0]] == ["ours"]


def test_peer_row_runs_at_our_batch(capsys, one_thread):
    timm = pytest.importorskip("timm")
    assert _load().main(TINY + ["--sizes", "32/16,32/8", "--no-baseline"]) == 0
    out = capsys.readouterr().out
    rows = _tables(out)[0]
    assert [(r["setting"], r["run"], r["batch"]) for r in rows] == [("32/16", "ours", "4"), ("32/16", "peer", "4"),
                                                                   ("32/8", "ours", "4")]
    assert rows[1]["attention"] in ("sdpa (timm)", "eager (timm)") and float(rows[1]["img/s"]) > 0
    assert "[32/8] peer row skipped: vit_large_patch16_224 has 16 px patches, this setting 8 px" in out
    # FLOPs: 6*P*T + 6*P_head + 12*L*T^2*C, T = 4 patches + the class token; P all but head and added tokens
    vit = timm.create_model("vit_large_patch16_224", pretrained=False, num_classes=10, img_size=32, depth=1,
                            embed_dim=32, num_heads=2)
    P = sum(p.numel() for n, p in vit.named_parameters() if not n.startswith("head.") and n not in ("pos_embed", "cls_token"))
    flops = 6 * P * 5 + 6 * 330 + 12 * 1 * 5 * 5 * 32
    assert f"32/16 vit_large_patch16_224: {flops / 1e9:.4g} GFLOP/img" in out


QWEN3_TINY = ["--device", "cpu", "--qwen3-8b", "--layers", "3", "--width", "64", "--heads", "4", "--sizes", "32/8",
              "--batch", "2", "--steps", "1", "--epochs", "1", "--no-compile"]


def test_qwen3_rows_with_and_without_checkpointing(capsys, one_thread):
    assert _load().main(QWEN3_TINY + ["--fp8"]) == 0
    out = capsys.readouterr().out
    rows = _tables(out)[0]
    assert [(r["run"], r["grad ckpt"], r["precision"]) for r in rows] == [
        ("qwen3 first:2", "off", "bf16 autocast, frozen weights bf16"), ("qwen3 first:2", "on", "bf16 autocast, frozen weights bf16")]
    assert all(float(r["img/s"]) > 0 for r in rows)
    assert f"qwen3: fp8 rows skipped: {_cpu_fp8_reason()}" in out.splitlines()
    # partial training: 6*P_trained*T + 4*P_frozen*T + 6*P_head + 12*L*T^2*A, width 64, 4 heads of 16, 1 key/value
    # head, MLP 192; trained: patch embedding, blocks 0 and 1, final norm; frozen: block 2 (its input gradient is
    # computed, since trained parameters sit before it)
    block = 2 * 64 * 64 + 2 * 64 * 16 + 2 * 16 + 3 * 64 * 192 + 2 * 64
    trained = (3 * 8 * 8 * 64 + 64) + 2 * block + 64
    flops = 6 * trained * 16 + 4 * block * 16 + 6 * (64 * 10 + 10) + 12 * 3 * 16 * 16 * 64
    assert f"32/8 qwen3 first:2: {flops / 1e9:.4g} GFLOP/img" in out


def test_qwen3_out_of_memory_is_a_row(capsys, monkeypatch, one_thread):
    import torch

    tb = _load()

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(tb, "time_run", out_of_memory)
    assert tb.main(QWEN3_TINY) == 0
    rows = _tables(capsys.readouterr().out)[0]
    assert [(r["grad ckpt"], r["img/s"], r["MFU %"]) for r in rows] == [("off", "OOM", "-"), ("on", "OOM", "-")]


def test_partial_model_trains_first_two_blocks_with_frozen_weights_in_bf16(tmp_path):
    import argparse

    import torch

    tb = _load()
    args = argparse.Namespace(layers=3, width=64, heads=4)
    model = tb.build_partial(tb.write_qwen3_config(args, str(tmp_path)), tb.Setting(32, 8), "sdpa", torch.device("cpu"))
    cfg = model.lm.config
    assert (cfg.num_key_value_heads, cfg.head_dim, cfg.intermediate_size, cfg.rms_norm_eps) == (1, 16, 192, 1e-6)
    for i, block in enumerate(model.blocks):
        assert {(p.requires_grad, p.dtype) for p in block.parameters()} == (
            {(True, torch.float32)} if i < 2 else {(False, torch.bfloat16)})
    assert all(p.requires_grad for p in model.head.parameters()) and model.patch_embed.proj.weight.requires_grad
    name = "is_activation_checkpointing" if hasattr(type(model.lm), "is_activation_checkpointing") else \
        "is_gradient_checkpointing"  # transformers >= 5.2x renamed it
    tb.set_checkpointing(model, True)
    assert getattr(model.lm, name)
    tb.set_checkpointing(model, False)
    assert not getattr(model.lm, name)


NUMERICS_TINY = ["--steps", "4", "--device", "cpu", "--layers", "1", "--width", "32", "--heads", "2", "--size", "32/8",
                 "--batch", "4"]


def _numerics(tmp_path, lever: str, *extra: str) -> tuple[int, dict | None]:
    out = tmp_path / "curves.json"
    rc = load_benchmark("numerics").main(["--lever", lever, *NUMERICS_TINY, *extra, "--out", str(out)])
    return rc, (json.loads(out.read_text()) if out.exists() else None)


def test_numerics_same_run_twice_has_gap_exactly_zero(tmp_path, capsys, one_thread):
    rc, data = _numerics(tmp_path, "none")
    assert rc == 0
    assert data["without"] == data["with"] and len(data["with"]) == 4
    assert data["max_gap"] == 0.0 and data["tail_mean_gap"] == 0.0 and data["max_gap_step"] == 1
    assert len(set(data["without"])) == 4 and all(math.isfinite(v) for v in data["without"])  # a real, moving curve
    assert "largest |loss gap|: 0 at step 1 of 4" in capsys.readouterr().out


def test_numerics_residual_bf16_changes_the_losses(tmp_path, capsys, one_thread):
    rc, data = _numerics(tmp_path, "residual_bf16", "--amp", "bf16")
    assert rc == 0
    gaps = [abs(a - b) for a, b in zip(data["without"], data["with"])]
    assert 0 < data["max_gap"] < 0.5 and math.isfinite(data["max_gap"])  # bf16 rounding of the residual: small, not 0
    assert data["max_gap"] == max(gaps) and data["max_gap_step"] == gaps.index(max(gaps)) + 1
    assert data["tail_mean_gap"] == gaps[-1]  # the last 10% of 4 steps: one step
    out = capsys.readouterr().out
    assert f"largest |loss gap|: {data['max_gap']:.6g} at step {data['max_gap_step']} of 4" in out
    assert "with:    levers: compile off, optimizer step eager, residual bf16" in out


def test_numerics_unavailable_or_unknown_lever_is_one_line_and_exit_2(tmp_path, capsys):
    rc, data = _numerics(tmp_path, "fp8")
    err = capsys.readouterr().err.strip().splitlines()
    assert (rc, data, len(err)) == (2, None, 1)
    assert err[0] == f"error: --lever fp8 cannot run here: {_cpu_fp8_reason()}"
    rc, _ = _numerics(tmp_path, "fp16")
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "unknown --lever 'fp16'" in err[0]


def test_sweep_row_out_of_memory_says_oom_and_the_rest_runs(capsys, monkeypatch, one_thread):
    import torch

    tb = _load()
    measure = tb.measure_ours

    def oom_for_residual(*args, **kwargs):
        if args[-1] == "residual-bf16":  # the sweep passes the lever last
            raise torch.OutOfMemoryError("CUDA out of memory")
        return measure(*args, **kwargs)

    monkeypatch.setattr(tb, "measure_ours", oom_for_residual)
    argv = TINY + ["--sizes", "32/8", "--no-baseline", "--no-peer", "--amp", "bf16", "--levers-sweep",
                   "--sweep-levers", "residual-bf16"]
    assert tb.main(argv) == 0
    out = capsys.readouterr().out
    sweep = _tables(out)[1]
    assert [(r["lever"], r["img/s"], r["x no levers"]) for r in sweep][1] == ("residual-bf16", "OOM", "-")
    assert "WARNING: [32/8] ours: batch 4 runs out of device memory" in out


def test_sweep_reasons_a_gpu_would_give(tmp_path, monkeypatch):
    """The decisions a GPU run makes, on the CPU: with the machine checks passing (monkeypatched), GPT-2 has no
    flex attention in transformers and no nn.Linear for fp8 (its blocks are Conv1D), while Qwen3 has both."""
    import argparse

    import torch

    tb = _load()
    monkeypatch.setattr(tb, "attention_kernel", lambda impl: impl)  # as on a GPU with the flash packages
    monkeypatch.setattr(tb.lev, "fp8_unavailable", lambda device: None)  # as with torchao on an H100
    gpt2 = tb.write_gpt2_config(argparse.Namespace(layers=1, width=32, heads=2), str(tmp_path / "gpt2"))
    qwen3 = tb.write_qwen3_config(argparse.Namespace(layers=2, width=64, heads=4), str(tmp_path / "qwen3"))
    assert tb.attn_unavailable(gpt2, "flex_attention") == "transformers has no flex_attention for GPT2Model"
    assert tb.attn_unavailable(qwen3, "flex_attention") is None and tb.attn_unavailable(gpt2, "flash_attention_2") is None
    args = tb.parse_args(["--device", "cpu", "--fp8-min-width", "16"])
    rt = tb.Runtime(device=torch.device("cpu"), amp_dtype=torch.bfloat16, rank=0, world_size=1)
    s = tb.Setting(32, 8)
    assert tb.lever_unavailable("fp8", args, gpt2, s, rt, True) == \
        "no nn.Linear layer of this model is 16 wide or more (--fp8-min-width)"
    assert tb.lever_unavailable("fp8", args, qwen3, s, rt, True) is None
    assert tb.lever_unavailable("reduce-overhead", args, gpt2, s, rt, False).startswith("runtime.compile_mode=reduce-overhead")
