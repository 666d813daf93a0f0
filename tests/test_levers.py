"""Speed levers (``runtime.compile_mode``, ``compile_optimizer``, ``residual_bf16``, ``fp8``,
``model.attn_implementation``): how they are configured, what they fall back to (one warning each,
never silently) when this machine lacks a library or the GPU, and the errors of impossible settings.
Their speed is measured in benchmarks/, not here."""
from __future__ import annotations

import importlib.util
import json
import warnings

import pytest
import torch
import torch.nn as nn
import yaml

from conftest import TINY_RUN
from lm2vision.cli.main import main
from lm2vision.errors import Lm2vError, Lm2vWarning
from lm2vision.models import ModelConfig, create_backbone
from lm2vision.models.factory import attention_kernel
from lm2vision.train.checkpoint import _flatten_optimizer
from lm2vision.train.config import RuntimeConfig, check_levers
from lm2vision.train.levers import Levers, compiled_step, fp8_filter, resolve_levers, tensor_lr
from lm2vision.train.optim import set_lr

CPU = torch.device("cpu")


# -- configuration: impossible combinations are one line ---------------------------------------------
@pytest.mark.parametrize("fields,message", [
    (dict(compile_mode="reduce-overhead"), "runtime.compile_mode=reduce-overhead needs runtime.compile=true"),
    (dict(residual_bf16=True, amp="off"), "runtime.residual_bf16 needs bf16 autocast (runtime.amp=bf16 or auto), not amp=off"),
    (dict(residual_bf16=True, amp="fp16"), "runtime.residual_bf16 needs bf16 autocast (runtime.amp=bf16 or auto), not amp=fp16"),
])
def test_impossible_lever_settings_are_one_line(fields, message):
    with pytest.raises(Lm2vError, match=rf"^{message.replace('(', '[(]').replace(')', '[)]')}"):
        check_levers(RuntimeConfig(**fields))


def test_cli_rejects_them_with_exit_2_before_any_run_dir(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["bridge", "--out", str(out), *TINY_RUN, "runtime.compile_mode=max-autotune"]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert err == ["lm2v bridge: error: runtime.compile_mode=max-autotune needs runtime.compile=true"]
    assert not out.exists()
    assert main(["bridge", "--out", str(out), *TINY_RUN, "runtime.compile_mode=fast"]) == 2
    assert "runtime.compile_mode" in capsys.readouterr().err


# -- fallbacks: what this machine lacks is one warning and the safe setting ----------------------------
def test_cpu_fallbacks_each_say_why():
    cfg = RuntimeConfig(compile=True, compile_mode="reduce-overhead", residual_bf16=True, fp8=True)
    with pytest.warns(Lm2vWarning) as got:
        lv = resolve_levers(cfg, CPU, None)
    texts = [str(w.message) for w in got]
    assert texts[0] == ("runtime.compile_mode=reduce-overhead captures CUDA graphs, and this run is on cpu: "
                        "compiling in default mode")
    assert texts[1] == ("runtime.residual_bf16 needs bf16 autocast, and amp is fp32 on cpu: the residual stream "
                        "stays as amp has it")
    assert texts[2].startswith("runtime.fp8: ") and texts[2].endswith("; training in fp32 instead")
    assert len(texts) == 3 and lv.notes == texts
    assert (lv.compile, lv.compile_mode, lv.residual_bf16, lv.fp8) == (True, "default", False, False)
    assert lv.header() == "levers: compile default, optimizer step eager, residual as amp, fp8 off"


def test_fp8_reasons(monkeypatch):
    import lm2vision.train.levers as levers

    monkeypatch.setattr(levers.importlib.util, "find_spec", lambda name: None)
    assert levers.fp8_unavailable(CPU) == "torchao is not installed (pip install 'lm2vision[fp8]')"
    monkeypatch.setattr(levers.importlib.util, "find_spec", lambda name: object())
    assert levers.fp8_unavailable(CPU) == "float8 matrix products need a CUDA GPU, this run is on cpu"
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    assert levers.fp8_unavailable(torch.device("cuda")) == ("float8 needs compute capability 8.9 or more "
                                                            "(Ada, Hopper), this GPU has (8, 0)")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    assert levers.fp8_unavailable(torch.device("cuda")) is None


def test_compiled_optimizer_step_under_fp16_stays_eager():
    with pytest.warns(Lm2vWarning, match="GradScaler steps the optimizer itself"):
        lv = resolve_levers(RuntimeConfig(compile_optimizer=True), CPU, torch.float16)
    assert not lv.compile_optimizer
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # under bf16 or fp32 it is kept, without a word
        assert resolve_levers(RuntimeConfig(compile_optimizer=True), CPU, torch.bfloat16).compile_optimizer


def test_fp8_takes_only_linears_at_least_min_width_and_multiples_of_16():
    net = nn.ModuleDict({"big": nn.Linear(4096, 4096), "odd": nn.Linear(4096, 1000), "mid": nn.Linear(1024, 1024),
                         "conv": nn.Conv2d(4096, 4096, 1)})
    for width, kept in ((4096, ["big"]), (1024, ["big", "mid"]), (16, ["big", "mid"])):
        keep = fp8_filter(width)
        assert [n for n, m in net.items() if keep(m, n)] == kept


def test_fp8_conversion_swaps_exactly_the_kept_layers():
    pytest.importorskip("torchao")
    from lm2vision.train.levers import apply_model_levers

    net = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 48), nn.Linear(48, 8))
    lv = Levers(fp8=True)
    apply_model_levers(net, lv, min_width=48)
    assert lv.fp8_layers == 2 and [type(m).__name__ for m in net] == ["Float8Linear", "ReLU", "Float8Linear", "Linear"]
    lv = Levers(fp8=True)
    with pytest.warns(Lm2vWarning, match=r"no Linear layer is 4096 wide or more \(runtime.fp8_min_width\)"):
        apply_model_levers(nn.Sequential(nn.Linear(8, 8)), lv, min_width=4096)
    assert not lv.fp8


# -- the bf16 residual stream --------------------------------------------------------------------------
def _block_input_dtypes(model, residual: bool, autocast: bool) -> list[torch.dtype]:
    """The dtype each block receives (observed after the lever's own cast, which is registered first)."""
    model.set_residual_dtype(torch.bfloat16 if residual else None)
    seen = []
    hooks = [b.register_forward_pre_hook(lambda m, a, k: seen.append((a[0] if a else k["hidden_states"]).dtype),
                                         with_kwargs=True) for b in model.blocks]
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        model(torch.randn(2, 3, 16, 16))
    for h in hooks:
        h.remove()
    return seen


# without the lever, under autocast: GPT-2 adds its fp32 position table and BERT normalises (fp32 out)
# before the blocks, so their residual stream is fp32; a rotary family adds nothing to the patch
# embedding's bf16 output, so its stream is bf16 already and the lever changes nothing there
@pytest.mark.parametrize("name,without", [("tiny-gpt2", torch.float32), ("tiny-bert", torch.float32),
                                          ("tiny-llama", torch.bfloat16)])
def test_residual_bf16_makes_every_block_input_bf16_under_autocast_only(name, without):
    model = create_backbone(ModelConfig(name=name, pretrained=False, image_size=16, patch_size=4))
    assert _block_input_dtypes(model, True, True) == [torch.bfloat16, torch.bfloat16]
    assert _block_input_dtypes(model, True, False) == [torch.float32, torch.float32]  # fp32 evaluation unchanged
    assert _block_input_dtypes(model, False, True) == [without, without]


def test_residual_lever_on_a_model_without_it_falls_back():
    from lm2vision.train.levers import apply_model_levers

    lv = Levers(residual_bf16=True)
    with pytest.warns(Lm2vWarning, match="applies to language backbones; Sequential keeps"):
        apply_model_levers(nn.Sequential(nn.Linear(2, 2)), lv, 4096)
    assert not lv.residual_bf16


# -- the compiled optimizer step ----------------------------------------------------------------------
def test_compiled_step_matches_eager_adamw_and_a_new_lr_does_not_recompile():
    torch._dynamo.reset()
    torch.manual_seed(0)
    eager, comp = nn.Linear(5, 3), nn.Linear(5, 3)
    comp.load_state_dict(eager.state_dict())
    opt_e, opt_c = torch.optim.AdamW(eager.parameters(), lr=1e-2), torch.optim.AdamW(comp.parameters(), lr=1e-2)
    tensor_lr(opt_c)
    assert torch.is_tensor(opt_c.param_groups[0]["lr"])
    step = compiled_step(opt_c)
    x = torch.randn(4, 5)
    frames = []
    for i, lr in enumerate([1e-2, 5e-3, 2e-3]):
        for net, opt in ((eager, opt_e), (comp, opt_c)):
            set_lr(opt, lr)
            net(x).pow(2).sum().backward()
        opt_e.step()
        step()
        opt_e.zero_grad(), opt_c.zero_grad()
        frames.append(torch._dynamo.utils.counters["stats"]["unique_graphs"])
        for a, b in zip(eager.parameters(), comp.parameters()):
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    assert frames[-1] == frames[0]  # the lr changed twice, no new graph
    groups = _flatten_optimizer(opt_c)[1]["param_groups"]
    assert json.loads(json.dumps(groups))[0]["lr"] == pytest.approx(2e-3)  # checkpoints hold it as a number


# -- attention kernels ----------------------------------------------------------------------------------
def test_attention_kernels_fall_back_to_sdpa_with_the_reason(monkeypatch):
    if importlib.util.find_spec("flash_attn") is None:
        with pytest.warns(Lm2vWarning, match=r"^model.attn_implementation=flash_attention_2 needs the flash_attn "
                                             r"package: using sdpa$"):
            assert attention_kernel("flash_attention_2") == "sdpa"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.warns(Lm2vWarning, match=r"^model.attn_implementation=flex_attention runs on CUDA GPUs and none "
                                         r"is visible: using sdpa$"):
        assert attention_kernel("flex_attention") == "sdpa"
    assert attention_kernel("eager") == "eager" and attention_kernel("sdpa") == "sdpa"


def test_a_family_without_the_kernel_is_built_with_sdpa(monkeypatch):
    # GPT-2 has no flex attention in transformers: its own ValueError becomes one warning and sdpa
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.warns(Lm2vWarning, match=r"^model.attn_implementation=flex_attention: transformers has none for "
                                         r"this family \(GPT2Model does not support"):
        model = create_backbone(ModelConfig(name="tiny-gpt2", pretrained=False, attn_implementation="flex_attention"))
    assert model.lm.config._attn_implementation == "sdpa"


# -- a run: the header line, the fallbacks, the config as asked -------------------------------------------
def test_run_prints_levers_and_saves_what_was_asked(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["bridge", "--out", str(out), *TINY_RUN, "optim.epochs=1", "runtime.fp8=true", "runtime.compile=true",
            "runtime.compile_mode=reduce-overhead", "runtime.fp8_min_width=16"]
    with pytest.warns(Lm2vWarning) as got:
        assert main(args) == 0
    assert "levers: compile default, optimizer step eager, residual as amp, fp8 off" in capsys.readouterr().out
    said = [str(w.message) for w in got]
    assert "runtime.compile_mode=reduce-overhead captures CUDA graphs, and this run is on cpu: compiling in default mode" in said
    assert sum(s.startswith("runtime.fp8: ") for s in said) == 1
    runtime = yaml.safe_load((out / "config.yaml").read_text())["runtime"]
    assert (runtime["compile_mode"], runtime["fp8"], runtime["fp8_min_width"]) == ("reduce-overhead", True, 16)
