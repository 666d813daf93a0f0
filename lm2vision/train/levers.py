"""Speed levers of ``runtime.*`` and ``model.attn_implementation``: each resolved against what this
machine has, falling back with one warning (never silently), and described in one run-header line.

- ``runtime.compile_mode``: ``torch.compile``'s mode (``reduce-overhead`` adds CUDA graphs; off CUDA it
  falls back to ``default``);
- ``runtime.compile_optimizer``: the optimizer step compiled (PyTorch's "compiled optimizer" recipe:
  the lr lives in a tensor, so a new lr each step does not recompile);
- ``runtime.residual_bf16``: a language backbone's residual stream in bf16 (the embeddings enter the
  blocks in bf16, so every residual add stays bf16; needs bf16 autocast);
- ``runtime.fp8``: torchao's float8 training (row-wise scaling) on every ``nn.Linear`` whose in and
  out widths are at least ``runtime.fp8_min_width`` (torchao's published tables: slower than bf16 at
  width 1024, about 1.3x at 4096 x 8192); needs torchao and a GPU of compute capability 8.9 or more;
- ``model.attn_implementation`` (resolved where the model is built, :mod:`lm2vision.models.factory`):
  Hugging Face's attention registry (sdpa, eager, flex_attention, flash_attention_2,
  flash_attention_3); a kernel this machine or this family lacks falls back to sdpa.

Every default is the measured-safe one (off, ``default``, sdpa): a lever is switched on by the user
until a GPU measurement in ``benchmarks/README.md`` says it helps.
"""
from __future__ import annotations

import importlib.util
import warnings
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from ..errors import Lm2vWarning

CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")  # torch.compile modes that capture CUDA graphs
AMP_NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16", None: "fp32"}


@dataclass
class Levers:
    """What this run does, after fallbacks; ``notes`` are the fallbacks, one line each."""

    compile: bool = False
    compile_mode: str = "default"
    compile_optimizer: bool = False
    residual_bf16: bool = False
    fp8: bool = False
    fp8_layers: int = 0  # Linear layers converted
    notes: list[str] = field(default_factory=list)

    def header(self) -> str:
        """The run-header line."""
        comp = f"compile {self.compile_mode}" if self.compile else "compile off"
        fp8 = f"fp8 on {self.fp8_layers} Linear layers" if self.fp8 else "fp8 off"
        return (f"levers: {comp}, optimizer step {'compiled' if self.compile_optimizer else 'eager'}, "
                f"residual {'bf16' if self.residual_bf16 else 'as amp'}, {fp8}")


def _fallback(levers: Levers, text: str) -> None:
    levers.notes.append(text)
    warnings.warn(text, Lm2vWarning, stacklevel=3)


def resolve_levers(runtime, device: torch.device, amp_dtype: torch.dtype | None) -> Levers:
    """The levers of ``runtime`` this machine can run; each one it cannot is one warning."""
    lv = Levers(compile=runtime.compile, compile_mode=runtime.compile_mode,
                compile_optimizer=runtime.compile_optimizer, residual_bf16=runtime.residual_bf16, fp8=runtime.fp8)
    if lv.compile and lv.compile_mode in CUDA_GRAPH_MODES and device.type != "cuda":
        _fallback(lv, f"runtime.compile_mode={lv.compile_mode} captures CUDA graphs, and this run is on "
                      f"{device.type}: compiling in default mode")
        lv.compile_mode = "default"
    if lv.residual_bf16 and amp_dtype != torch.bfloat16:
        _fallback(lv, f"runtime.residual_bf16 needs bf16 autocast, and amp is {AMP_NAMES.get(amp_dtype)} on "
                      f"{device.type}: the residual stream stays as amp has it")
        lv.residual_bf16 = False
    if lv.compile_optimizer and amp_dtype == torch.float16:
        _fallback(lv, "runtime.compile_optimizer: fp16's GradScaler steps the optimizer itself (and skips "
                      "overflowing steps): the optimizer step stays eager")
        lv.compile_optimizer = False
    if lv.fp8:
        why = fp8_unavailable(device)
        if why:
            _fallback(lv, f"runtime.fp8: {why}; training in {AMP_NAMES.get(amp_dtype)} instead")
            lv.fp8 = False
    return lv


def fp8_unavailable(device: torch.device) -> str | None:
    """Why torchao float8 training cannot run here, or None."""
    if importlib.util.find_spec("torchao") is None:
        return "torchao is not installed (pip install 'lm2vision[fp8]')"
    if device.type != "cuda":
        return f"float8 matrix products need a CUDA GPU, this run is on {device.type}"
    if torch.cuda.get_device_capability(device) < (8, 9):
        return f"float8 needs compute capability 8.9 or more (Ada, Hopper), this GPU has {torch.cuda.get_device_capability(device)}"
    return None


def fp8_filter(min_width: int):
    """torchao's ``module_filter_fn``: an ``nn.Linear`` whose in and out widths are both at least
    ``min_width`` and multiples of 16 (the float8 kernels' tile)."""
    def keep(module: nn.Module, fqn: str) -> bool:
        if not isinstance(module, nn.Linear):
            return False
        dims = (module.in_features, module.out_features)
        return all(d >= min_width and d % 16 == 0 for d in dims)
    return keep


def convert_fp8(model: nn.Module, min_width: int) -> int:
    """Swap the qualifying ``nn.Linear`` layers of ``model`` for torchao's ``Float8Linear`` (row-wise
    scaling recipe) in place; returns how many were swapped."""
    from torchao.float8 import Float8LinearConfig, convert_to_float8_training

    keep = fp8_filter(min_width)
    n = sum(keep(m, name) for name, m in model.named_modules())
    if n:
        convert_to_float8_training(model, config=Float8LinearConfig.from_recipe_name("rowwise"),
                                   module_filter_fn=keep)
    return n


def apply_model_levers(model: nn.Module, lv: Levers, min_width: int) -> None:
    """The levers that change the model: fp8 layers, the bf16 residual stream (language backbones)."""
    if lv.residual_bf16:
        setter = getattr(model, "set_residual_dtype", None)
        if setter is None:
            _fallback(lv, f"runtime.residual_bf16 applies to language backbones; {type(model).__name__} keeps "
                          "its residual stream as amp has it")
            lv.residual_bf16 = False
        else:
            setter(torch.bfloat16)
    if lv.fp8:
        lv.fp8_layers = convert_fp8(model, min_width)
        if not lv.fp8_layers:
            _fallback(lv, f"runtime.fp8: no Linear layer is {min_width} wide or more (runtime.fp8_min_width): "
                          "nothing converted")
            lv.fp8 = False


def compile_forward(net: nn.Module, lv: Levers):
    """``net`` compiled as the levers say, or ``net`` itself."""
    return torch.compile(net, mode=lv.compile_mode) if lv.compile else net


def tensor_lr(optimizer: torch.optim.Optimizer) -> None:
    """Every group's lr as a 0-dim tensor on its parameters' device (the compiled optimizer recipe:
    a float lr is a constant of the compiled graph, a tensor one an input)."""
    for group in optimizer.param_groups:
        p = group["params"][0] if group["params"] else None
        group["lr"] = torch.tensor(float(group["lr"]), device=p.device if p is not None else "cpu")


def compiled_step(optimizer: torch.optim.Optimizer):
    """``optimizer.step`` compiled once (call :func:`tensor_lr` first)."""
    @torch.compile(fullgraph=False)
    def step():
        optimizer.step()
    return step
