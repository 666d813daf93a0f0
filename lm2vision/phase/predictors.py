"""The seed's failure predictors, checked on a screen's pairs (rows of :func:`lm2vision.phase.screen.screen`).

Definitions (stated once):

- **failure**: a pair fails when its held-out alignment top-1 is below ``fail_ratio`` x its chance
  level (``align_top1 < fail_ratio * align_chance``; default 2x chance).
- **scores** (higher = more likely to fail), with the AGOP ratio of a pair = the larger of its two
  models' input-AGOP ratios (the seed does not say which side; its failing ratios, 1e7-1e8, are the
  GPT language models', and the max covers either side):

  - ``agop``: log10(AGOP ratio); the seed's rule: AGOP ratio > 1e6, i.e. score > 6.
  - ``dntk_x_log_agop``: |S_v - S_l| x log10(AGOP ratio); the seed's rule: > 2.5.
  - ``dntk``: |S_v - S_l|; the seed's rule: > 0.5.

- **fitted thresholds**: a seeded half of the pairs (numpy ``default_rng(seed).permutation``; the
  first ceil(n / 2) fit) picks, for each score, the threshold with the best accuracy among the
  midpoints of its sorted distinct values (and below / above all of them; ties: the lowest);
  the other half scores it.
- **metrics** (scikit-learn): accuracy, precision and recall of "flagged = score > threshold" for
  the positive class "fails", and ROC-AUC of the raw score. Undefined numbers (precision with no
  pair flagged, recall with no failing pair, ROC-AUC with one class only) are None, never a made-up 0.
"""
from __future__ import annotations

import math
import warnings
from typing import Callable, Sequence

import numpy as np

from ..errors import Lm2vError, Lm2vWarning
from ..utils.tables import csv_table, markdown_table


def failed(row: dict, fail_ratio: float = 2.0) -> bool:
    """The failure definition: alignment top-1 below ``fail_ratio`` x chance."""
    return row["align_top1"] < fail_ratio * row["align_chance"]


def _log_agop(row: dict) -> float:
    ratio = max(row["agop_ratio_v"], row["agop_ratio_l"])
    return math.log10(ratio) if ratio > 0 else math.nan


# name -> (score of a row, the seed's threshold on that score)
SCORES: dict[str, tuple[Callable[[dict], float], float]] = {
    "agop": (_log_agop, 6.0),
    "dntk_x_log_agop": (lambda r: abs(r["S_v"] - r["S_l"]) * _log_agop(r), 2.5),
    "dntk": (lambda r: abs(r["S_v"] - r["S_l"]), 0.5),
}
RULES = {"agop": "AGOP ratio > 1e6", "dntk_x_log_agop": "|S_v - S_l| x log10(AGOP) > 2.5",
         "dntk": "|S_v - S_l| > 0.5"}


def _none_if_nan(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def metrics(y_true: Sequence[bool], score: Sequence[float], threshold: float) -> dict:
    """Accuracy, precision, recall of ``score > threshold`` against ``y_true`` (1 = fails) and the
    ROC-AUC of the raw score; undefined ones are None."""
    from sklearn.metrics import accuracy_score, precision_score, recall_score, roc_auc_score

    y = np.asarray(y_true, dtype=bool)
    s = np.asarray(score, dtype=np.float64)
    pred = s > threshold
    if len(y) == 0:
        return {"n": 0, "failures": 0, "accuracy": None, "precision": None, "recall": None, "roc_auc": None}
    return {
        "n": int(len(y)), "failures": int(y.sum()),
        "accuracy": float(accuracy_score(y, pred)),
        "precision": _none_if_nan(precision_score(y, pred, zero_division=np.nan)),
        "recall": _none_if_nan(recall_score(y, pred, zero_division=np.nan)),
        "roc_auc": float(roc_auc_score(y, s)) if 0 < y.sum() < len(y) else None,
    }


def fit_threshold(y_true: Sequence[bool], score: Sequence[float]) -> float:
    """The threshold t maximising the accuracy of ``score > t`` (candidates: midpoints of the sorted
    distinct scores, and one below / above all; ties: the lowest t)."""
    y = np.asarray(y_true, dtype=bool)
    s = np.asarray(score, dtype=np.float64)
    u = np.unique(s)
    cands = np.concatenate([[u[0] - 1.0], (u[:-1] + u[1:]) / 2, [u[-1] + 1.0]])
    acc = [((s > t) == y).mean() for t in cands]
    return float(cands[int(np.argmax(acc))])


def split_halves(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(fit, test) indices: a seeded permutation, the first ceil(n / 2) fit."""
    perm = np.random.default_rng(seed).permutation(n)
    k = math.ceil(n / 2)
    return perm[:k], perm[k:]


def _finite_rows(rows: list[dict], name: str) -> tuple[list[dict], list[float]]:
    """Rows with a finite score; the others are named in one warning (never dropped silently)."""
    fn = SCORES[name][0]
    kept, scores, dropped = [], [], []
    for r in rows:
        s = fn(r)
        if math.isfinite(s):
            kept.append(r)
            scores.append(s)
        else:
            dropped.append(f"{r['vision']} x {r['language']}")
    if dropped:
        warnings.warn(f"predictor {name}: {len(dropped)} pair(s) without a finite score left out: "
                      f"{', '.join(dropped)}", Lm2vWarning, stacklevel=3)
    return kept, scores


def predictor_table(rows: list[dict], fail_ratio: float = 2.0, seed: int = 0) -> list[dict]:
    """Per score: the seed's rule on all pairs, and a threshold fitted on one half scored on the other."""
    if fail_ratio <= 0:
        raise Lm2vError(f"fail_ratio must be > 0, got {fail_ratio}")
    out = []
    for name, (_, seed_t) in SCORES.items():
        kept, scores = _finite_rows(rows, name)
        y = [failed(r, fail_ratio) for r in kept]
        out.append({"predictor": name, "rule": RULES[name], "threshold": seed_t, "evaluated_on": "all pairs",
                    **metrics(y, scores, seed_t)})
        fit, test = split_halves(len(kept), seed)
        if len(fit) == 0 or len(test) == 0:
            out.append({"predictor": name, "rule": "fitted", "threshold": None, "evaluated_on": "held-out half",
                        **metrics([], [], 0.0)})
            continue
        t = fit_threshold([y[i] for i in fit], [scores[i] for i in fit])
        out.append({"predictor": name, "rule": f"fitted: score > {t:.4g}", "threshold": t,
                    "evaluated_on": f"held-out half (fit on {len(fit)})",
                    **metrics([y[i] for i in test], [scores[i] for i in test], t)})
    return out


PREDICTOR_COLUMNS = ["predictor", "rule", "threshold", "evaluated_on", "n", "failures", "accuracy", "precision",
                     "recall", "roc_auc"]


def predictors_markdown(table: list[dict], fail_ratio: float) -> str:
    """The predictor table in Markdown with the failure definition above it."""
    return (f"failure: align_top1 < {fail_ratio:g} x chance; AGOP = max of the pair's two ratios; "
            "None = undefined (one class absent, or nothing flagged)\n\n"
            + markdown_table(table, PREDICTOR_COLUMNS) + "\n")


def predictors_csv(table: list[dict]) -> str:
    return csv_table(table, PREDICTOR_COLUMNS, lineterminator="\n")
