"""Loading the models an analysis looks at: a run directory's final (and initial) weights, the run's
language model pretrained or from scratch, another lm2vision run, or a Hugging Face vision model."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import Lm2vError


@dataclass
class LoadedRun:
    """A run directory's model (final weights, trainable flags as during the run) and config."""

    path: Path
    model: nn.Module
    cfg: object  # lm2vision.train.config.RunConfig
    init: dict[str, torch.Tensor] | None  # trainable weights at the start (init.safetensors)


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file as a dict (never pickle); a missing or damaged file is one line."""
    from ..train.checkpoint import load_tensors

    return load_tensors(path)


def load_run(run: str | Path) -> LoadedRun:
    """Rebuild a run's model with its final weights (``lm2vision.train.load_run_model``).

    The parameters saved in ``init.safetensors`` are the ones the run trained; only they keep
    ``requires_grad`` (so "trainable only" analyses see what the run trained).
    """
    from ..train import load_run_model

    run = Path(run)
    model, cfg = load_run_model(run)
    init = read_tensors(run / "init.safetensors") if (run / "init.safetensors").is_file() else None
    if init is not None:
        names = dict(model.named_parameters())
        unknown = [n for n in init if n not in names]
        if unknown:
            raise Lm2vError(f"{run}/init.safetensors names tensors the model lacks, e.g. {unknown[0]!r}")
        for n, p in names.items():
            p.requires_grad_(n in init)
    model.eval()
    return LoadedRun(run, model, cfg, init)


def learnable_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """Weights that are the model's own (out, in) layout: an lm2vision backbone's named groups (the
    unused word table and switched-off position tables left out), all parameters otherwise."""
    from .weights import model_weights

    ws = model_weights(model, trainable_only=False)
    if hasattr(model, "layer_groups"):
        keep = {n for names in model.layer_groups().values() for n in names}
        ws = {n: w for n, w in ws.items() if n in keep}
    return ws


def reference_backbone(model_cfg, pretrained: bool) -> nn.Module:
    """The run's language model as a fresh backbone, pretrained or from scratch (same config)."""
    from ..models import create_backbone

    return create_backbone(dataclasses.replace(model_cfg, pretrained=pretrained)).eval()


def is_run_dir(spec: str | Path) -> bool:
    """Whether ``spec`` names an lm2v run directory (it has a ``config.yaml``)."""
    return (Path(spec) / "config.yaml").is_file()


def load_compare_model(spec: str, like=None) -> tuple[str, nn.Module]:
    """``--compare-model``: an lm2vision run directory, a language model or an image model of the
    architecture table (ViT, ResNet, ...) through ``create_backbone`` (append ``@scratch`` for a fresh
    init), or another Hugging Face pixel model (``AutoModel``).

    ``like``: a ``ModelConfig`` whose image and patch size a backbone built from a name takes (so it
    reads the same images as that run); None keeps the ``ModelConfig`` defaults.
    """
    from ..models import ARCH, IMAGE_ARCH, ModelConfig, create_backbone, load_lm_config
    from ..models.arch import timm_name

    if is_run_dir(spec):
        return f"run:{Path(spec).name}", load_run(spec).model
    name, _, flag = spec.partition("@")
    if flag not in ("", "scratch"):
        raise Lm2vError(f"--compare-model {spec!r}: the only suffix is @scratch")
    geometry = {} if like is None else {"image_size": like.image_size, "patch_size": like.patch_size}
    config = None if timm_name(name) is not None else load_lm_config(name)  # timm: a backbone, no HF config
    if config is None or config.model_type in ARCH or config.model_type in IMAGE_ARCH:
        return spec, create_backbone(ModelConfig(name=name, pretrained=flag != "scratch", **geometry)).eval()
    return spec, _hf_model(name, config, scratch=flag == "scratch")


@dataclass
class ImageModel:
    """A compare model that takes images, and how the analysis sample is preprocessed for it."""

    label: str
    model: nn.Module
    image_size: int
    data: object  # lm2vision.data.DataConfig: its normalisation


def load_image_model(spec: str, run_cfg) -> ImageModel | None:
    """``spec`` (as :func:`load_compare_model`) as a model fed with the analysed run's images, or None
    if it takes none (a Hugging Face text model, which has no patch embedding).

    A run directory sees the images as it was trained (its own image size and normalisation); an
    image model of the architecture table, its own preprocessing (``ImageBackbone.prep``); a language
    backbone built from a name, the analysed run's; another Hugging Face pixel model, its config's
    image size and the analysed run's normalisation.
    """
    from ..train.rundir import read_run_config

    label, model = load_compare_model(spec, like=run_cfg.model)
    if is_run_dir(spec):
        own = read_run_config(spec)
        return ImageModel(label, model, own.model.image_size, own.data)
    prep = getattr(model, "prep", None)
    if prep is not None:
        data = dataclasses.replace(run_cfg.data, mean=list(prep.mean), std=list(prep.std))
        return ImageModel(label, model, model.cfg.image_size, data)
    if hasattr(model, "forward_features"):
        return ImageModel(label, model, model.cfg.image_size, run_cfg.data)
    size = getattr(model.config, "image_size", None)
    if getattr(model, "main_input_name", None) == "pixel_values" and isinstance(size, int):
        return ImageModel(label, model, size, run_cfg.data)
    return None


def _hf_model(name: str, config, scratch: bool) -> nn.Module:
    """A non-language Hugging Face model (e.g. a ViT) through ``AutoModel``."""
    from transformers import AutoModel

    if scratch:
        return AutoModel.from_config(config).eval()
    try:
        return AutoModel.from_pretrained(name, dtype=torch.float32).eval()
    except (OSError, ValueError) as e:
        raise Lm2vError(f"cannot load {name!r}: {str(e).splitlines()[0]}") from None
