"""Pair screening: phase numbers of every vision x language pair on paired image / caption samples.

Paired inputs: N samples (image_i, caption_i) with caption_i = ``template.format(class of image_i)``.
Theta_v is the NTK of the vision model on the images, Theta_l that of the language model on the
captions, both N x N (trace contraction, over the first ``ntk_samples`` pairs); S_cross =
S(Theta_v, Theta_l). Per model, S = S(Theta_now, Theta_init) (init: ``init.safetensors`` of a run
directory, else the same architecture freshly initialised) and the AGOP of the (projected)
embedding with respect to the input (image patches for vision, token embeddings for language).
The alignment score fits vision -> language on half of the ``samples`` pairs and retrieves on the
other half (a hit = a caption of the right class).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, List, Optional

import torch
from tqdm import tqdm

from ..analysis.features import layer_features, layer_names
from ..analysis.geometry import geometry_summary, layer_geometry
from ..config import bounds, choices, validate
from ..data import DataConfig, ImageSet, cap_per_class, load_imageset_splits, preprocess_eval
from ..errors import Lm2vError
from ..utils.device import resolve_device
from ..utils.tables import csv_table, markdown_table
from .agop import Spectrum, agop, layer_agops, spectrum
from .alignment import METHODS as ALIGN_METHODS, alignment_score
from .ntk import NTKConfig, choose_method, empirical_ntk, num_samples
from ..models.factory import resolve_source
from .sides import Side, load_language, load_vision, tokenize
from .similarity import kernel_similarity, phase_label


@dataclass
class ScreenConfig:
    """What ``lm2v phase`` screens and how.

    samples: paired samples for the alignment score; the first ``ntk_samples`` of them (a seeded,
        class-balanced draw) give the NTK kernels and the first ``agop_samples`` the AGOP.
    out_dim: the NTK/AGOP output is the pooled embedding times a fixed random (C, out_dim)
        projection; null uses the full embedding.
    token_embeddings: include the language model's token table in its NTK parameters (off: both
        kernels are over the transformer stack, plus the patch embedding on the vision side).
    image_size / patch_size: for backbones built by name (run directories carry their own).
    """

    vision: List[str] = field(default_factory=lambda: ["minilm"])
    language: List[str] = field(default_factory=lambda: ["minilm"])
    data: DataConfig = field(default_factory=DataConfig)
    split: str = field(default="test", metadata=choices("train", "val", "test"))
    samples: int = 576
    ntk_samples: int = field(default=64, metadata=bounds(ge=2))
    agop_samples: int = field(default=64, metadata=bounds(ge=1))
    out_dim: Optional[int] = field(default=8, metadata=bounds(ge=1))  # null: the full embedding
    image_size: int = 32
    patch_size: int = 4
    template: str = "a photo of a {}"
    token_embeddings: bool = False  # language NTK over the token table too (costly, see TextEmbedder)
    ntk: NTKConfig = field(default_factory=NTKConfig)
    agop_rel_tol: float = field(default=1e-6, metadata=bounds(ge=0))
    align_method: str = field(default="ridge", metadata=choices(*ALIGN_METHODS))
    align_test_fraction: float = field(default=0.5, metadata=bounds(gt=0, lt=1))
    ridge: float = field(default=1.0, metadata=bounds(ge=0))
    batch_size: int = field(default=64, metadata=bounds(ge=1))
    # a pair fails when align_top1 < fail_ratio x chance (lm2vision.phase.predictors)
    fail_ratio: float = field(default=2.0, metadata=bounds(gt=0))
    geometry: bool = True  # layer-wise geometry of every model on all ``samples`` (analysis.geometry)
    geometry_bins: int = field(default=30, metadata=bounds(ge=1))  # information-plane bins per unit
    seed: int = 0
    device: str = "auto"


@dataclass
class ModelPhase:
    """Phase numbers of one model on its side of the paired samples."""

    name: str
    side: str  # vision | language
    s: float  # S(Theta_now, Theta_init)
    method: str  # NTK method used
    agop: Spectrum
    layer_ratios: dict  # block name -> AGOP ratio with respect to that block's input
    theta: torch.Tensor  # (n, n) NTK on the paired inputs
    z: torch.Tensor  # (N, C) embeddings for the alignment score
    model_type: str = ""  # Hugging Face config.model_type of the model (its family in the architecture table)
    geometry: list | None = None  # per-layer rows of analysis.geometry.layer_geometry (None: not computed)

    @property
    def phase(self) -> str:
        return phase_label(self.s)


def check_screen_config(cfg: ScreenConfig) -> None:
    """One-line errors for settings that cannot run: the declared choices and bounds
    (:func:`lm2vision.config.validate`), then the rules that tie fields together."""
    validate(cfg)
    if not cfg.vision or not cfg.language:
        raise Lm2vError("give at least one vision and one language model")
    if cfg.ntk_samples > cfg.samples or cfg.agop_samples > cfg.samples:
        raise Lm2vError(f"ntk_samples and agop_samples must be <= samples ({cfg.samples}), "
                        f"got {cfg.ntk_samples} and {cfg.agop_samples}")
    if "{}" not in cfg.template:
        raise Lm2vError(f"template must contain {{}} for the class name, got {cfg.template!r}")
    for name in (*cfg.vision, *cfg.language):
        resolve_source(name)  # a missing local folder is one line now, not after the other models have run


# -- paired samples ------------------------------------------------------------------------------
@dataclass
class Pairs:
    """N images (uint8) with their captions and class labels, in a seeded, class-mixed order."""

    images: torch.Tensor  # (N, 3, H, W) uint8
    labels: torch.Tensor  # (N,)
    captions: list[str]


def paired_samples(images: ImageSet, n: int, template: str, seed: int) -> Pairs:
    """A class-balanced, seeded draw of ``n`` images and their class-name captions."""
    if len(images) < n:
        raise Lm2vError(f"asked for {n} samples, the split has {len(images)}")
    idx = cap_per_class(images.labels, math.ceil(n / images.num_classes), seed)
    idx = idx[torch.randperm(len(idx), generator=torch.Generator().manual_seed(seed))][:n]
    if len(idx) < n:
        raise Lm2vError(f"cannot draw {n} class-balanced samples from {len(images)} images")
    labels = images.labels[idx]
    captions = [template.format(images.classes[int(y)].replace("_", " ")) for y in labels]
    return Pairs(images.images[idx], labels, captions)


def load_pairs(cfg: ScreenConfig) -> Pairs:
    """The paired samples of ``cfg`` from its dataset split (the bundled set is decoded once per process
    by the data readers)."""
    return paired_samples(getattr(load_imageset_splits(cfg.data), cfg.split), cfg.samples, cfg.template, cfg.seed)


# -- per-model numbers ---------------------------------------------------------------------------
def _slice(x: Any, n: int, start: int = 0) -> Any:
    """Samples start..n-1 of an input: a tensor or a tuple of tensors (ids, mask)."""
    return tuple(t[start:n] for t in x) if isinstance(x, tuple) else x[start:n]


@torch.no_grad()
def _embed(side: Side, x: Any, batch: int) -> torch.Tensor:
    n = num_samples(x)
    out = []
    for s in range(0, n, batch):
        xb = _slice(x, s + batch, start=s)
        out.append(side.now.embed(*xb) if isinstance(xb, tuple) else side.now.embed(xb))
    return torch.cat(out).float().cpu()  # (N, C)


def _kernels(side: Side, x: Any, cfg: ScreenConfig) -> tuple[torch.Tensor, torch.Tensor, str]:
    xn = _slice(x, cfg.ntk_samples)
    names = side.now.ntk_names()
    ntk_cfg = NTKConfig(**{**cfg.ntk.__dict__, "contraction": "trace"})
    kernel = set(names)
    P = sum(p.numel() for n, p in side.now.named_parameters() if n in kernel)
    O = side.now.out_width
    method = choose_method(ntk_cfg, P, O, cfg.ntk_samples, cfg.ntk_samples)
    theta = empirical_ntk(side.now, xn, cfg=ntk_cfg, names=names)
    theta0 = empirical_ntk(side.init, xn, cfg=ntk_cfg, names=side.init.ntk_names())
    return theta.double().cpu(), theta0.double().cpu(), method


def _input_agop(side: Side, x: Any, cfg: ScreenConfig) -> Spectrum:
    xa = _slice(x, cfg.agop_samples)
    if side.tokenizer is None:  # vision: AGOP over the backbone's image patches
        m = agop(side.now, xa, patch_size=side.patch_size)
    else:  # language: AGOP over token input embeddings
        ids, mask = xa
        with torch.no_grad():
            embeds = side.now.model.get_input_embeddings()(ids)
        m = agop(lambda e: side.now.project(side.now.embed_tokens(e, mask)), embeds)
    return spectrum(m.cpu(), cfg.agop_rel_tol)


def _layer_ratios(side: Side, x: Any, cfg: ScreenConfig) -> dict[str, float]:
    """AGOP ratio per block, with respect to each block's input (Radhakrishnan et al.)."""
    layers = side.now.agop_layers()
    if not layers:
        return {}
    xa = _slice(x, cfg.agop_samples)
    if side.tokenizer is None:
        xa = xa.detach().clone().requires_grad_(True)  # block inputs carry a gradient even if frozen
        mats = layer_agops(side.now, xa, layers)
    else:
        mats = layer_agops(lambda t: side.now(*t), xa, layers)
    return {k: spectrum(m.cpu(), cfg.agop_rel_tol).ratio for k, m in mats.items()}


def _model_type(side: Side) -> str:
    """The first Hugging Face ``config.model_type`` inside the model (the language model of a bridged
    backbone, the vision model of a pixel backbone)."""
    return next((m.config.model_type for m in side.now.modules()
                 if isinstance(getattr(getattr(m, "config", None), "model_type", None), str)), "")


@torch.no_grad()
def _text_layers(side: Side, x: tuple, batch: int) -> list[torch.Tensor]:
    """Mean-pooled (over real tokens) hidden states of every layer of a language side: L + 1 (N, C)."""
    emb, out = side.now, []
    for s in range(0, num_samples(x), batch):
        ids, mask = _slice(x, s + batch, start=s)
        embeds = emb.model.get_input_embeddings()(ids)
        hs = emb.model(inputs_embeds=embeds, attention_mask=emb.model_mask(mask, embeds.dtype),
                       output_hidden_states=True).hidden_states
        w = mask[:, :, None].float()  # (B, T, 1)
        out.append([((h.float() * w).sum(1) / w.sum(1)).cpu() for h in hs])
    return [torch.cat(layer) for layer in zip(*out)]


def _layer_feats(side: Side, x: Any, cfg: ScreenConfig) -> list[torch.Tensor]:
    """Mean-pooled features of every layer on all paired inputs: L + 1 tensors (N, C)."""
    if side.tokenizer is None:
        return layer_features(side.now.backbone, x, cfg.batch_size, pooling="mean")
    return _text_layers(side, x, cfg.batch_size)


def model_phase(side: Side, kind: str, x: Any, cfg: ScreenConfig, labels: torch.Tensor | None = None) -> ModelPhase:
    """Kernel, stability, AGOP spectrum, embeddings and (with ``labels`` and ``cfg.geometry``) layer
    geometry of one model on its inputs ``x``, each computed once and reused by all its pairs. A
    language model's embedding is its last layer's mean-pooled features: one forward pass gives both."""
    feats = _layer_feats(side, x, cfg) if cfg.geometry and labels is not None else None
    z = feats[-1] if feats is not None and side.tokenizer is not None else _embed(side, x, cfg.batch_size)
    theta, theta0, method = _kernels(side, x, cfg)
    geometry = None if feats is None else layer_geometry(feats, layer_names(len(feats)), labels.cpu(),
                                                         cfg.geometry_bins)
    return ModelPhase(side.name, kind, kernel_similarity(theta, theta0), method, _input_agop(side, x, cfg),
                      _layer_ratios(side, x, cfg), theta, z, _model_type(side), geometry)


def vision_inputs(side: Side, pairs: Pairs, data: DataConfig, device: torch.device) -> torch.Tensor:
    if side.mean is not None:  # the model's own normalisation (an image model, a run directory)
        data = dataclasses.replace(data, mean=list(side.mean), std=list(side.std))
    return preprocess_eval(pairs.images, side.image_size, data).to(device)  # (N, 3, S, S)


def language_inputs(side: Side, pairs: Pairs, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    ids, mask = tokenize(side.tokenizer, pairs.captions)
    return ids.to(device), mask.to(device)


# -- pairs ---------------------------------------------------------------------------------------
def pair_row(v: ModelPhase, lang: ModelPhase, labels: torch.Tensor, cfg: ScreenConfig) -> dict:
    """One table row: per-model S and AGOP ratio, S_cross, alignment top-1 and the pair's phase."""
    s_cross = kernel_similarity(v.theta, lang.theta)
    align = alignment_score(v.z, lang.z, groups=labels, method=cfg.align_method,
                            test_fraction=cfg.align_test_fraction, ridge=cfg.ridge, seed=cfg.seed)
    return {
        "vision": v.name, "language": lang.name,
        "S_v": v.s, "phase_v": v.phase, "S_l": lang.s, "phase_l": lang.phase,
        "S_cross": s_cross, "phase": phase_label(s_cross),
        "S_cross_centered": kernel_similarity(v.theta, lang.theta, centered=True),
        "agop_ratio_v": v.agop.ratio, "agop_ratio_l": lang.agop.ratio,
        "align_top1": align.top1, "align_chance": align.chance,
        "fails": align.top1 < cfg.fail_ratio * align.chance,  # predictors.failed, stated there
    }


def screen(cfg: ScreenConfig, pairs: Pairs | None = None, progress: bool = True) -> tuple[list[dict], dict]:
    """Screen every vision x language pair; returns the table rows and per-model details. Each model's
    kernels, AGOP, embeddings and geometry are computed once and reused by all its pairs."""
    check_screen_config(cfg)
    device = resolve_device(cfg.device)
    pairs = pairs or load_pairs(cfg)
    models: dict[str, ModelPhase] = {}
    bar = tqdm(total=len(cfg.vision) + len(cfg.language), desc="phase", disable=not progress)
    for name in cfg.vision:
        side = load_vision(name, cfg.image_size, cfg.patch_size, cfg.out_dim, cfg.seed)
        side.now.to(device), side.init.to(device)
        x = vision_inputs(side, pairs, cfg.data, device)
        models[f"vision:{name}"] = model_phase(side, "vision", x, cfg, pairs.labels)
        bar.update()
    for name in cfg.language:
        side = load_language(name, cfg.out_dim, cfg.seed, cfg.token_embeddings)
        side.now.to(device), side.init.to(device)
        x = language_inputs(side, pairs, device)
        models[f"language:{name}"] = model_phase(side, "language", x, cfg, pairs.labels)
        bar.update()
    bar.close()
    rows = [pair_row(models[f"vision:{v}"], models[f"language:{lang}"], pairs.labels, cfg)
            for v in cfg.vision for lang in cfg.language]
    return rows, {k: model_details(m) for k, m in models.items()}


def model_details(m: ModelPhase) -> dict:
    """JSON-ready numbers of one model (AGOP spectrum included)."""
    return {"name": m.name, "side": m.side, "model_type": m.model_type, "S": m.s, "phase": m.phase,
            "ntk_method": m.method,
            "ntk_trace": float(torch.trace(m.theta)), "agop_ratio": m.agop.ratio,
            "agop_effective_rank": m.agop.effective_rank, "agop_rel_tol": m.agop.rel_tol,
            "agop_num_kept": m.agop.num_kept, "agop_layer_ratios": m.layer_ratios,
            "agop_eigenvalues": m.agop.eigenvalues,
            "geometry": m.geometry, "geometry_summary": geometry_summary(m.geometry) if m.geometry else None}


# -- output --------------------------------------------------------------------------------------
COLUMNS = ["vision", "language", "S_v", "phase_v", "S_l", "phase_l", "S_cross", "phase", "S_cross_centered",
           "agop_ratio_v", "agop_ratio_l", "align_top1", "align_chance", "fails"]


def to_markdown(rows: list[dict]) -> str:
    """The screening table in Markdown, one line per pair."""
    return markdown_table(rows, COLUMNS) + "\n"


def to_csv(rows: list[dict]) -> str:
    return csv_table(rows, COLUMNS)


def plot_landscape(rows: list[dict], path) -> None:
    """Phase landscape: S_cross against the language model's AGOP ratio, coloured by alignment."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for lo, hi, name, colour in ((0, 0.5, "chaotic", "#f4cccc"), (0.5, 0.9, "optimal", "#d9ead3"), (0.9, 1.05, "lazy", "#cfe2f3")):
        ax.axhspan(lo, hi, color=colour, alpha=0.6, lw=0)
        ax.text(0.01, (lo + min(hi, 1.0)) / 2, name, transform=ax.get_yaxis_transform(), va="center", fontsize=8)
    x = [max(r["agop_ratio_l"], 1.0) if math.isfinite(r["agop_ratio_l"]) else 1.0 for r in rows]
    sc = ax.scatter(x, [r["S_cross"] for r in rows], c=[r["align_top1"] for r in rows], cmap="viridis",
                    vmin=0, vmax=1, edgecolors="k", zorder=3)
    for xi, r in zip(x, rows):
        ax.annotate(f"{r['vision']} x {r['language']}", (xi, r["S_cross"]), fontsize=7, xytext=(4, 4),
                    textcoords="offset points")
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    lo, hi = min(x), max(x)
    ax.set_xlim(lo / 3, hi * 3)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("language-model AGOP ratio (largest / smallest non-negligible eigenvalue)")
    ax.set_ylabel("S_cross = S(Theta_v, Theta_l)")
    fig.colorbar(sc, ax=ax, label="alignment top-1 (held out)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
