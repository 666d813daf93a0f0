"""Native image models (Hugging Face transformers' ViT, DeiT, Swin, ConvNeXt, ResNet, RegNet, BiT,
EfficientNet) as backbones with the interface of :class:`~lm2vision.models.backbone.VisionBackbone`.

image (B, 3, S, S) -> the base model of ``AutoModel`` (``last_hidden_state``: tokens (B, T, C) or a
feature map (B, C, H, W)) -> the pooling its ``*ForImageClassification`` head reads (B, C) -> our
linear head (B, K). Where each family keeps its parts, how it pools and its default normalisation are
rows of :data:`~lm2vision.models.arch.IMAGE_ARCH`; nothing here branches on a family.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

import torch
import torch.nn as nn

from ..config import validate
from ..errors import Lm2vError
from .arch import TIMM_SPEC, ImageSpec, timm_name
from .backbone import ModelConfig, enable_checkpointing, fresh_head
from .freeze import GROUPS, TrainableSpec

NORMS = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm)


@dataclass(frozen=True)
class Preprocessing:
    """How images are prepared for a model: [0, 1] pixels resized to ``image_size`` (None: any size,
    a convolutional model without a processor config), then ``(x - mean) / std`` per channel."""

    image_size: int | None
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str  # where it was read: "preprocessor_config.json", "timm pretrained_cfg", "<family> defaults"


def processor_size(d: dict) -> int | None:
    """The side the model sees, from an image-processor dict: the centre crop when the processor
    crops, else the resize target (``height`` or ``shortest_edge``); None when it names neither."""
    size = d.get("crop_size") if d.get("do_center_crop") and d.get("crop_size") else d.get("size")
    if isinstance(size, int):
        return size
    if isinstance(size, dict):
        return size.get("height") or size.get("shortest_edge")
    return None


def preprocessing_from(d: dict | None, config, spec: ImageSpec) -> Preprocessing:
    """A model's preprocessing from its processor dict (``preprocessor_config.json``), else the
    config's ``image_size`` (if the family has one) and the family's mean and std from the table."""
    native = getattr(config, "image_size", None)
    native = native if isinstance(native, int) else None
    if d is None:
        return Preprocessing(native, tuple(spec.mean), tuple(spec.std), f"{spec.family} defaults")
    return Preprocessing(processor_size(d) or native, tuple(d.get("image_mean", spec.mean)),
                         tuple(d.get("image_std", spec.std)), "preprocessor_config.json")


def input_size(cfg: ModelConfig, prep: Preprocessing) -> int:
    """The image side the backbone takes: the model's own unless ``preprocessing=data`` (or the model
    takes any size), then ``cfg.image_size``."""
    return prep.image_size if cfg.preprocessing == "auto" and prep.image_size else cfg.image_size


class ImageBackbone(nn.Module):
    """A Hugging Face image model with our head. Build it with ``create_backbone``."""

    def __init__(self, model: nn.Module, spec: ImageSpec, cfg: ModelConfig, prep: Preprocessing):
        super().__init__()
        validate(cfg, "model")
        self.spec, self.model, self.prep = spec, model, prep
        self.cfg = dataclasses.replace(cfg, image_size=input_size(cfg, prep))
        self.width: int = self._config_width()
        self.head = nn.Linear(self.width, cfg.num_classes)
        self.fixed_params: set[str] = set()  # every parameter of an image model belongs to a group
        self.trainable_spec: TrainableSpec | None = None  # set by apply_trainable
        self.reset_classifier(cfg.num_classes)
        self.layer_groups()  # a parameter the table does not place is an error now, not a silent freeze
        if cfg.gradient_checkpointing:
            if not getattr(model, "supports_gradient_checkpointing", False):
                raise Lm2vError(f"{spec.family} models do not support gradient checkpointing")
            enable_checkpointing(model)

    def _config_width(self) -> int:
        w = getattr(self.model.config, self.spec.width)
        return int(w[-1] if isinstance(w, (list, tuple)) else w)

    # -- the timm-style interface ---------------------------------------------------------
    @property
    def blocks(self) -> nn.ModuleList:
        return self.model.get_submodule(self.spec.blocks)

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def patch_size(self) -> int:
        """Side of the input patches for patch-wise analyses (the input AGOP): the config's patch
        embedding (ViT, Swin, ConvNeXt), else ``model.patch_size`` (a convolutional stem)."""
        p = getattr(self.model.config, "patch_size", None)
        return p if isinstance(p, int) else self.cfg.patch_size

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, S, S), normalised -> the base model's last_hidden_state: tokens (B, T, C) or
        a feature map (B, C, H, W)."""
        if x.shape[-1] != self.cfg.image_size or x.shape[-2] != self.cfg.image_size:
            raise Lm2vError(f"expected {self.cfg.image_size}px images, got {tuple(x.shape[-2:])}")
        kw = {}
        if self.spec.interpolate_pos and self.cfg.image_size != getattr(self.model.config, "image_size", None):
            kw["interpolate_pos_encoding"] = True
        return self.model(pixel_values=x, **kw).last_hidden_state

    def pool(self, h: torch.Tensor) -> torch.Tensor:  # noqa: D401 - overridden by TimmBackbone
        """Tokens (B, T, C) or a map (B, C, H, W) -> (B, C) as the family's classifier reads it.

        The family's norm after pooling (ConvNeXt) exists at the final width only: the pooled output
        of an earlier stage (per-layer features) is the plain mean."""
        if self.spec.pool == "cls":
            pooled = h[:, 0]
        else:
            pooled = h.mean(dim=1) if h.ndim == 3 else h.mean(dim=(-2, -1))
        if self.spec.pool_norm and pooled.shape[-1] == self.width:
            pooled = self.model.get_submodule(self.spec.pool_norm)(pooled)
        return pooled  # (B, C)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Features -> logits (B, K), or pooled features (B, C) if ``pre_logits``."""
        pooled = self.pool(x)
        return pooled if pre_logits else self.head(pooled)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int, seed: int | None = None) -> None:
        """A new linear head, as :meth:`VisionBackbone.reset_classifier` (N(0, 0.02), seed default
        ``init_seed + 1``, the old head's dtype, device and mode)."""
        self.head = fresh_head(self.head, self.width, num_classes, self.cfg.init_seed + 1 if seed is None else seed)
        self.cfg.num_classes = num_classes

    @torch.no_grad()
    def reset_patch_embed(self, seed: int | None = None) -> None:
        """Re-draw the stem (the ``patch`` group) with its modules' default init, seeded by ``seed``
        (default ``init_seed``), as stage 2 ``reinit`` does."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.cfg.init_seed if seed is None else seed)
            for name, module in self.model.named_modules():
                inner = f"{name}."
                if self._block_of(inner) is None and self._in_stem(inner) and hasattr(module, "reset_parameters"):
                    module.reset_parameters()

    def block_fn(self):
        raise Lm2vError(f"dense heads reuse a language backbone's blocks; {self.spec.family} has none to lend")

    # -- named groups ---------------------------------------------------------------------
    def layer_groups(self) -> dict[str, list[str]]:
        """Parameter names per group, as :meth:`VisionBackbone.layer_groups`: ``block.<i>`` (the
        table's blocks or stages), ``patch`` (the stem), ``pos``, ``embed`` (CLS / distillation
        tokens), ``final_norm`` (norms outside the blocks and layers after them), ``head``; these
        partition the parameters. ``norm`` is every norm; ``attn`` and ``mlp`` split a transformer
        block's non-norm parameters (empty for convolutional families)."""
        groups: dict[str, list[str]] = {g: [] for g in GROUPS}
        groups.update({f"block.{i}": [] for i in range(self.num_blocks)})
        norms = self._norm_param_names()
        for name, _ in self.named_parameters():
            placed = self._groups_of(name, name in norms)
            if not placed:
                raise Lm2vError(f"the {self.spec.family} row of the architecture table does not place "
                                f"parameter {name!r}")
            for group in placed:
                groups[group].append(name)
        return groups

    def _groups_of(self, name: str, norm: bool) -> list[str]:
        if name.startswith("head."):
            return ["head"]
        inner = name[len("model."):]
        block = self._block_of(inner)
        if block is not None:
            index, rest = block
            if norm:
                return [f"block.{index}", "norm"]
            for part, pattern in (("attn", self.spec.attn), ("mlp", self.spec.mlp)):
                if pattern and re.search(pattern, rest):
                    return [f"block.{index}", part]
            return [f"block.{index}"]
        if norm:
            return ["norm", "final_norm"]
        if inner in self.spec.pos:
            return ["pos"]
        if inner in self.spec.tokens:
            return ["embed"]
        if self._in_stem(inner):
            return ["patch"]
        if inner.startswith(self.spec.post):
            return ["final_norm"]
        return []

    def _block_of(self, inner: str) -> tuple[int, str] | None:
        """(block index, the name inside the block) of a parameter of ``self.model``, or None."""
        prefix = f"{self.spec.blocks}."
        if not inner.startswith(prefix):
            return None
        index, _, rest = inner[len(prefix):].partition(".")
        return (int(index), rest) if index.isdigit() else None  # not the container ("encoder.layers.") itself

    def _in_stem(self, inner: str) -> bool:
        return inner.startswith(self.spec.stem)

    def _norm_param_names(self) -> set[str]:
        names = set()
        for mname, module in self.named_modules():
            if isinstance(module, NORMS) or type(module).__name__.endswith(("LayerNorm", "RMSNorm")):
                names.update(f"{mname}.{p}" for p, _ in module.named_parameters(recurse=False))
        return names

    def no_weight_decay(self) -> set[str]:
        """Position tables, learned tokens, norm parameters and biases stay out of weight decay."""
        tables = {f"model.{n}" for n in (*self.spec.pos, *self.spec.tokens)}
        names = {n for n, _ in self.named_parameters() if n in tables or n.rpartition(".")[2] == "bias"}
        return names | self._norm_param_names()


# -- timm (optional) -----------------------------------------------------------------------------------
class TimmBackbone(ImageBackbone):
    """A timm model (``model.name=timm:NAME``) with our head: timm's own ``forward_features`` and
    pooling (``forward_head(pre_logits=True)``). Its blocks and stem are what the model's own
    ``group_matcher(coarse=True)`` says (the grouping timm's layer-wise lr decay uses): ``block.<i>``
    is the i-th stage or block (ViT, Mixer: ``blocks.i``; ResNet: ``layer<i+1>``; ConvNeXt:
    ``stages.i``), ``patch`` what the ``stem`` pattern matches."""

    def __init__(self, model: nn.Module, cfg: ModelConfig, prep: Preprocessing, name: str):
        matcher = model.group_matcher(coarse=True)
        self.block_names = timm_block_names(model, matcher.get("blocks"), name)
        self.stem_pattern = re.compile(matcher["stem"]) if matcher.get("stem") else None
        super().__init__(model, TIMM_SPEC, cfg, prep)

    def _config_width(self) -> int:
        return int(self.model.num_features)

    @property
    def blocks(self) -> nn.ModuleList:
        return nn.ModuleList(self.model.get_submodule(n) for n in self.block_names)

    def _block_of(self, inner: str) -> tuple[int, str] | None:
        for i, block in enumerate(self.block_names):
            if inner.startswith(f"{block}."):
                return i, inner[len(block) + 1:]
        return None

    def _in_stem(self, inner: str) -> bool:
        return bool(self.stem_pattern and self.stem_pattern.match(inner))

    @property
    def patch_size(self) -> int:
        p = getattr(getattr(self.model, "patch_embed", None), "patch_size", None)
        return int(p[0] if isinstance(p, (tuple, list)) else p) if p else self.cfg.patch_size

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.cfg.image_size or x.shape[-2] != self.cfg.image_size:
            raise Lm2vError(f"expected {self.cfg.image_size}px images, got {tuple(x.shape[-2:])}")
        return self.model.forward_features(x)

    def pool(self, h: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(h, pre_logits=True)  # (B, C)


def timm_block_names(model: nn.Module, patterns, name: str) -> list[str]:
    """The outermost modules that a timm ``group_matcher`` blocks pattern matches (``^blocks\\.(\\d+)``
    -> ``blocks.0``, ``blocks.1``, ...; ``^layer(\\d+)`` -> ``layer1``, ...), ordered by the captured
    indices. Patterns with a suffix (``(r'^norm', (99999,))``: "join the previous group") are not
    blocks: those parameters keep their own group (``final_norm``)."""
    if isinstance(patterns, str):
        patterns = [(patterns, None)]
    regexes = [re.compile(p) for p, suffix in (patterns or []) if suffix is None]
    found: dict[str, tuple[int, ...]] = {}
    for mname, _ in model.named_modules():
        parent = mname.rpartition(".")[0]
        for rx in regexes:
            m = rx.match(f"{mname}.")
            if mname and m and m.groups() and not any(rx.match(f"{parent}.") for rx in regexes if parent):
                found[mname] = tuple(int(g) for g in m.groups())
                break
    if not found:
        raise Lm2vError(f"timm model {name!r}: its group_matcher names no blocks")
    return sorted(found, key=found.get)


def import_timm():
    """The optional timm package, or a one-line error naming its install command."""
    try:
        import timm
    except ImportError:
        raise Lm2vError("timm models (model.name=timm:NAME) need timm: pip install timm") from None
    return timm


def timm_pretrained_cfg(name: str):
    """timm's ``PretrainedCfg`` of ``name`` (its default tag), or None when timm knows none."""
    return import_timm().models.get_pretrained_cfg(name)


def timm_preprocessing(name: str, model=None, img_size: int | None = None) -> Preprocessing:
    """Image size, mean and std of timm's ``pretrained_cfg`` for ``name`` (timm's default tag); the
    size is ``img_size`` when the model is built for another size than that config says."""
    pc = model.pretrained_cfg if model is not None else timm_pretrained_cfg(name)
    if pc is None:
        raise Lm2vError(f"timm knows no model {name!r}")
    pc = pc if isinstance(pc, dict) else pc.to_dict()
    return Preprocessing(int(img_size or pc["input_size"][-1]), tuple(pc["mean"]), tuple(pc["std"]),
                         "timm pretrained_cfg")


def timm_backbone(cfg: ModelConfig, create_kwargs: dict | None = None) -> TimmBackbone:
    """``timm.create_model(NAME, pretrained=cfg.pretrained, num_classes=0)`` as a backbone (fresh
    weights seeded by ``init_seed``). A model of fixed input size (ViT, Mixer, Swin) is built for
    ``cfg.image_size`` when ``preprocessing=data`` (``img_size=``; timm resamples pretrained
    position tables, and says so when it cannot). ``create_kwargs`` go to ``timm.create_model``."""
    timm = import_timm()
    name, tiny_kwargs = timm_name(cfg.name)
    if tiny_kwargs and cfg.pretrained:
        raise Lm2vError(f"{cfg.name} is an in-memory test config with no weights: set model.pretrained=false")
    torch.manual_seed(cfg.init_seed)
    kwargs = {**tiny_kwargs, **(create_kwargs or {})}
    if cfg.preprocessing == "data":
        pc = timm_pretrained_cfg(name)
        if pc is not None and pc.to_dict().get("fixed_input_size") and pc.input_size[-1] != cfg.image_size:
            kwargs["img_size"] = cfg.image_size
    cls = kwargs.pop("timm_class", None)  # a tiny config: timm's model class built with its own sizes
    try:
        if cls:
            model = timm.models.build_model_with_cfg(getattr(timm.models, cls), name, pretrained=False,
                                                     num_classes=0, **kwargs)
        else:
            model = timm.create_model(name, pretrained=cfg.pretrained, num_classes=0, **kwargs)
    except (RuntimeError, OSError, ValueError) as e:
        raise Lm2vError(f"cannot build timm model {name!r}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    return TimmBackbone(model, cfg, timm_preprocessing(name, model, kwargs.get("img_size")), name)
