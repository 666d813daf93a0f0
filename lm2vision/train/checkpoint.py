"""Checkpoints as safetensors plus a small JSON state; every file is written atomically.

``checkpoints/last.safetensors`` holds the trainable tensors and the optimizer's tensors, with the
epoch in its metadata; ``checkpoints/last.json`` (written second) holds the epoch, the optimizer's
hyper-parameters and the config. Frozen tensors are not stored: a resumed run rebuilds the model
exactly as it started (same weights file, same seeds) and loads the trainable ones on top.

Recovery. Before a new pair is written the previous one, if whole, becomes ``checkpoints/prev.*``
(hard links, so no bytes are copied), so a process killed at any point leaves at least one pair
whose two files parse and name the same epoch. :func:`load_checkpoint` takes the newest such pair
(``last``, else ``prev``). A pair left mixed by a kill (tensors of epoch 3, state of epoch 2) is
passed over silently; a file that does not parse (truncated, garbage, not safetensors) is reported
in one warning that names it and the pair used. Falling back one epoch loses only time: training
is a pure function of (config, seed, epoch), so the resumed run ends with the same files. With no
whole pair left the resume is refused in one line naming the damaged file. Nothing is unpickled.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
import torch.nn as nn
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file, save_model

from ..errors import Lm2vError, Lm2vWarning
from ..models.factory import load_backbone_weights
from ..utils.io import atomic_copy, atomic_write, atomic_write_json, fault_point

CKPT_DIR = "checkpoints"
PAIRS = ("last", "prev")  # newest first
CKPT = f"{CKPT_DIR}/last"  # the newest pair (both files agree on the epoch unless a write was cut)


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Trainable parameters, detached and contiguous, by name."""
    return {n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict | None = None) -> None:
    """Atomic ``safetensors`` save of a flat dict (tensors copied to CPU)."""
    cpu = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(cpu, tmp, metadata={k: str(v) for k, v in (metadata or {}).items()}))


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file as a dict; a missing or damaged file is a one-line :class:`Lm2vError`."""
    if not Path(path).is_file():
        raise Lm2vError(f"weights file not found: {path}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise Lm2vError(f"{path} is damaged or not a safetensors file ({e})") from None


def save_full_model(path: Path, model: nn.Module) -> None:
    """Atomic save of every tensor of ``model`` (shared tensors de-duplicated)."""
    atomic_write(path, lambda tmp: save_model(model, tmp))


def load_full_model(path: Path, model: nn.Module) -> None:
    """Load weights saved by :func:`save_full_model`; any missing or extra tensor is an error, and
    so is a damaged file (:func:`lm2vision.models.factory.load_backbone_weights`)."""
    if not Path(path).is_file():
        raise Lm2vError(f"weights file not found: {path}")
    load_backbone_weights(model, Path(path), str(path))


def _flatten_optimizer(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = optimizer.state_dict()
    tensors = {f"{i}.{k}": v for i, st in sd["state"].items() for k, v in st.items() if torch.is_tensor(v)}
    groups = [{k: v.item() if torch.is_tensor(v) else v for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, {"param_groups": groups}  # a tensor lr (compiled optimizer step) saved as its value


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for key, v in tensors.items():
        i, _, name = key.partition(".")
        state.setdefault(int(i), {})[name] = v
    return {"state": state, "param_groups": meta["param_groups"]}


# -- the pairs on disk ----------------------------------------------------------------------------


def pair_paths(run: Path, pair: str) -> tuple[Path, Path]:
    """``(tensors, state)`` files of the pair ``last`` or ``prev``."""
    base = Path(run) / CKPT_DIR / pair
    return base.with_suffix(".safetensors"), base.with_suffix(".json")


def has_checkpoint(run: str | Path) -> bool:
    """Whether ``run`` holds a checkpoint state to resume from (``last.json`` or ``prev.json``)."""
    return any(pair_paths(Path(run), p)[1].is_file() for p in PAIRS)


def _state_epoch(path: Path) -> dict:
    """The JSON state of a pair; raises ValueError (damaged) if it does not parse or has no epoch."""
    try:
        state = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"not JSON: {e}") from None
    if not isinstance(state, dict) or not isinstance(state.get("epoch"), int):
        raise ValueError("no epoch in it")
    return state


def _tensor_epoch(path: Path) -> int:
    """The epoch in a pair's safetensors header; raises ValueError (damaged) if it does not parse."""
    try:
        with safe_open(str(path), "pt") as f:
            return int((f.metadata() or {})["epoch"])
    except (SafetensorError, OSError) as e:
        raise ValueError(f"not safetensors: {e}") from None
    except (KeyError, ValueError):
        raise ValueError("no epoch in its metadata") from None


def _read_pair(run: Path, pair: str) -> tuple[dict | None, str, list[str]]:
    """``(state, why not, damaged files)``: the pair's JSON state when both files parse and agree."""
    paths, found, damaged, absent = pair_paths(run, pair), [], [], []
    for path, read in zip(paths, (_tensor_epoch, _state_epoch)):
        if not path.is_file():
            absent.append(f"{CKPT_DIR}/{path.name} is missing")
            continue
        try:
            found.append(read(path))
        except ValueError as e:
            damaged.append(f"{CKPT_DIR}/{path.name} is damaged ({e})")
    if len(found) < 2:
        return None, "damaged" if damaged else "missing" if not found else absent[0], damaged
    epoch, state = found
    if epoch != state["epoch"]:
        return None, f"cut mid-write (tensors of epoch {epoch}, state of epoch {state['epoch']})", damaged
    return state, "", damaged


def _whole(run: Path, pair: str) -> bool:
    return _read_pair(run, pair)[0] is not None


def save_checkpoint(run: Path, model: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Write the resumable state after an epoch; ``state`` must hold ``epoch`` (JSON-able). The
    previous pair, if whole, is kept as ``prev.*`` first (see the module docstring)."""
    opt_tensors, opt_meta = _flatten_optimizer(optimizer)
    tensors = {f"model.{k}": v for k, v in trainable_state(model).items()}
    tensors.update({f"optim.{k}": v for k, v in opt_tensors.items()})
    last, prev = pair_paths(run, "last"), pair_paths(run, "prev")
    if _whole(run, "last"):  # else prev.* is the pair this run resumed from: keep it
        for src, dst in zip(last, prev):
            atomic_copy(src, dst)
    fault_point("ckpt_rotated")
    save_tensors(last[0], tensors, {"epoch": state["epoch"]})
    fault_point("ckpt_between_files")
    atomic_write_json(last[1], {**state, "optimizer": opt_meta})


def load_checkpoint(run: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Restore trainable weights and optimizer state from the newest whole pair; returns its JSON
    state, with ``"source"`` naming the pair (``checkpoints/last.*`` or ``checkpoints/prev.*``)."""
    run, damaged, why = Path(run), [], {}
    for pair in PAIRS:
        state, why[pair], bad = _read_pair(run, pair)
        damaged += bad
        if state is None:
            continue
        tensors_path = pair_paths(run, pair)[0]
        try:
            tensors = load_file(str(tensors_path))
        except (SafetensorError, OSError) as e:
            damaged.append(f"{CKPT_DIR}/{tensors_path.name} is damaged (not safetensors: {e})")
            why[pair] = "damaged"
            continue
        source = f"{CKPT_DIR}/{pair}.*"
        if damaged:
            warnings.warn(f"{run}: {'; '.join(damaged)}; resuming from {source} (epoch {state['epoch']})", Lm2vWarning)
        _restore(run, source, model, optimizer, tensors, state.pop("optimizer", None))
        return {**state, "source": source}
    if damaged:
        raise Lm2vError(f"{run}: {'; '.join(damaged)}; no whole previous checkpoint to resume from "
                        f"({CKPT_DIR}/prev.*: {why['prev']}); start the run again with --overwrite")
    raise Lm2vError(f"no complete checkpoint in {run} (last.*: {why['last']}; prev.*: {why['prev']}); "
                    "start the run again with --overwrite")


def _restore(run: Path, source: str, model: nn.Module, optimizer: torch.optim.Optimizer,
             tensors: dict[str, torch.Tensor], opt_meta: dict | None) -> None:
    weights = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
    params = dict(model.named_parameters())
    expected = {n for n, p in params.items() if p.requires_grad}
    if set(weights) != expected:
        raise Lm2vError(f"checkpoint in {run} trains other parameters than this config selects")
    if opt_meta is None:
        raise Lm2vError(f"{run}/{source} has no optimizer state")
    with torch.no_grad():
        for name, value in weights.items():
            if params[name].shape != value.shape:
                raise Lm2vError(f"{run}/{source}: tensor {name} has shape {tuple(value.shape)}, the model's is "
                                f"{tuple(params[name].shape)}")
            params[name].copy_(value)
    # load_state_dict moves each tensor to its parameter's device (and keeps "step" where it belongs)
    opt = {k[6:]: v for k, v in tensors.items() if k.startswith("optim.")}
    try:
        optimizer.load_state_dict(_unflatten_optimizer(opt, opt_meta))
    except (ValueError, KeyError, TypeError) as e:
        raise Lm2vError(f"{run}/{source}: the optimizer state does not fit this run ({e})") from None
