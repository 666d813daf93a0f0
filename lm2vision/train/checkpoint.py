"""Checkpoints as safetensors plus a small JSON state; every file is written atomically.

``checkpoints/last.safetensors`` holds the trainable tensors and the optimizer's tensors;
``checkpoints/last.json`` (written last, so it is the commit mark) holds the epoch, the optimizer's
hyper-parameters and the config. Frozen tensors are not stored: a resumed run rebuilds the model
exactly as it started (same weights file, same seeds) and loads the trainable ones on top.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import load_file, save_file, save_model, load_model

from ..errors import Lm2vError
from ..utils.io import atomic_write, atomic_write_json

CKPT = "checkpoints/last"


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Trainable parameters, detached and contiguous, by name."""
    return {n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict | None = None) -> None:
    """Atomic ``safetensors`` save of a flat dict (tensors copied to CPU)."""
    cpu = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(cpu, tmp, metadata={k: str(v) for k, v in (metadata or {}).items()}))


def save_full_model(path: Path, model: nn.Module) -> None:
    """Atomic save of every tensor of ``model`` (shared tensors de-duplicated)."""
    atomic_write(path, lambda tmp: save_model(model, tmp))


def load_full_model(path: Path, model: nn.Module) -> None:
    """Load weights saved by :func:`save_full_model`; any missing or extra tensor is an error."""
    if not Path(path).is_file():
        raise Lm2vError(f"weights file not found: {path}")
    missing, unexpected = load_model(model, str(path), strict=False)
    if missing or unexpected:
        raise Lm2vError(f"{path} does not match the model: missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]}")


def _flatten_optimizer(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = optimizer.state_dict()
    tensors = {f"{i}.{k}": v for i, st in sd["state"].items() for k, v in st.items() if torch.is_tensor(v)}
    return tensors, {"param_groups": sd["param_groups"]}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for key, v in tensors.items():
        i, _, name = key.partition(".")
        state.setdefault(int(i), {})[name] = v
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(run: Path, model: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Write the resumable state after an epoch; ``state`` must hold ``epoch`` (JSON-able)."""
    opt_tensors, opt_meta = _flatten_optimizer(optimizer)
    tensors = {f"model.{k}": v for k, v in trainable_state(model).items()}
    tensors.update({f"optim.{k}": v for k, v in opt_tensors.items()})
    save_tensors(run / f"{CKPT}.safetensors", tensors, {"epoch": state["epoch"]})
    atomic_write_json(run / f"{CKPT}.json", {**state, "optimizer": opt_meta})


def load_checkpoint(run: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Restore trainable weights and optimizer state; returns the saved JSON state."""
    meta_path, tensor_path = run / f"{CKPT}.json", run / f"{CKPT}.safetensors"
    if not meta_path.is_file() or not tensor_path.is_file():
        raise Lm2vError(f"no complete checkpoint in {run}/checkpoints")
    state = json.loads(meta_path.read_text())
    with safe_open(str(tensor_path), "pt") as f:
        saved_epoch = int((f.metadata() or {}).get("epoch", -1))
    if saved_epoch != state["epoch"]:
        raise Lm2vError(f"checkpoint in {run} is inconsistent (tensors of epoch {saved_epoch}, state of {state['epoch']})")
    tensors = load_file(str(tensor_path))
    weights = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
    params = dict(model.named_parameters())
    expected = {n for n, p in params.items() if p.requires_grad}
    if set(weights) != expected:
        raise Lm2vError(f"checkpoint in {run} trains other parameters than this config selects")
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value)
    # load_state_dict moves each tensor to its parameter's device (and keeps "step" where it belongs)
    opt = {k[6:]: v for k, v in tensors.items() if k.startswith("optim.")}
    optimizer.load_state_dict(_unflatten_optimizer(opt, state.pop("optimizer")))
    return state
