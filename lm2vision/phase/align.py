"""Cross-modal alignment training (``lm2v align``) with the seed's four phase-aware methods (its Table 2).

Model: each side's encoder (pooled embedding, :mod:`.encoders`) -> a linear projection head to a
shared ``embed_dim`` (a :class:`Tower`); symmetric InfoNCE over the batch with a learnable
temperature, as CLIP (logit scale exp(t), t initialised to log(1 / temperature), clamped at 100).
Captions that repeat inside a batch count as negatives, as in CLIP.

What trains: both projection heads and the temperature always; plus the encoder parameters each
side's ``TrainableSpec`` selects (named groups, :mod:`lm2vision.models.freeze`). Default: the last
block of each side. With heads only, the NTK over the trainable parameters never changes (a linear
head's Jacobian does not depend on its weights), so S_v = S_l = 1 throughout and the four methods
coincide: ``vision_trainable.blocks=none`` says so.

Phase numbers, every ``measure_every`` steps, on a fixed probe (the first ``probe_size`` training
pairs), NTKs (trace contraction) of each tower over its trainable parameters (heads included):
- S_v = S(Theta_v(t), Theta_v(init)), S_l likewise, where init is the side's architecture at its
  random initialisation with the tower's initial head (the seed's per-model S; for an untrained
  model the run starts at S = 1, for a pretrained one at its screened S);
- S_cross = S(Theta_v(t), Theta_l(t)) on the paired probe inputs.

Methods (each a run from the same starting weights, seed and batch order):
- ``baseline``: fixed lr eta_0 (``lr``).
- ``adaptive``: lr = eta_0 * S(t) with S(t) = (S_v + S_l) / 2, set at each measurement and held until
  the next (both models' stability counts; S_cross is reported, not used).
- ``regularized``: loss + lambda * |S_v - S_l| (lambda = ``penalty``), S from NTKs built with their
  graph (double backward, as the stage-1 phase penalty), added at each measurement step.
- ``compatible``: before training, each side is moved to S = ``compat_target`` (default 0.6):
  gradient descent (Adam) on (S - target)^2 over its trainable encoder parameters, from its
  starting weights, S differentiable as in ``regularized``; each tensor's step is ``compat_lr`` times
  its RMS (from S = 1, where the gradient of S vanishes, after a seeded nudge of 1% of it), and a step that carries S across the target is bisected on its segment, so S lands
  within ``compat_tol``. The paper does not say how its models were started near 0.6; this moves
  the least along the steepest path of S, up (a pretrained model below the target) or down (an
  untrained one at S = 1). Random perturbations do not work: a wide random network's NTK barely
  depends on the draw, so S stays near 1 (measured: 0.997 on the tiny transformers). After
  ``compat_steps`` steps outside the tolerance one warning gives the S reached. Then trained as the
  baseline. Only trainable encoder parameters move.

Reported per method (Table 2): examples seen (steps x batch) until the held-out top-1 first reaches
``target``, the final top-1 (image -> caption retrieval over the held-out pairs, a hit when the
retrieved caption's class is the image's; chance = sum of squared class shares) and S_v, S_l, S_cross.
"""
from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils._pytree import tree_map
from tqdm import tqdm

from ..config import bounds, choices, validate
from ..data import DataConfig, load_imageset_splits
from ..errors import Lm2vError, Lm2vWarning
from ..models.arch import ARCH
from ..models.freeze import GROUPS, TrainableSpec, apply_trainable, select_parameters
from ..utils.device import resolve_device
from ..utils.tables import csv_table, markdown_table
from .alignment import _chance, _cosine_top1
from .captions import TEMPLATES, caption_pairs, split_pairs
from .ntk import NTKConfig, empirical_ntk, num_samples
from .sides import Side, load_language, load_vision, tokenize
from .similarity import kernel_similarity, kernel_similarity_t
from .screen import vision_inputs

METHODS = ("baseline", "adaptive", "regularized", "compatible")


def _side_default() -> TrainableSpec:
    return TrainableSpec(blocks="last:1", groups=[])


@dataclass
class AlignConfig:
    """What ``lm2v align`` trains and how (see the module docstring for the methods).

    pairs: image / caption pairs drawn (class-balanced, seeded) from ``split`` of ``data``;
        ``heldout`` of each class measure alignment, the rest train.
    templates: caption templates ("{}" = class name), one drawn per pair.
    vision_trainable / language_trainable: encoder parameters that train besides the heads.
    lr: eta_0. steps: optimiser steps per method. target: held-out top-1 to reach, in (0, 1].
    probe_size: pairs of the NTK probe. penalty: lambda of ``regularized``.
    compat_target / compat_tol: S each side starts at under ``compatible``, and the tolerance;
        compat_lr / compat_steps: its descent's step (times each tensor's RMS) and step limit.
    """

    vision: str = "tiny-bert"
    language: str = "tiny-bert"
    data: DataConfig = field(default_factory=DataConfig)
    split: str = field(default="train", metadata=choices("train", "val", "test"))
    pairs: int = field(default=576, metadata=bounds(ge=4))
    heldout: float = field(default=0.25, metadata=bounds(gt=0, lt=1))
    templates: List[str] = field(default_factory=lambda: list(TEMPLATES))
    image_size: int = field(default=32, metadata=bounds(ge=1))
    patch_size: int = field(default=4, metadata=bounds(ge=1))
    embed_dim: int = field(default=32, metadata=bounds(ge=1))
    vision_trainable: TrainableSpec = field(default_factory=_side_default)
    language_trainable: TrainableSpec = field(default_factory=_side_default)
    methods: List[str] = field(default_factory=lambda: list(METHODS), metadata=choices(*METHODS))
    steps: int = field(default=100, metadata=bounds(ge=1))
    batch_size: int = field(default=32, metadata=bounds(ge=2))
    lr: float = field(default=1e-3, metadata=bounds(gt=0))
    weight_decay: float = field(default=0.0, metadata=bounds(ge=0))
    temperature: float = field(default=0.07, metadata=bounds(gt=0))
    measure_every: int = field(default=20, metadata=bounds(ge=1))
    probe_size: int = field(default=8, metadata=bounds(ge=2))
    penalty: float = field(default=1.0, metadata=bounds(ge=0))
    compat_target: float = field(default=0.6, metadata=bounds(gt=0, lt=1))
    compat_tol: float = field(default=0.02, metadata=bounds(gt=0, lt=1))
    compat_lr: float = field(default=0.05, metadata=bounds(gt=0))
    compat_steps: int = field(default=200, metadata=bounds(ge=1))
    target: float = field(default=0.3, metadata=bounds(gt=0, le=1))
    ntk: NTKConfig = field(default_factory=lambda: NTKConfig(vjp_max_work=0))
    seed: int = 0
    device: str = "auto"


def check_align_config(cfg: AlignConfig) -> None:
    """Declared choices and bounds, then the rules tying fields together (one line each)."""
    validate(cfg)
    if not cfg.methods:
        raise Lm2vError(f"give at least one method ({', '.join(METHODS)})")
    if len(set(cfg.methods)) != len(cfg.methods):
        raise Lm2vError(f"methods repeat: {cfg.methods}")
    if not cfg.templates or any("{}" not in t for t in cfg.templates):
        raise Lm2vError("every caption template must contain {} for the class name")
    if cfg.ntk.method == "vjp":
        raise Lm2vError("ntk.method=vjp cannot build the differentiable kernel of the phase penalty; "
                        "use auto, jacobian or projection")


# -- towers --------------------------------------------------------------------------------------
class Tower(nn.Module):
    """An encoder (anything with ``embed(*inputs) -> (B, C)``) and a linear projection head (B, D)."""

    def __init__(self, encoder: nn.Module, width: int, dim: int, seed: int = 0):
        super().__init__()
        self.encoder = encoder
        torch.manual_seed(seed)
        self.head = nn.Linear(width, dim, bias=False)  # CLIP: bias-free projections

    def forward(self, *x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder.embed(*x))  # (B, D)

    def kernel_names(self) -> list[str]:
        """Parameters of the NTK: what trains (encoder selection and head)."""
        return [n for n, p in self.named_parameters() if p.requires_grad]

    def encoder_names(self) -> list[str]:
        return [n for n in self.kernel_names() if n.startswith("encoder.")]


def text_layer_groups(model: nn.Module) -> dict[str, list[str]]:
    """Named groups of a Hugging Face text model, from the architecture table: block.<i>, attn, mlp,
    norm (any *Norm module), embed (the input tables), final_norm (norms outside the blocks)."""
    spec = ARCH.get(getattr(model.config, "model_type", ""))
    if spec is None:
        raise Lm2vError(f"cannot select blocks of language family {model.config.model_type!r}; "
                        f"supported: {', '.join(sorted(ARCH))}")
    n_blocks = len(model.get_submodule(spec.blocks))
    groups: dict[str, list[str]] = {g: [] for g in GROUPS}
    groups.update({f"block.{i}": [] for i in range(n_blocks)})
    norms = {f"{m}.{p}".lstrip(".") for m, mod in model.named_modules() if "Norm" in type(mod).__name__
             for p, _ in mod.named_parameters(recurse=False)}
    tables = [spec.word_embed, spec.pos_embed, *spec.extra_embeds]
    for name, _ in model.named_parameters():
        if name.startswith(f"{spec.blocks}."):
            index, _, rest = name[len(spec.blocks) + 1:].partition(".")
            part = "norm" if name in norms else "attn" if rest.startswith(spec.attn) else \
                "mlp" if rest.startswith(spec.mlp) else None
            groups[f"block.{index}"].append(name)
            if part:
                groups[part].append(name)
        elif name in norms:
            groups["norm"].append(name)
            groups["final_norm"].append(name)
        elif any(t and name.startswith(f"{t}.") for t in tables):
            groups["embed"].append(name)
    return groups


def set_trainable(side: Side, spec: TrainableSpec) -> None:
    """``requires_grad`` on the encoder of ``side`` as ``spec`` selects (vision: the backbone's own
    groups; language: :func:`text_layer_groups`)."""
    if hasattr(side.now, "backbone"):
        apply_trainable(side.now.backbone, spec)
        return
    model = side.now.model
    groups = text_layer_groups(model)
    n_blocks = sum(1 for g in groups if g.startswith("block."))
    chosen = select_parameters(groups, spec, n_blocks, [n for n, _ in model.named_parameters()])
    for name, p in model.named_parameters():
        p.requires_grad_(name in chosen)


# -- data ----------------------------------------------------------------------------------------
@dataclass
class AlignData:
    """Model inputs of the training and held-out pairs (a tensor or a tuple (ids, mask) per side)."""

    train_v: Any
    train_l: Any
    heldout_v: Any
    heldout_l: Any
    heldout_labels: torch.Tensor  # (M,) groups that count as the same caption
    probe_size: int

    @property
    def n_train(self) -> int:
        return num_samples(self.train_v)

    def probe(self) -> tuple[Any, Any]:
        return take(self.train_v, slice(0, self.probe_size)), take(self.train_l, slice(0, self.probe_size))


def take(x: Any, idx) -> Any:
    """Rows ``idx`` of an input (a tensor or a tuple of tensors)."""
    return tree_map(lambda t: t[idx], x)


def _call(tower: Tower, x: Any) -> torch.Tensor:
    return tower(*x) if isinstance(x, tuple) else tower(x)


def build_data(cfg: AlignConfig, vision: Side, language: Side, device: torch.device) -> AlignData:
    """Pairs from ``cfg.data`` split into training and held-out pairs, turned into both sides' inputs."""
    images = getattr(load_imageset_splits(cfg.data), cfg.split)
    split = split_pairs(caption_pairs(images, cfg.pairs, cfg.templates, cfg.seed), cfg.heldout, cfg.seed)
    if cfg.probe_size > len(split.train.labels):
        raise Lm2vError(f"probe_size {cfg.probe_size} exceeds the {len(split.train.labels)} training pairs")
    text = lambda p: tuple(t.to(device) for t in tokenize(language.tokenizer, p.captions))  # noqa: E731
    return AlignData(vision_inputs(vision, split.train, cfg.data, device), text(split.train),
                     vision_inputs(vision, split.heldout, cfg.data, device), text(split.heldout),
                     split.heldout.labels, cfg.probe_size)


# -- loss, retrieval, phase numbers --------------------------------------------------------------
def clip_loss(z_v: torch.Tensor, z_l: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE of paired rows (B, D), (B, D) with logits exp(t) * cos (CLIP's)."""
    z_v, z_l = F.normalize(z_v, dim=-1), F.normalize(z_l, dim=-1)
    logits = logit_scale.exp().clamp(max=100) * z_v @ z_l.T  # (B, B)
    target = torch.arange(len(z_v), device=z_v.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


@torch.no_grad()
def heldout_top1(vision: Tower, language: Tower, data: AlignData) -> tuple[float, float]:
    """(top-1, chance) of image -> caption retrieval over the held-out pairs, counted by group."""
    zv, zl = _call(vision, data.heldout_v), _call(language, data.heldout_l)
    g = data.heldout_labels.cpu().numpy()
    return _cosine_top1(zv.double().cpu().numpy(), zl.double().cpu().numpy(), g), _chance(g)


def tower_ntk(tower: Tower, x: Any, cfg: NTKConfig, differentiable: bool = False) -> torch.Tensor:
    """Trace NTK (n, n) of ``tower`` over its trainable parameters on the probe ``x``."""
    with torch.set_grad_enabled(differentiable):
        return empirical_ntk(tower, x, cfg=cfg, names=tower.kernel_names(), differentiable=differentiable)


@dataclass
class Phase:
    """Reference kernels Theta(init) of both sides on the probe, and how to measure S now."""

    ref_v: torch.Tensor
    ref_l: torch.Tensor
    probe_v: Any
    probe_l: Any
    ntk: NTKConfig

    def measure(self, vision: Tower, language: Tower) -> dict[str, float]:
        tv, tl = tower_ntk(vision, self.probe_v, self.ntk), tower_ntk(language, self.probe_l, self.ntk)
        return {"S_v": kernel_similarity(tv, self.ref_v), "S_l": kernel_similarity(tl, self.ref_l),
                "S_cross": kernel_similarity(tv, tl)}

    def penalty(self, vision: Tower, language: Tower, lam: float) -> torch.Tensor:
        """lambda * |S_v - S_l| with both S differentiable (kernels built with their graph)."""
        s_v = kernel_similarity_t(tower_ntk(vision, self.probe_v, self.ntk, True), self.ref_v)
        s_l = kernel_similarity_t(tower_ntk(language, self.probe_l, self.ntk, True), self.ref_l)
        return lam * (s_v - s_l).abs()


def regularized_loss(loss: torch.Tensor, phase: Phase, vision: Tower, language: Tower, lam: float) -> torch.Tensor:
    """The ``regularized`` method's objective: loss + lambda * |S_v - S_l|."""
    return loss + phase.penalty(vision, language, lam)


def reference_tower(tower: Tower, init_encoder: nn.Module) -> Tower:
    """``tower`` with its encoder replaced by ``init_encoder`` (same trainable selection, same head)."""
    ref = copy.deepcopy(tower)
    ref.encoder.load_state_dict(init_encoder.state_dict())
    return ref


# -- compatible initialisation -------------------------------------------------------------------
def _line(tower: Tower, a: dict, b: dict) -> Callable[[float], None]:
    """Set the tower's trainable encoder parameters to a + alpha (b - a)."""
    params = dict(tower.named_parameters())

    def set_alpha(alpha: float) -> None:
        with torch.no_grad():
            for n in a:
                params[n].copy_(a[n] + alpha * (b[n] - a[n]))

    return set_alpha


def compatible_init(tower: Tower, ref: Tower, probe: Any, cfg: NTKConfig, target: float = 0.6,
                    tol: float = 0.02, lr: float = 0.05, max_steps: int = 200, max_bisections: int = 30,
                    seed: int = 0, kick: float = 0.01, name: str = "a") -> float:
    """Move ``tower``'s trainable encoder parameters until S(Theta(tower), Theta(ref)) = ``target``
    (within ``tol``); returns the S reached (see the module docstring).

    Adam descends (S - target)^2, S from the kernel built with its graph, each tensor's step ``lr``
    times its RMS. At S = 1 (the tower is its reference: S at its maximum, gradient zero) the descent
    starts from a seeded Gaussian nudge of ``kick`` times each tensor's RMS. A step that carries S
    across the target is bisected on its segment. When
    ``max_steps`` steps leave S outside the tolerance, the tower stays where it is and one
    :class:`Lm2vWarning` names the side and the S reached."""
    names = tower.encoder_names()
    if not names:
        raise Lm2vError("compatible init moves trainable encoder parameters: select some "
                        "(e.g. vision_trainable.blocks=last:1), heads alone leave S at 1")
    theta_ref = tower_ntk(ref, probe, cfg)
    s_of = lambda: kernel_similarity(tower_ntk(tower, probe, cfg), theta_ref)  # noqa: E731
    params = {n: p for n, p in tower.named_parameters() if n in set(names)}
    if s_of() > 1 - 1e-6:  # S = 1 is its maximum, where its gradient vanishes: start from a seeded nudge
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in params.values():
                p.add_(torch.randn(p.shape, generator=g).to(p) * kick * p.pow(2).mean().sqrt().clamp_min(1e-3))
    opt = torch.optim.Adam([{"params": [p], "lr": lr * float(p.detach().pow(2).mean().sqrt().clamp_min(1e-3))}
                            for p in params.values()])
    try:
        s = _descend(tower, params, opt, lambda: tower_ntk(tower, probe, cfg, differentiable=True), theta_ref,
                     s_of, target, tol, max_steps, max_bisections)
    finally:
        tower.zero_grad(set_to_none=True)
    if abs(s - target) > tol:
        warnings.warn(f"compatible init: {name} side reached S = {s:.3f}, not {target} +- {tol}, after {max_steps} "
                      "steps of descent on (S - target)^2; training starts there", Lm2vWarning, stacklevel=2)
    return s


def _descend(tower, params, opt, kernel, theta_ref, s_of, target, tol, max_steps, max_bisections) -> float:
    """The descent of :func:`compatible_init`; returns the S where it stops."""
    above, prev = None, None
    for step in range(max_steps + 1):
        s_t = kernel_similarity_t(kernel(), theta_ref)
        s = float(s_t.detach())
        if abs(s - target) <= tol:
            return s
        if above is None:
            above = s > target
        elif (s > target) != above:  # the last step crossed the target: bisect its segment
            now = {n: p.detach().clone() for n, p in params.items()}
            return _bisect(_line(tower, prev, now), s_of, target, tol, above, max_bisections)
        if step == max_steps:
            return s
        prev = {n: p.detach().clone() for n, p in params.items()}
        opt.zero_grad(set_to_none=True)
        ((s_t - target) ** 2).backward()
        opt.step()
    return s


def _bisect(set_alpha: Callable[[float], None], s_of: Callable[[], float], target: float, tol: float,
            above_at_0: bool, max_bisections: int) -> float:
    """Bisect alpha in [0, 1] for S within ``tol`` of ``target``, S crossing it between the ends."""
    lo, hi = 0.0, 1.0
    for _ in range(max_bisections):
        mid = (lo + hi) / 2
        set_alpha(mid)
        s = s_of()
        if abs(s - target) <= tol:
            return s
        lo, hi = (mid, hi) if (s > target) == above_at_0 else (lo, mid)
    raise Lm2vError(f"compatible init: no S within {tol} of {target} after {max_bisections} bisections (last {s:.3f})")


# -- training ------------------------------------------------------------------------------------
def _optimizer(vision: Tower, language: Tower, logit_scale: nn.Parameter, cfg: AlignConfig) -> torch.optim.Optimizer:
    params = [p for t in (vision, language) for p in t.parameters() if p.requires_grad] + [logit_scale]
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _batches(n: int, batch: int, steps: int, seed: int):
    """Indices of each step's batch: seeded epoch permutations, the last short batch dropped."""
    g, per_epoch = torch.Generator().manual_seed(seed), max(1, n // batch)
    step = 0
    while step < steps:
        perm = torch.randperm(n, generator=g)
        for i in range(per_epoch):
            if step == steps:
                return
            yield perm[i * batch:(i + 1) * batch]
            step += 1


def train_method(method: str, vision: Tower, language: Tower, data: AlignData, phase: Phase, cfg: AlignConfig,
                 progress: bool = False) -> list[dict]:
    """Train ``vision`` and ``language`` in place with ``method``; returns the curve (one row per
    measurement: step, examples, top1, chance, S_v, S_l, S_cross, lr in force from then on, loss)."""
    logit_scale = nn.Parameter(torch.tensor(math.log(1 / cfg.temperature), device=next(vision.parameters()).device))
    opt = _optimizer(vision, language, logit_scale, cfg)
    batch = min(cfg.batch_size, data.n_train)
    curve, loss_val = [], float("nan")
    batches = _batches(data.n_train, batch, cfg.steps, cfg.seed)
    for step in tqdm(range(cfg.steps + 1), desc=method, disable=not progress):
        measuring = step % cfg.measure_every == 0 or step == cfg.steps
        if measuring:
            curve.append(_measure(method, step, batch, vision, language, data, phase, opt, cfg, loss_val))
        if step == cfg.steps:
            break
        idx = next(batches)
        loss = clip_loss(_call(vision, take(data.train_v, idx)), _call(language, take(data.train_l, idx)), logit_scale)
        if method == "regularized" and measuring and cfg.penalty > 0:
            loss = regularized_loss(loss, phase, vision, language, cfg.penalty)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss_val = float(loss.detach())
    return curve


def _measure(method, step, batch, vision, language, data, phase, opt, cfg, loss_val) -> dict:
    top1, chance = heldout_top1(vision, language, data)
    s = phase.measure(vision, language)
    if method == "adaptive":  # eta(t) = eta_0 * S(t), held until the next measurement
        for group in opt.param_groups:
            group["lr"] = cfg.lr * (s["S_v"] + s["S_l"]) / 2
    return {"step": step, "examples": step * batch, "top1": top1, "chance": chance, **s,
            "lr": opt.param_groups[0]["lr"], "loss": loss_val}


def examples_to_target(curve: list[dict], target: float) -> Optional[int]:
    """Examples seen at the first measurement whose top-1 reaches ``target`` (None: never)."""
    return next((row["examples"] for row in curve if row["top1"] >= target), None)


# -- the whole comparison ------------------------------------------------------------------------
def load_towers(cfg: AlignConfig, device: torch.device) -> tuple[Side, Side, Tower, Tower, Tower, Tower]:
    """Both sides with their trainable selection, their towers and reference (init) towers."""
    vision = load_vision(cfg.vision, cfg.image_size, cfg.patch_size, None, cfg.seed)
    language = load_language(cfg.language, None, cfg.seed)
    set_trainable(vision, cfg.vision_trainable)
    set_trainable(language, cfg.language_trainable)
    tv = Tower(vision.now, vision.now.out_width, cfg.embed_dim, cfg.seed).to(device).eval()
    tl = Tower(language.now, language.now.out_width, cfg.embed_dim, cfg.seed + 1).to(device).eval()
    return vision, language, tv, tl, reference_tower(tv, vision.init), reference_tower(tl, language.init)


def run_methods(cfg: AlignConfig, vision: Tower, language: Tower, ref_v: Tower, ref_l: Tower, data: AlignData,
                progress: bool = False) -> dict[str, list[dict]]:
    """Each method of ``cfg.methods`` from copies of the same starting towers; curves by method.

    Towers run in eval mode (no dropout): the NTK needs it, and training then sees the same network."""
    probe_v, probe_l = data.probe()
    phase = Phase(tower_ntk(ref_v, probe_v, cfg.ntk), tower_ntk(ref_l, probe_l, cfg.ntk), probe_v, probe_l, cfg.ntk)
    curves = {}
    for method in cfg.methods:
        v, lang = copy.deepcopy(vision), copy.deepcopy(language)
        if method == "compatible":
            for tower, ref, probe, side in ((v, ref_v, probe_v, "vision"), (lang, ref_l, probe_l, "language")):
                compatible_init(tower, ref, probe, cfg.ntk, cfg.compat_target, cfg.compat_tol, cfg.compat_lr,
                                cfg.compat_steps, seed=cfg.seed, name=side)
        torch.manual_seed(cfg.seed)
        curves[method] = train_method(method, v, lang, data, phase, cfg, progress)
    return curves


def prepare(cfg: AlignConfig) -> tuple:
    """Everything that can fail on bad input, before any output is written: the config, both sides
    with their trainable selection, their towers and reference towers, and the pairs."""
    check_align_config(cfg)
    device = resolve_device(cfg.device)
    vision, language, tv, tl, rv, rl = load_towers(cfg, device)
    return tv, tl, rv, rl, build_data(cfg, vision, language, device)


def align(cfg: AlignConfig, prepared: tuple | None = None,
          progress: bool = True) -> tuple[list[dict], dict[str, list[dict]]]:
    """Run every method (on ``prepared``, else :func:`prepare`); returns (table rows, curves by method)."""
    tv, tl, rv, rl, data = prepared or prepare(cfg)
    curves = run_methods(cfg, tv, tl, rv, rl, data, progress)
    return [table_row(m, c, cfg.target) for m, c in curves.items()], curves


# -- output --------------------------------------------------------------------------------------
COLUMNS = ["method", "examples_to_target", "final_top1", "chance", "S_v", "S_l", "S_cross", "S_v_start", "S_l_start"]


def table_row(method: str, curve: list[dict], target: float) -> dict:
    """One row of the Table-2-style comparison."""
    first, last = curve[0], curve[-1]
    reached = examples_to_target(curve, target)
    return {"method": method, "examples_to_target": "not reached" if reached is None else reached,
            "final_top1": last["top1"], "chance": last["chance"], "S_v": last["S_v"], "S_l": last["S_l"],
            "S_cross": last["S_cross"], "S_v_start": first["S_v"], "S_l_start": first["S_l"]}


def to_markdown(rows: list[dict], target: float) -> str:
    return f"examples to reach held-out top-1 >= {target}\n\n" + markdown_table(rows, COLUMNS) + "\n"


def to_csv(rows: list[dict]) -> str:
    return csv_table(rows, COLUMNS)


def plot_curves(curves: dict[str, list[dict]], target: float, path) -> None:
    """Held-out top-1 against examples seen, one line per method, with chance and the target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for method, curve in curves.items():
        ax.plot([r["examples"] for r in curve], [r["top1"] for r in curve], marker=".", label=method)
    chance = next(iter(curves.values()))[-1]["chance"]
    ax.axhline(chance, color="grey", ls=":", label="chance")
    ax.axhline(target, color="k", ls="--", lw=0.8, label="target")
    ax.set_xlabel("examples seen")
    ax.set_ylabel("held-out top-1 (image -> caption)")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
