"""Backbones that travel: a self-describing folder or hub repository, through huggingface_hub's
``PyTorchModelHubMixin`` (``save_pretrained`` / ``from_pretrained`` / ``push_to_hub``), and the
timm-style ``create_model``.

An exported folder holds ``config.json`` (the marker ``"library": "lm2vision"``, our
:class:`ModelConfig` fields, the Hugging Face model's whole config under ``lm_config`` so it builds
offline: a language model's, or a native image model's (ViT, ResNet, ...), the preprocessing, the
class names when known, and where the weights came from), ``model.safetensors`` (every tensor of the
backbone; nothing is ever unpickled) and the model card ``README.md`` the mixin writes. The folder
(or its hub repo id) is a valid ``model.name`` and ``--init`` everywhere:
:func:`~lm2vision.models.factory.create_backbone` recognises the marker, and the architecture table
says from the config's ``model_type`` whether it is a language or an image backbone.

:class:`HubBackbone` (a language backbone) and :class:`HubImageBackbone` (an image model) share
everything through :class:`HubMixin`; timm backbones have no export (their weights belong to timm's
own hub format).
"""
from __future__ import annotations

import dataclasses
import json
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch
import torch.nn as nn
from huggingface_hub import PyTorchModelHubMixin, snapshot_download
from safetensors.torch import save_model

from ..data.config import DataConfig
from ..errors import Lm2vError
from .backbone import ModelConfig, VisionBackbone
from .factory import DEFAULT_MODEL, EXPORT_LIBRARY, create_backbone, export_model_section, exported_config
from .image import ImageBackbone

EXPORT_FORMAT = 1  # bumped when config.json changes incompatibly
FILES = ("config.json", "model.safetensors", "README.md")
INTERPOLATION = "bicubic"  # lm2vision.data.transforms.eval_transform: resize, then normalise [0, 1] pixels


def lm2vision_version() -> str:
    try:
        return version("lm2vision")
    except PackageNotFoundError:  # a source tree on sys.path, not installed
        return "unknown"


def preprocessing(image_size: int, mean=None, std=None) -> dict:
    """How images must be prepared for the model: [0, 1] pixels resized to ``image_size`` (bicubic),
    then ``(x - mean) / std`` per channel; the mean and std default to :class:`DataConfig`'s."""
    d = DataConfig()
    return {"image_size": image_size, "interpolation": INTERPOLATION, "mean": list(mean or d.mean),
            "std": list(std or d.std)}


def model_card(title: str, pipeline: str) -> str:
    """The model card template (the mixin fills ``card_data``) of one kind of backbone."""
    return f"""---
{{{{ card_data }}}}
---

# {title} (lm2vision)

{pipeline} `config.json`
holds the architecture (the Hugging Face model's own config included), the preprocessing and the run
it came from; `model.safetensors` every weight.

```python
import lm2vision
model = lm2vision.create_model("THIS_REPO_OR_FOLDER", num_classes=None)  # num_classes=K: a new K-way head
logits = model(images)  # see model.pretrained_cfg for input_size, mean and std
```

Command line: `lm2v probe model.name=THIS_REPO_OR_FOLDER --out RUN` or `lm2v probe --init FOLDER --out RUN`.
"""


class HubMixin(PyTorchModelHubMixin, library_name=EXPORT_LIBRARY, pipeline_tag="image-classification",
               tags=["lm2vision", "vision"]):
    """What every exportable backbone shares: ``save_pretrained(DIR)``, ``push_to_hub(ID)`` and
    ``from_pretrained(DIR or ID, num_classes=None, pretrained=True)`` (which gives the export's own
    kind, language or image, whichever class it is called on).

    ``pretrained_cfg`` (timm's name) describes the weights: input_size, mean, std, interpolation,
    num_classes and classes of the exported head (a new head from ``num_classes`` does not change it),
    ``first_conv`` (the stem's first convolution) and ``classifier``. ``export_source`` says where the
    weights came from (run, stage, test_acc), or is empty. A subclass names its backbone class
    (``architecture``) and the attribute holding the Hugging Face model (``hf_attr``).
    """

    architecture: type[nn.Module]
    hf_attr: str
    pretrained_cfg: dict
    export_source: dict

    def first_conv(self) -> str:
        """Name of the stem's first convolution (timm's ``pretrained_cfg["first_conv"]``)."""
        raise NotImplementedError

    def own_preprocessing(self) -> dict:
        """:func:`preprocessing` of the model itself, for a backbone that is not an export."""
        raise NotImplementedError

    def set_export_info(self, prep: dict, num_classes: int, classes: list[str] | None, source: dict) -> None:
        """Attach what an export records beside the weights: ``prep`` (:func:`preprocessing`), the
        exported head's ``num_classes`` and class names, and ``source``."""
        self.pretrained_cfg = pretrained_cfg(prep, num_classes, classes, self.first_conv())
        self.export_source = dict(source)

    def export_model_fields(self) -> dict:
        """The ``model`` section of ``config.json``: our :class:`ModelConfig` fields."""
        return dataclasses.asdict(self.cfg)

    def export_config(self) -> dict:
        """The ``config.json`` written beside the weights."""
        pre, source = getattr(self, "pretrained_cfg", None), getattr(self, "export_source", {})
        prep = self.own_preprocessing()
        if pre is not None:
            prep = preprocessing(self.cfg.image_size, pre["mean"], pre["std"])
        head_matches = pre is not None and pre.get("num_classes") == self.cfg.num_classes
        hf_config = getattr(self, self.hf_attr).config.to_dict()
        hf_config.pop("_name_or_path", None)  # a local path of the machine that built it
        return {"library": EXPORT_LIBRARY, "lm2vision_version": lm2vision_version(), "format": EXPORT_FORMAT,
                "architecture": self.architecture.__name__, "model": self.export_model_fields(),
                "lm_config": hf_config, "num_classes": self.cfg.num_classes,
                "classes": pre.get("classes") if head_matches else None, "preprocessing": prep, "source": source}

    def _save_pretrained(self, save_directory: Path) -> None:
        """The mixin's hook: ``model.safetensors`` (shared tensors stored once) and our ``config.json``
        (the mixin then leaves it as written and adds the model card)."""
        save_model(self, str(Path(save_directory) / "model.safetensors"))
        text = json.dumps(self.export_config(), indent=2, sort_keys=True)
        (Path(save_directory) / "config.json").write_text(text + "\n")

    @classmethod
    def _from_pretrained(cls, *, model_id: str, revision: str | None, cache_dir: str | Path | None,
                         force_download: bool, local_files_only: bool, token: str | bool | None,
                         config: dict | None = None, num_classes: int | None = None, pretrained: bool = True,
                         map_location: str = "cpu", **model_kwargs) -> "HubMixin":
        """The mixin's hook: fetch the folder (a hub repo: config.json and model.safetensors only, never
        a pickle), then build it as :func:`create_model` does; in eval mode, as the mixin returns models."""
        folder = model_id
        if not Path(model_id).is_dir():
            folder = snapshot_download(model_id, revision=revision, cache_dir=cache_dir, token=token,
                                       force_download=force_download, local_files_only=local_files_only,
                                       allow_patterns=list(FILES))
        if exported_config(folder) is None:
            raise Lm2vError(f"{model_id} is not an lm2vision export (no \"library\": \"{EXPORT_LIBRARY}\" in its config.json)")
        # the mixin also passes config.json keys named like an __init__ parameter (ImageBackbone's "model")
        model_kwargs = {k: v for k, v in model_kwargs.items() if not (config and config.get(k) is v)}
        model = create_model(folder, pretrained=pretrained, num_classes=num_classes, **model_kwargs)
        return model.to(map_location).eval()


class HubImageBackbone(ImageBackbone, HubMixin, model_card_template=model_card(
        "An image model as a vision backbone",
        "Images -> a Hugging Face image model (ViT, ResNet, ...) -> its pooling -> linear head.")):
    """A native Hugging Face image model (:class:`ImageBackbone`) that saves and loads as
    :class:`HubBackbone` does. Loaded from an export, its ``prep`` is the preprocessing it was
    trained with (the export's ``preprocessing``, source ``"lm2vision export"``)."""

    architecture, hf_attr = ImageBackbone, "model"

    def first_conv(self) -> str:
        """The first convolution under the stem prefixes of the family's row of the table."""
        for name, module in self.model.named_modules():
            if isinstance(module, nn.Conv2d) and self._in_stem(f"{name}."):
                return f"model.{name}"
        return f"model.{self.spec.stem[0].rstrip('.')}"

    def own_preprocessing(self) -> dict:
        own = (self.prep.mean, self.prep.std) if self.cfg.preprocessing == "auto" else ()
        return preprocessing(self.cfg.image_size, *own)

    def export_model_fields(self) -> dict:
        """``preprocessing`` is ``auto``: the export's preprocessing is the model's own."""
        return {**super().export_model_fields(), "preprocessing": "auto"}


class HubBackbone(VisionBackbone, HubMixin, model_card_template=model_card(
        "A language model's blocks as a vision backbone",
        "Image patches -> the transformer blocks of a language model -> pooling -> linear head.")):
    """A language :class:`VisionBackbone` (the whole timm-style interface) that saves to a
    self-describing folder and loads from one or from a hub repo (see :class:`HubMixin`):
    ``HubBackbone.from_pretrained(DIR or ID, num_classes=None, pretrained=True)``."""

    architecture, hf_attr = VisionBackbone, "lm"
    image_cls = HubImageBackbone  # what create_backbone builds for an image model asked for as a HubBackbone

    def first_conv(self) -> str:
        return "patch_embed.proj"

    def own_preprocessing(self) -> dict:
        return preprocessing(self.cfg.image_size)


def _model_config(name: str, pretrained: bool, num_classes: int | None, model_kwargs: dict) -> ModelConfig:
    known = {f.name for f in dataclasses.fields(ModelConfig)} - {"name", "pretrained", "num_classes"}
    unknown = sorted(set(model_kwargs) - known)
    if unknown:
        raise Lm2vError(f"create_model got unknown argument(s) {', '.join(unknown)}; "
                        f"model arguments: {', '.join(sorted(known))}")
    base = export_model_section(name) or {"name": name}
    extra = {} if num_classes is None else {"num_classes": num_classes}
    return ModelConfig(**{**base, **model_kwargs, **extra, "pretrained": pretrained})


def create_model(name_or_path: str = DEFAULT_MODEL, pretrained: bool = True, num_classes: int | None = None,
                 **model_kwargs) -> HubBackbone | HubImageBackbone:
    """A vision backbone, timm-style: ``lm2vision.create_model("gpt2", num_classes=100)``.

    ``name_or_path``: an lm2vision export (a folder written by ``lm2v export`` or its hub repo id) gives
    the exported backbone: its architecture, its weights (``pretrained=False``: the same architecture,
    fresh weights) and, with another ``num_classes``, a fresh head. Any other name (``minilm``, a
    ``tiny-*`` config, a Hugging Face language or image model folder or hub id) builds a new backbone,
    as ``create_backbone(ModelConfig(name=..., pretrained=..., num_classes=..., **kw))``. A language
    model gives a :class:`HubBackbone`, an image model of the architecture table a
    :class:`HubImageBackbone`; a timm model (``timm:NAME``) is refused (its own hub format holds it).
    ``model_kwargs`` are other :class:`ModelConfig` fields (``image_size``, ``patch_size``, ``dropout``,
    ...); on an export they may not contradict its architecture. Returned in train mode, as timm does.
    """
    cfg = _model_config(name_or_path, pretrained, num_classes, model_kwargs)
    model = create_backbone(cfg, cls=HubBackbone)
    export = exported_config(name_or_path)
    if export is None:
        model.set_export_info(model.own_preprocessing(), cfg.num_classes, None, {})
    else:
        model.set_export_info(export["preprocessing"], export["num_classes"], export.get("classes"),
                              export.get("source", {}))
    return model


def pretrained_cfg(prep: dict, num_classes: int, classes: list[str] | None, first_conv: str = "patch_embed.proj") -> dict:
    """timm's ``pretrained_cfg`` of weights with the preprocessing ``prep`` and a ``num_classes`` head."""
    S = prep["image_size"]
    return {"input_size": (3, S, S), "interpolation": prep["interpolation"], "crop_pct": 1.0,
            "mean": tuple(prep["mean"]), "std": tuple(prep["std"]), "num_classes": num_classes,
            "classes": list(classes) if classes else None, "first_conv": first_conv, "classifier": "head"}


def to_hub(model: VisionBackbone | ImageBackbone, prep: dict, classes: list[str] | None = None,
           source: dict | None = None) -> HubBackbone | HubImageBackbone:
    """``model`` (trained anywhere: a language or an image backbone) as a hub class ready to
    ``save_pretrained`` / ``push_to_hub``: the same architecture built without reading any weights,
    then every tensor of ``model`` copied strictly. ``prep``: :func:`preprocessing` of the images it
    was trained on. A timm backbone is a one-line error (see :func:`create_model`)."""
    if classes is not None and len(classes) != model.cfg.num_classes:
        raise Lm2vError(f"{len(classes)} class names for a {model.cfg.num_classes}-way head")
    hub = create_backbone(dataclasses.replace(model.cfg, pretrained=False), cls=HubBackbone)
    with torch.no_grad():
        hub.load_state_dict(model.state_dict(), strict=True)
    hub.set_export_info(prep, model.cfg.num_classes, classes, source or {})
    return hub.train(model.training)

