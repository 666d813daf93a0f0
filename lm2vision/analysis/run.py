"""``analyze_run``: every analysis on one run directory, written as ``report.html`` + ``report.md``;
``compare_runs``: one table and overlaid curves across runs."""
from __future__ import annotations

import csv
import io
import re
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional

import torch
import torch.nn.functional as F

from ..config import bounds, choices, validate
from ..errors import Lm2vError, Lm2vWarning
from ..train.rundir import read_metrics, read_run_config
from ..train.loop import extract_features
from ..utils.io import atomic_write_json, atomic_write_text
from ..utils.tables import csv_table
from .landscape import DIRECTIONS
from .report import Section, Table, write_report

PARTS = ("curves", "weights", "landscape", "features", "alignment", "layers", "geometry")
NEEDS_SAMPLE = {"landscape", "features", "alignment", "layers", "geometry"}


@dataclass
class LandscapeConfig:
    """The 2-D loss slice: directions random | filter | training, a grid x grid on [-range, range]^2."""

    # random (unit global norm, the authors) is nearly flat at range 1 for >1M params
    directions: str = field(default="filter", metadata=choices(*DIRECTIONS))
    grid: int = field(default=11, metadata=bounds(ge=2))  # 21 as the paper's figure costs ~4x more
    range: float = field(default=1.0, metadata=bounds(gt=0))
    # images (from the analysis sample) the loss is averaged over; cost is linear in it
    samples: int = field(default=32, metadata=bounds(ge=1))
    batch_size: int = field(default=64, metadata=bounds(ge=1))
    chunk: int = field(default=1, metadata=bounds(ge=1))  # > 1: grid points per vmap call (may help on GPU)
    trainable_only: bool = True
    seed: int = 0


@dataclass
class AnalyzeConfig:
    """What ``lm2v analyze`` computes."""

    skip: List[str] = field(default_factory=list, metadata=choices(*PARTS))  # parts not to run
    split: str = field(default="test", metadata=choices("test", "val"))  # where the fixed sample comes from
    samples: int = field(default=1000, metadata=bounds(ge=10))  # images for t-SNE, cluster numbers, layer CKA
    sample_seed: int = 0
    batch_size: int = field(default=128, metadata=bounds(ge=1))
    threshold: float = 1.0  # the authors' outlier |w| > 1
    z_k: float = 6.0  # scale-free outlier |w - mean| > k std
    references: bool = True  # compare weights with the run's LM pretrained and from scratch
    compare_models: List[str] = field(default_factory=list)
    # layers part: per-layer features pooled by mean over tokens (comparable across families) or by
    # each model's own pool (the last token of a causal model, which the head reads)
    layer_pooling: str = field(default="mean", metadata=choices("mean", "model"))
    # geometry part: equal-width bins per unit for the information plane (Shwartz-Ziv & Tishby use 30);
    # spectral decay fitted on ranks 1..geometry_max_rank (null: every non-negligible eigenvalue)
    geometry_bins: int = field(default=30, metadata=bounds(ge=1))
    geometry_max_rank: Optional[int] = field(default=None, metadata=bounds(ge=2))
    tsne_seed: int = 42
    sklearn_threads: Optional[int] = 1  # cap for t-SNE / CV (None: no cap); 1 is fastest on a busy CPU
    align_k: int = field(default=10, metadata=bounds(ge=1))
    align_images: int = field(default=256, metadata=bounds(ge=1))
    landscape: LandscapeConfig = field(default_factory=LandscapeConfig)
    device: str = "cpu"
    progress: bool = True


@dataclass
class Sample:
    """A fixed, seeded sample of one split, preprocessed for the run's model."""

    x: torch.Tensor  # (N, 3, S, S) normalised float
    y: torch.Tensor  # (N,)
    classes: list[str]
    raw: torch.Tensor  # (N, 3, H, W) uint8 as stored: other models preprocess it their own way


def load_sample(run_cfg, cfg: AnalyzeConfig) -> Sample:
    """``cfg.samples`` images of the run's dataset split (seeded choice), eval-preprocessed."""
    from ..data import eval_transform, load_imageset_splits

    splits = load_imageset_splits(run_cfg.data)
    images = getattr(splits, cfg.split)
    g = torch.Generator().manual_seed(cfg.sample_seed)
    index = torch.randperm(len(images), generator=g)[: cfg.samples]
    sub = images.subset(index)
    x = eval_transform(sub.images, run_cfg.model.image_size, run_cfg.data)  # (N, 3, S, S)
    return Sample(x, sub.labels, list(sub.classes), sub.images)


# -- the six parts --------------------------------------------------------------------------


def part_curves(run: Path, run_cfg, out: Path) -> Section:
    """Train / validation curves of the run (and of the run it started from, if any)."""
    from .curves import final_numbers, plot_curves

    runs = {}
    if run_cfg.init and (Path(run_cfg.init) / "metrics.jsonl").is_file():
        runs[f"{Path(run_cfg.init).name} (init)"] = read_metrics(run_cfg.init)
    runs[run.name] = read_metrics(run)
    plot_curves(runs, out / "figures" / "curves.png")
    rows = [{"run": k, **final_numbers(v)} for k, v in runs.items()]
    return Section("Curves", "Final-epoch numbers (never the best epoch).", [out / "figures" / "curves.png"],
                   [Table("final numbers", rows)])


def part_weights(loaded, cfg: AnalyzeConfig, out: Path, notes: list[str]) -> Section:
    """Outlier shares per block and overall; histograms overlaid with reference models."""
    from .models import learnable_weights, load_compare_model, reference_backbone
    from .weights import plot_weight_histograms, weight_stats

    models = {"run (final)": learnable_weights(loaded.model)}
    if cfg.references:
        for label, pretrained in (("language-pretrained", True), ("scratch", False)):
            try:
                models[label] = learnable_weights(reference_backbone(loaded.cfg.model, pretrained))
            except Lm2vError as e:  # e.g. offline hub: said in the report, not hidden
                notes.append(f"weights: no {label} reference ({e})")
    for spec in cfg.compare_models:
        label, model = load_compare_model(spec)
        models[label] = learnable_weights(model)
    stats = {k: weight_stats(v, cfg.threshold, cfg.z_k) for k, v in models.items()}
    stats["run (trainable only)"] = weight_stats(loaded.model, cfg.threshold, cfg.z_k, trainable_only=True)
    fig = out / "figures" / "weight_hist.png"
    plot_weight_histograms(models, fig, threshold=cfg.threshold)
    overall = [{"model": k, **s.aggregate()} for k, s in stats.items()]
    run_stats = stats["run (final)"]
    blocks = [{"block": b, **run_stats.aggregate(b)} for b in run_stats.blocks()]
    by_block = _share_by_block(stats)
    text = (f"Outliers: |w| > {cfg.threshold} (the authors' definition, LayerNorm included) and "
            f"|w - mean| > {cfg.z_k} std per tensor (scale-free); excess kurtosis numel-weighted.")
    return Section("Weight statistics", text, [fig],
                   [Table("overall", overall), Table("run (final) per block", blocks),
                    Table("abs outlier share per block, all models", by_block)])


def _share_by_block(stats: dict) -> list[dict]:
    """Rows = blocks (union over models), columns = models: the authors' |w| > threshold share."""
    blocks = list(dict.fromkeys(b for s in stats.values() for b in s.blocks()))
    return [{"block": b, **{k: (s.aggregate(b)["abs_outlier_share"] if b in s.blocks() else None)
                            for k, s in stats.items()}} for b in blocks]


def _loss_batches(sample: Sample, lc: LandscapeConfig, device: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    x, y = sample.x[: lc.samples].to(device), sample.y[: lc.samples].to(device)
    return list(zip(x.split(lc.batch_size), y.split(lc.batch_size)))


def part_landscape(loaded, sample: Sample, cfg: AnalyzeConfig, out: Path) -> Section:
    """2-D loss slice around the final weights (true labels of the sample, plain cross-entropy)."""
    from .landscape import evaluate_grid, plot_landscape, random_directions, trainable_params, training_directions

    lc = cfg.landscape
    theta = trainable_params(loaded.model, lc.trainable_only)
    if lc.directions == "training":
        if loaded.init is None:
            raise Lm2vError(f"{loaded.path} has no init.safetensors: use landscape.directions=random or filter")
        theta = {n: t for n, t in theta.items() if n in loaded.init}
        d1, d2 = training_directions({n: loaded.init[n] for n in theta}, theta, seed=lc.seed)
    else:
        d1, d2 = random_directions(theta, lc.directions, seed=lc.seed)
    g = torch.linspace(-lc.range, lc.range, lc.grid)
    t0 = time.perf_counter()
    land = evaluate_grid(loaded.model, F.cross_entropy, _loss_batches(sample, lc, cfg.device), d1, d2, g, g,
                         chunk=lc.chunk, directions=lc.directions, progress=cfg.progress)
    seconds = time.perf_counter() - t0
    figs = [out / "figures" / "landscape_contour.png", out / "figures" / "landscape_surface.png"]
    plot_landscape(land, *figs)
    atomic_write_json(out / "landscape.json", {"alphas": land.alphas.tolist(), "betas": land.betas.tolist(),
                                               "loss": land.loss.tolist()})
    row = {**land.numbers(), "samples": min(lc.samples, len(sample.y)), "params": sum(t.numel() for t in theta.values()),
           "seconds": round(seconds, 1)}
    text = ("L(theta_T + a d1 + b d2) on true labels; " + ("d1 = theta_T - theta_0 (a = -1 is the initial weights)"
            if lc.directions == "training" else f"{lc.directions} directions") + ".")
    return Section("Loss landscape", text, figs, [Table("landscape", [row])])


def part_features(loaded, sample: Sample, cfg: AnalyzeConfig, out: Path) -> Section:
    """t-SNE and PCA of pooled features, with cluster-quality numbers."""
    from .features import feature_geometry

    model = loaded.model.to(cfg.device)
    feats = extract_features(model, sample.x.to(cfg.device), cfg.batch_size, cfg.progress).cpu()
    metrics = feature_geometry(feats, sample.y, sample.classes, out / "figures", seed=cfg.tsne_seed,
                               threads=cfg.sklearn_threads)
    text = f"Pooled ({getattr(model, 'pooling', 'model')}) features of {len(sample.y)} {cfg.split} images."
    return Section("Feature geometry", text, [out / "figures" / "tsne.png", out / "figures" / "pca.png"],
                   [Table("cluster quality", [metrics])])


def part_alignment(loaded, sample: Sample, cfg: AnalyzeConfig, out: Path, notes: list[str]) -> Section:
    """Patch-embedding covariance vs patch covariance, before (init) and after (final)."""
    from .alignment import patch_embed_alignment, plot_eigen_mapping

    key = "patch_embed.proj.weight"
    images = sample.x[: cfg.align_images]
    states = {}
    if loaded.init is not None and key in loaded.init:
        states["before (init)"] = loaded.init[key]
    else:
        notes.append("alignment: the patch embedding did not train in this run (no 'before' state)")
    states["after (final)"] = loaded.model.patch_embed.proj.weight.detach().cpu()
    results = {k: patch_embed_alignment(w, images, cfg.align_k) for k, w in states.items()}
    fig = out / "figures" / "eigen_mapping.png"
    plot_eigen_mapping(results, fig)
    rows = [{"weights": k, **a.numbers()} for k, a in results.items()]
    text = ("Theorem 4.1: eigenbasis of Sigma_W = W^T W / C vs that of the patch covariance Sigma_X; energy = "
            "||U_k^T V_k||_F^2 / k (chance k / D), max-cosine = mean over top-k of max |cos|.")
    return Section("Covariance alignment", text, [fig], [Table("alignment", rows)])


def part_layers(loaded, sample: Sample, cfg: AnalyzeConfig, out: Path, notes: list[str]) -> Section:
    """Linear CKA between every layer of the run and of each compare model that takes images, on the
    sample; the pairs at matched relative depth (with the mean cosine where widths match)."""
    from .features import layer_features, layer_names
    from .models import load_image_model

    feats_a = layer_features(loaded.model, sample.x, cfg.batch_size, cfg.layer_pooling)
    run = (f"{loaded.path.name} (run)", layer_names(len(feats_a)), feats_a)
    numbers, skipped, stems = {}, [], set()
    for spec in cfg.compare_models:
        cm = load_image_model(spec, loaded.cfg)
        if cm is None:
            skipped.append(spec)
        else:
            numbers[cm.label] = _compare_layers(run, cm, sample, cfg, out, _unique_stem(cm.label, stems))
    if skipped:
        _skip_warning(skipped, notes)
    atomic_write_json(out / "layers.json", numbers)
    text = (f"Linear CKA (Kornblith et al. 2019) of the {cfg.layer_pooling}-pooled features of every layer "
            "(embed = input of the first block; the last is forward_features, after the final norm, for lm2v "
            "backbones, and hidden_states[-1] for Hugging Face models) of this run (rows) and of each "
            f"compare model (columns), on the same {len(sample.y)} {cfg.split} images. Matched depth: layer i "
            "of La against round(i (Lb - 1) / (La - 1)); mean cosine only where widths match, and meaningful "
            "only for the same architecture (coordinates that correspond).")
    summary = [_layer_summary(label, n) for label, n in numbers.items()]
    tables = [Table(f"matched depth: {label}", n["matched"]) for label, n in numbers.items()]
    figures = [out / "figures" / f"{Path(n['csv']).stem}.png" for n in numbers.values()]
    return Section("Layer similarity", text, figures, [Table("CKA per compare model", summary), *tables])


def part_geometry(loaded, sample: Sample, cfg: AnalyzeConfig, out: Path, notes: list[str]) -> Section:
    """Participation ratio, spectral decay and the binned information plane of every layer of the run
    (and of each compare model that takes images), on the sample; ``geometry.csv`` + a figure."""
    from ..data import eval_transform
    from .features import layer_features, layer_names
    from .geometry import geometry_summary, layer_geometry, plot_geometry
    from .models import load_image_model

    models = {f"{loaded.path.name} (run)": layer_features(loaded.model, sample.x, cfg.batch_size, cfg.layer_pooling)}
    skipped = []
    for spec in cfg.compare_models:
        cm = load_image_model(spec, loaded.cfg)
        if cm is None:
            skipped.append(spec)
            continue
        x = eval_transform(sample.raw, cm.image_size, cm.data)
        models[cm.label] = layer_features(cm.model.to(cfg.device), x, cfg.batch_size, cfg.layer_pooling)
    if skipped:
        _skip_warning(skipped, notes, part="geometry")
    tables = {label: layer_geometry(f, layer_names(len(f)), sample.y, cfg.geometry_bins, cfg.geometry_max_rank)
              for label, f in models.items()}
    rows = [{"model": label, **r} for label, t in tables.items() for r in t]
    _write_rows_csv(out / "geometry.csv", rows)
    fig = out / "figures" / "geometry.png"
    plot_geometry(tables, fig)
    ranks = str(cfg.geometry_max_rank) if cfg.geometry_max_rank else "K (every eigenvalue above 1e-10 lambda_1)"
    text = (f"Per layer ({cfg.layer_pooling}-pooled features of {len(sample.y)} {cfg.split} images): participation "
            "ratio (sum lambda)^2 / sum lambda^2 of the feature covariance; spectral decay alpha of lambda_k ~ "
            f"k^-alpha (log-log least squares over ranks 1..{ranks}); I(X;T) and I(Y;T) in bits by binning each "
            f"unit into {cfg.geometry_bins} equal-width bins over the layer's range (Shwartz-Ziv & Tishby), X = the "
            "image's identity; compression = 1 - I(X;T_last) / I(X;T_first).")
    summary = [{"model": label, **geometry_summary(t)} for label, t in tables.items()]
    return Section("Layer geometry", text, [fig], [Table("summary", summary), Table("per layer", rows)])


def _write_rows_csv(path: Path, rows: list[dict]) -> None:
    atomic_write_text(path, csv_table(rows, lineterminator="\n"))


def _compare_layers(run: tuple, cm, sample: Sample, cfg: AnalyzeConfig, out: Path, stem: str) -> dict:
    """One compare model against the run's layers ``(label, names, features)``: writes
    ``layers/<stem>.csv`` and ``figures/<stem>.png``; returns the numbers for ``layers.json``."""
    from ..data import eval_transform
    from .cka import cka_matrix, plot_cka
    from .features import layer_features, layer_names

    label_a, names_a, feats_a = run
    x = eval_transform(sample.raw, cm.image_size, cm.data)  # (N, 3, S', S') as this model expects
    feats_b = layer_features(cm.model.to(cfg.device), x, cfg.batch_size, cfg.layer_pooling)
    names_b = layer_names(len(feats_b))
    cka = cka_matrix(feats_a, feats_b)  # (La, Lb)
    _write_cka_csv(out / "layers" / f"{stem}.csv", cka, names_a, names_b)
    plot_cka(cka, names_a, names_b, label_a, cm.label, out / "figures" / f"{stem}.png")
    return {"csv": f"layers/{stem}.csv", "layers": names_a, "compare_layers": names_b, "cka": cka.tolist(),
            "matched": _matched_rows(feats_a, feats_b, cka, names_a, names_b)}


def _matched_rows(feats_a, feats_b, cka, names_a, names_b) -> list[dict]:
    from .cka import matched_layers, mean_cosine

    rows = []
    for i, j in enumerate(matched_layers(len(feats_a), len(feats_b))):
        same = feats_a[i].shape[1] == feats_b[j].shape[1]
        rows.append({"layer": names_a[i], "compare_layer": names_b[j], "cka": float(cka[i, j]),
                     "cosine": mean_cosine(feats_a[i], feats_b[j]) if same else None})
    return rows


def _layer_summary(label: str, numbers: dict) -> dict:
    rows, cka = numbers["matched"], numbers["cka"]
    cosines = [r["cosine"] for r in rows if r["cosine"] is not None]
    return {"model": label, "run_layers": len(cka), "model_layers": len(cka[0]),
            "matched_cka_mean": sum(r["cka"] for r in rows) / len(rows), "final_cka": cka[-1][-1],
            "matched_cosine_mean": sum(cosines) / len(cosines) if cosines else None, "table": numbers["csv"]}


def _unique_stem(label: str, taken: set[str]) -> str:
    """A file name stem for ``label`` (``cka_<label>``, odd characters as ``_``), unique in ``taken``."""
    stem = "cka_" + (re.sub(r"[^A-Za-z0-9.-]+", "_", label).strip("_.") or "model")
    k, unique = 1, stem
    while unique in taken:
        k += 1
        unique = f"{stem}_{k}"
    taken.add(unique)
    return unique


def _write_cka_csv(path: Path, cka: torch.Tensor, names_a: list[str], names_b: list[str]) -> None:
    """Rows = the run's layers, columns = the compare model's; the first row and column are names."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["layer", *names_b])
    writer.writerows([name, *(repr(v) for v in row)] for name, row in zip(names_a, cka.tolist()))
    atomic_write_text(path, buf.getvalue())


def _skip_warning(skipped: list[str], notes: list[str], part: str = "layers",
                  why: str = "no image input (neither an lm2vision backbone nor a pixel model)") -> None:
    message = f"{part}: skipped {', '.join(skipped)}: {why}"
    warnings.warn(message, Lm2vWarning, stacklevel=3)
    notes.append(message)


# -- the whole run --------------------------------------------------------------------------


def analyze_run(run: str | Path, out: str | Path, cfg: AnalyzeConfig, log: Callable[[str], None] = print) -> dict:
    """Run every part not in ``cfg.skip`` on ``run``; write the reports into ``out``; return the numbers."""
    from .models import load_run

    validate(cfg)  # a config built in Python skips load_config
    run, out = Path(run), Path(out)
    loaded = load_run(run)
    loaded.model.to(cfg.device)
    todo = [p for p in PARTS if p not in cfg.skip]
    notes: list[str] = []
    if "layers" in todo and not cfg.compare_models:
        todo.remove("layers")
        notes.append("layers: no --compare-model to compare with")
    if "alignment" in todo and not hasattr(loaded.model, "patch_embed"):  # an image model's stem is not one
        todo.remove("alignment")
        _skip_warning([type(loaded.model).__name__], notes, part="alignment",
                      why="the model has no linear patch embedding (Theorem 4.1 is about one)")
    sample = load_sample(loaded.cfg, cfg) if NEEDS_SAMPLE & set(todo) else None
    sections, timings = [], {}
    for part in todo:
        log(f"analyze: {part}")
        t0 = time.perf_counter()
        sections.append(_run_part(part, run, loaded, sample, cfg, out, notes))
        timings[part] = round(time.perf_counter() - t0, 1)
    for n in notes:
        log(f"analyze: note: {n}")
    sections.append(Section("Notes", "; ".join(notes) or "none", [],
                            [Table("seconds per part", [timings]), Table("skipped", [{"parts": ", ".join(cfg.skip) or "none"}])]))
    numbers = {s.title: {t.title: t.rows for t in s.tables} for s in sections}
    atomic_write_json(out / "analysis.json", numbers)
    write_report(out, f"lm2v analyze: {run.name}", sections)
    return numbers


def _run_part(part, run, loaded, sample, cfg, out, notes) -> Section:
    if part == "curves":
        return part_curves(run, loaded.cfg, out)
    if part == "weights":
        return part_weights(loaded, cfg, out, notes)
    if part == "landscape":
        return part_landscape(loaded, sample, cfg, out)
    if part == "features":
        return part_features(loaded, sample, cfg, out)
    if part == "layers":
        return part_layers(loaded, sample, cfg, out, notes)
    if part == "geometry":
        return part_geometry(loaded, sample, cfg, out, notes)
    return part_alignment(loaded, sample, cfg, out, notes)


def compare_runs(runs: list[str | Path], out: str | Path) -> tuple[list[dict], list[dict], list[dict]]:
    """One table of final numbers (plus the run's label ratio, stage, model) and overlaid curves; then
    the runs grouped over seeds, with intervals and paired comparisons. Returns (rows, groups, comparisons)."""
    from .curves import final_numbers, plot_curves

    if not runs:
        raise Lm2vError("compare needs at least one run directory")
    out = Path(out)
    records, rows = {}, []
    for r in map(Path, runs):
        cfg = read_run_config(r)
        label = r.name if r.name not in records else str(r)
        records[label] = read_metrics(r)
        rows.append({"run": label, "stage": cfg.stage, "model": cfg.model.name, "pretrained": cfg.model.pretrained,
                     "label_ratio": cfg.labels.ratio, "trainable_blocks": cfg.trainable.blocks,
                     **final_numbers(records[label])})
    fig = out / "figures" / "curves.png"
    plot_curves(records, fig)
    groups, comps = _intervals(runs)
    atomic_write_json(out / "compare.json", {"runs": rows, "groups": groups, "comparisons": comps})
    sections = [Section("Runs", "", [fig], [Table("final numbers", rows)])]
    if groups:
        text = ("Runs that differ only in their seed form one group. Test accuracy over seeds (mean, std, 95% "
                "t-interval); each later group against the first, paired by seed and test image (95% bootstrap "
                "interval over seeds and images):\n" + "\n".join(f"- {c['verdict']}" for c in comps))
        sections.append(Section("With uncertainty", text, [], [Table("groups", groups), Table(
            "paired comparisons", [{k: v for k, v in c.items() if k != "verdict"} for c in comps])]))
    write_report(out, "lm2v compare", sections)
    return rows, groups, comps


def _intervals(runs: list[str | Path]) -> tuple[list[dict], list[dict]]:
    """Groups over seeds and paired comparisons (:mod:`lm2vision.experiments.compare`); runs without
    per-image predictions (older or dense runs) leave them out, with a warning."""
    from ..experiments.compare import compare_with_intervals
    from ..train.rundir import PREDICTIONS

    missing = [str(r) for r in runs if not (Path(r) / PREDICTIONS).is_file()]
    if missing:
        warnings.warn(f"no intervals or paired comparisons: {len(missing)} run(s) have no {PREDICTIONS} "
                      f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''})", Lm2vWarning)
        return [], []
    try:
        return compare_with_intervals(runs)
    except Lm2vError as e:  # e.g. the same seed twice in a group: the table above still stands
        warnings.warn(f"no intervals or paired comparisons: {e}", Lm2vWarning)
        return [], []
