"""The seed's failure predictors on hand-made tables, the by-family table, the seed2 preset offline,
and ``lm2v phase``'s outputs (one self-contained report) on a 2 x 2 screen of tiny models."""
import csv
import json
import math
import re

import pytest
import torch

from lm2vision.cli.main import main
from lm2vision.errors import Lm2vError, Lm2vWarning
from lm2vision.phase.predictors import fit_threshold, metrics, predictor_table, split_halves
from lm2vision.phase.report import by_family, family, load_align_results

# 8 pairs, chance 0.1, failure = top-1 < 2 x 0.1. Columns: S_v, S_l, AGOP ratio (vision, language), top-1.
# fails:   1 yes, 2 yes, 3 yes, 4 no, 5 no, 6 no, 7 no, 8 yes (0.199 < 0.2)
HAND = [
    (0.75, 0.25, 10.0, 1e7, 0.05),
    (0.25, 0.25, 1e8, 10.0, 0.10),  # the larger AGOP is the vision side's
    (1.0, 0.125, 10.0, 1e5, 0.15),
    (0.5, 0.5, 10.0, 1e3, 0.30),
    (0.75, 0.25, 1e6, 10.0, 0.25),  # exactly 1e6: not flagged (the rule is strict)
    (0.375, 0.25, 10.0, 10 ** 6.5, 0.40),
    (0.125, 0.875, 1e4, 10.0, 0.50),
    (0.75, 0.375, 10.0, 10 ** 7.5, 0.199),
]


def _rows(table):
    return [{"vision": f"v{i}", "language": f"l{i}", "S_v": sv, "S_l": sl, "agop_ratio_v": av, "agop_ratio_l": al,
             "align_top1": top1, "align_chance": 0.1} for i, (sv, sl, av, al, top1) in enumerate(table)]


def test_seed_rules_on_a_hand_made_table():
    """By hand (TP, FN, FP, TN; AUC = share of (failing, working) pairs ordered right, ties 1/2):
    agop  (log10 max AGOP: fails 7, 8, 5, 7.5; works 3, 6, 6.5, 4): TP 1,2,8 FN 3 FP 6 TN 4,5,7;
          AUC (4 + 4 + 2 + 4) / 16.
    dntk x log agop (fails 3.5, 0, 4.375, 2.8125; works 0, 3, 0.8125, 3): TP 1,3,8 FN 2 FP 5,7 TN 4,6;
          AUC (4 + 0.5 + 4 + 2) / 16.
    dntk (fails .5, 0, .875, .375; works 0, .5, .125, .75): TP 3 FN 1,2,8 FP 7 TN 4,5,6;
          AUC (2.5 + 0.5 + 4 + 2) / 16."""
    table = {r["predictor"]: r for r in predictor_table(_rows(HAND), fail_ratio=2.0) if r["evaluated_on"] == "all pairs"}
    expect = {"agop": (6 / 8, 3 / 4, 3 / 4, 14 / 16), "dntk_x_log_agop": (5 / 8, 3 / 5, 3 / 4, 10.5 / 16),
              "dntk": (4 / 8, 1 / 2, 1 / 4, 9 / 16)}
    for name, (acc, prec, rec, auc) in expect.items():
        row = table[name]
        assert (row["n"], row["failures"]) == (8, 4)
        assert [row["accuracy"], row["precision"], row["recall"], row["roc_auc"]] == pytest.approx(
            [acc, prec, rec, auc], abs=1e-12), name
    # a stricter failure definition (top-1 < 1 x chance): only pair 1 fails
    strict = predictor_table(_rows(HAND), fail_ratio=1.0)[0]
    assert strict["failures"] == 1 and strict["recall"] == 1.0 and strict["precision"] == 0.25


def test_undefined_metrics_are_none_not_zero():
    m = metrics([False, False, False], [1.0, 2.0, 3.0], threshold=5.0)  # no failure, nothing flagged
    assert m["accuracy"] == 1.0 and m["precision"] is None and m["recall"] is None and m["roc_auc"] is None
    assert metrics([], [], 0.0)["accuracy"] is None


def test_fitted_threshold_by_hand_and_on_a_separable_table():
    assert fit_threshold([False, False, True, True], [1.0, 2.0, 5.0, 6.0]) == 3.5  # midpoint of 2 and 5
    assert fit_threshold([True, True], [1.0, 2.0]) == 0.0  # all fail: below every score
    fit, test = split_halves(7, seed=0)
    assert sorted([*fit, *test]) == list(range(7)) and (len(fit), len(test)) == (4, 3)
    # failing pairs have AGOP 1e7..1e9, working ones 1e1..1e3: any fitted half separates the other
    sep = [(0.5, 0.5, 10.0, 10.0 ** (7 + i / 3), 0.05) for i in range(6)] + \
          [(0.5, 0.5, 10.0, 10.0 ** (1 + i / 3), 0.5) for i in range(6)]
    row = [r for r in predictor_table(_rows(sep), seed=0) if r["predictor"] == "agop"][1]
    assert row["evaluated_on"] == "held-out half (fit on 6)" and 0 < row["failures"] < 6
    assert [row["accuracy"], row["precision"], row["recall"], row["roc_auc"]] == [1.0, 1.0, 1.0, 1.0]
    assert 3 < row["threshold"] < 7  # between the classes' log10 AGOP


def test_pairs_without_a_finite_score_are_named_in_one_warning():
    rows = _rows(HAND)
    rows[0]["agop_ratio_l"] = math.inf
    with pytest.warns(Lm2vWarning, match=r"1 pair\(s\) without a finite score left out: v0 x l0"):
        table = predictor_table(rows)
    assert table[0]["n"] == 7


def test_by_family_table_on_hand_made_results():
    def model(name, side, model_type, s, agop, comp):
        return {"name": name, "side": side, "model_type": model_type, "S": s, "agop_ratio": agop,
                "geometry_summary": None if comp is None else {"compression": comp}}

    details = {"vision:a": model("a", "vision", "gpt2", 0.2, 10.0, 0.5),
               "vision:b": model("b", "vision", "gpt2", 0.4, 1000.0, 0.1),
               "language:c": model("c", "language", "roberta", 0.95, 1e6, None),
               "language:d": model("d", "language", "mistral", 0.6, 1e7, 0.0)}
    rows = [{"vision": v, "language": lang, "align_top1": top1}
            for v, lang, top1 in (("a", "c", 0.1), ("a", "d", 0.2), ("b", "c", 0.3), ("b", "d", 0.6))]
    table = {(r["side"], r["family"]): r for r in by_family(details, rows)}
    assert list(table) == [("vision", "gpt2"), ("language", "roberta"), ("language", "llama")]  # mistral: llama layout
    gpt = table["vision", "gpt2"]
    assert gpt["models"] == 2 and gpt["avg_S"] == pytest.approx(0.3) and gpt["phase"] == "chaotic"
    assert (gpt["agop_min"], gpt["agop_max"]) == (10.0, 1000.0) and gpt["compression"] == pytest.approx(0.3)
    assert gpt["avg_align_top1"] == pytest.approx(0.3)  # all four pairs
    rob = table["language", "roberta"]
    assert rob["phase"] == "lazy" and rob["compression"] is None and rob["avg_align_top1"] == pytest.approx(0.2)
    assert table["language", "llama"]["phase"] == "optimal"
    assert family("vit") == "vit" and family("") == "unknown"  # not in the table: the model_type itself


def test_align_results_file_is_read_loosely_and_bad_ones_are_one_line(tmp_path):
    good = tmp_path / "a.json"
    good.write_text(json.dumps({"methods": [{"final_top1": 0.04, "method": "baseline", "examples_to_target": None,
                                             "lr": 0.001}]}))
    assert load_align_results(good) == [{"method": "baseline", "examples_to_target": None, "final_top1": 0.04,
                                         "lr": 0.001}]
    bad = tmp_path / "b.json"
    bad.write_text('{"x": 1}')
    with pytest.raises(Lm2vError, match="expected a list of rows"):
        load_align_results(bad)
    with pytest.raises(Lm2vError, match="cannot read --align-results"):
        load_align_results(tmp_path / "missing.json")


def test_seed2_preset_offline_stops_before_anything_with_one_line(tmp_path, capsys, monkeypatch):
    from lm2vision.models import factory

    monkeypatch.setattr(factory, "hub_unreachable", lambda: "Name or service not known")
    out = tmp_path / "phase"
    assert main(["phase", "--preset", "seed2", "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "cannot load vision model 'microsoft/resnet-34'" in err and "--vision PATH" in err
    assert not out.exists()  # nothing written, nothing computed
    # the preset's sides can be replaced: with local models only the language side's hub ids remain
    assert main(["phase", "--preset", "seed2", "--vision", "tiny-bert", "--out", str(out), "--no-progress"]) == 2
    assert "cannot load language model 'bert-base-uncased'" in capsys.readouterr().err
    assert main(["phase", "--preset", "seed9", "--out", str(out)]) == 2
    assert "unknown preset 'seed9'; known: seed2" in capsys.readouterr().err


def test_seed2_preset_lists_the_papers_12_x_12_models():
    from lm2vision.phase.presets import PRESETS

    p = PRESETS["seed2"]
    assert len(p.vision) == len(set(p.vision)) == 12 and len(p.language) == len(set(p.language)) == 12
    assert p.datasets == ("cifar10", "cifar100", "svhn")


# -- a tiny screen, end to end ---------------------------------------------------------------------
SMALL = ["--samples", "40", "--ntk-samples", "6", "--agop-samples", "4", "--no-progress"]


def test_tiny_screen_writes_every_output_in_one_report(tmp_path, capsys, monkeypatch, one_thread):
    import importlib

    from lm2vision.analysis.geometry import participation_ratio
    from lm2vision.phase.screen import ScreenConfig, load_pairs
    from lm2vision.phase.sides import load_language

    screen_mod = importlib.import_module("lm2vision.phase.screen")  # the package exports a function of that name
    calls = []
    kernels = screen_mod._kernels
    monkeypatch.setattr(screen_mod, "_kernels", lambda side, x, cfg: calls.append(side.name) or kernels(side, x, cfg))
    align = tmp_path / "align.json"
    align.write_text(json.dumps([{"method": "adaptive_lr", "examples_to_target": 1200, "final_top1": 0.31}]))
    out = tmp_path / "phase"
    argv = ["phase", "--vision", "tiny-bert", "tiny-gpt2", "--language", "tiny-gpt2", "tiny-roberta", "--out",
            str(out), "--align-results", str(align), *SMALL]
    assert main(argv) == 0
    assert sorted(calls) == ["tiny-bert", "tiny-gpt2", "tiny-gpt2", "tiny-roberta"]  # once per model, 4 pairs
    printed = capsys.readouterr().out
    assert "| agop | AGOP ratio > 1e6 |" in printed
    for name in ("table.csv", "table.md", "results.json", "predictors.csv", "predictors.md", "phase_landscape.png",
                 "report.md", "figures/geometry.png"):
        assert (out / name).is_file(), name
    rows = list(csv.DictReader((out / "table.csv").open()))
    assert len(rows) == 4 and all(r["fails"] == str(float(r["align_top1"]) < 2 * float(r["align_chance"]))
                                  for r in rows)
    preds = list(csv.DictReader((out / "predictors.csv").open()))
    assert [p["predictor"] for p in preds] == ["agop", "agop", "dntk_x_log_agop", "dntk_x_log_agop", "dntk", "dntk"]
    results = json.loads((out / "results.json").read_text())
    assert {(f["side"], f["family"]) for f in results["by_family"]} == {
        ("vision", "bert"), ("vision", "gpt2"), ("language", "gpt2"), ("language", "roberta")}
    html = (out / "report.html").read_text()
    for title in ("Pairs", "By family", "Predictors", "Layer geometry", "Alignment training"):
        assert f"<h2>{title}</h2>" in html
    assert "adaptive_lr" in html and len(re.findall(r'src="data:image/png;base64,', html)) == 2
    assert not re.search(r'(src|href)="(?!data:)', html)  # self-contained: no external file or link

    # the language geometry from unpadded captions, one at a time (padding must not leak into the means)
    geo = results["models"]["language:tiny-gpt2"]["geometry"]
    assert [g["layer"] for g in geo] == ["embed", "block.0", "block.1"]
    lang = load_language("tiny-gpt2")
    captions = load_pairs(ScreenConfig(samples=40)).captions
    V = lang.now.model.config.vocab_size
    with torch.no_grad():
        hs = [lang.now.model(input_ids=torch.tensor([[1 + b % (V - 1) for b in c.encode()]]),
                             output_hidden_states=True).hidden_states for c in captions]
    for i, g in enumerate(geo):
        feats = torch.cat([h[i].mean(dim=1) for h in hs])  # (40, C)
        assert g["participation_ratio"] == pytest.approx(participation_ratio(feats), rel=1e-4)
        assert g["I_XT"] == pytest.approx(math.log2(10), abs=1e-9)  # 10 distinct captions (one per class)


def test_language_embedding_is_the_last_layer_of_its_geometry_features():
    """One forward pass serves both: the screen's language embedding (TextEmbedder.embed) equals the
    mean-pooled last hidden state of the per-layer features, bit for bit."""
    import importlib

    from lm2vision.phase.screen import ScreenConfig, load_pairs, language_inputs
    from lm2vision.phase.sides import load_language

    screen_mod = importlib.import_module("lm2vision.phase.screen")
    pairs = load_pairs(ScreenConfig(samples=30))
    for name in ("tiny-gpt2", "tiny-bert"):
        side = load_language(name)
        x = language_inputs(side, pairs, torch.device("cpu"))
        assert torch.equal(screen_mod._embed(side, x, 8), screen_mod._text_layers(side, x, 8)[-1])
