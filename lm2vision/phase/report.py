"""What ``lm2v phase`` writes: the per-pair table (CSV, Markdown, JSON), the phase landscape, the
by-family table (the seed's Table 1), the predictor table, the layer geometry of every model, an
optional alignment-training table (``lm2v align``'s results), all in one self-contained
``report.html`` (figures embedded) beside ``report.md``."""
from __future__ import annotations

import json
import math
from pathlib import Path

from ..analysis.geometry import plot_geometry
from ..analysis.report import Section, Table, write_report
from ..config import to_dict
from ..errors import Lm2vError
from ..models.arch import ARCH
from ..utils.io import atomic_write_json, atomic_write_text
from .predictors import PREDICTOR_COLUMNS, predictor_table, predictors_csv, predictors_markdown
from .screen import COLUMNS, plot_landscape, to_csv, to_markdown
from .similarity import phase_label


def family(model_type: str) -> str:
    """A model's family: its ``model_type``'s family in the architecture table, else the model_type."""
    spec = ARCH.get(model_type)
    return spec.family if spec is not None else (model_type or "unknown")


def by_family(details: dict, rows: list[dict]) -> list[dict]:
    """The seed's Table 1: per side and family, the mean S (and its phase), the AGOP ratio range, the
    mean compression (when geometry ran) and the mean alignment top-1 of the family's pairs."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for m in details.values():
        groups.setdefault((m["side"], family(m["model_type"])), []).append(m)
    out = []
    for (side, fam), ms in groups.items():
        key = "vision" if side == "vision" else "language"
        names = {m["name"] for m in ms}
        aligns = [r["align_top1"] for r in rows if r[key] in names]
        comps = [m["geometry_summary"]["compression"] for m in ms if m.get("geometry_summary")]
        avg_s = sum(m["S"] for m in ms) / len(ms)
        out.append({"side": side, "family": fam, "models": len(ms), "avg_S": avg_s, "phase": phase_label(avg_s),
                    "agop_min": min(m["agop_ratio"] for m in ms), "agop_max": max(m["agop_ratio"] for m in ms),
                    "compression": sum(comps) / len(comps) if comps else None,
                    "avg_align_top1": sum(aligns) / len(aligns) if aligns else None})
    return out


def load_align_results(path: str | Path) -> list[dict]:
    """Rows of an ``lm2v align`` results file: a JSON list of rows, or an object holding one under
    ``rows`` / ``methods`` / ``results`` / ``table`` (columns method, examples_to_target, final_top1
    shown first, any others kept)."""
    p = Path(path).expanduser()
    try:
        data = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise Lm2vError(f"cannot read --align-results {path}: {e}") from None
    if isinstance(data, dict):
        data = next((data[k] for k in ("rows", "methods", "results", "table") if isinstance(data.get(k), list)), None)
    if not isinstance(data, list) or not data or not all(isinstance(r, dict) for r in data):
        raise Lm2vError(f"--align-results {path}: expected a list of rows (or an object with 'rows'), "
                        "each with method, examples_to_target, final_top1")
    first = ["method", "examples_to_target", "final_top1"]
    return [{**{k: r.get(k) for k in first}, **{k: v for k, v in r.items() if k not in first}} for r in data]


def _finite(rows: list[dict]) -> list[dict]:
    return [{k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in r.items()} for r in rows]


def _geometry_section(details: dict, out: Path) -> Section | None:
    tables = {k: m["geometry"] for k, m in details.items() if m.get("geometry")}
    if not tables:
        return None
    fig = out / "figures" / "geometry.png"
    plot_geometry(tables, fig)
    summary = [{"model": k, **details[k]["geometry_summary"]} for k in tables]
    per_layer = [{"model": k, **r} for k, t in tables.items() for r in t]
    text = ("Per layer, mean-pooled over tokens, on all paired samples: participation ratio of the feature "
            "covariance, spectral decay alpha (log-log fit over the non-negligible eigenvalues), I(X;T) and "
            "I(Y;T) in bits by equal-width binning per unit (Shwartz-Ziv & Tishby; X = sample identity, Y = "
            "class); compression = 1 - I(X;T_last) / I(X;T_first). Computed once per model.")
    return Section("Layer geometry", text, [fig], [Table("per model", summary), Table("per layer", per_layer)])


def write_outputs(rows: list[dict], details: dict, cfg, out: Path, align_rows: list[dict] | None = None) -> str:
    """Write every output of a screen into ``out``; return the Markdown printed to the terminal."""
    md = to_markdown(rows)
    atomic_write_text(out / "table.md", md)
    atomic_write_text(out / "table.csv", to_csv(rows))
    families = by_family(details, rows)
    preds = predictor_table(rows, cfg.fail_ratio, cfg.seed)
    pred_md = predictors_markdown(preds, cfg.fail_ratio)
    atomic_write_text(out / "predictors.md", pred_md)
    atomic_write_text(out / "predictors.csv", predictors_csv(preds))
    atomic_write_json(out / "results.json", {"rows": _finite(rows), "models": details, "by_family": _finite(families),
                                             "predictors": _finite(preds), "alignment_training": align_rows,
                                             "config": to_dict(cfg)})
    fig = out / "phase_landscape.png"
    plot_landscape(rows, fig)
    sections = [
        Section("Pairs", "Per pair: each model's S against its initialisation, S_cross = S(Theta_v, Theta_l), "
                "the input-AGOP ratios and the held-out alignment top-1 (fails: below "
                f"{cfg.fail_ratio:g} x chance).", [fig], [Table("pairs", [{c: r[c] for c in COLUMNS} for r in rows])]),
        Section("By family", "The seed's Table 1: per side and family (architecture table), mean S, AGOP ratio "
                "range, mean compression (layer geometry) and mean alignment of the family's pairs.", [],
                [Table("by family", families)]),
        Section("Predictors", pred_md.split("\n\n")[0] + ". Seed rules on all pairs; thresholds fitted on a seeded "
                "half, scored on the other.", [], [Table("predictors", [{c: r[c] for c in PREDICTOR_COLUMNS}
                                                                          for r in preds])]),
    ]
    geometry = _geometry_section(details, out)
    if geometry:
        sections.append(geometry)
    if align_rows:
        sections.append(Section("Alignment training", "lm2v align: examples seen until the target alignment and "
                                "the final held-out top-1 per method (the seed's Table 2).", [],
                                [Table("alignment training", align_rows)]))
    write_report(out, "lm2v phase", sections)
    return md + "\n" + pred_md
