"""Seeds as an axis (grid, demo, reproduce): what a seed changes, the per-arm figures over seeds and
the paired comparisons, recomputed here from the run directories' own files; ``lm2v reproduce``
killed mid-run and run again continues where it stopped."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from safetensors.torch import load_file

from lm2vision.cli.main import main
from lm2vision.experiments.presets import PRESETS, claims_of
from lm2vision.experiments.sweep import sweep_arms, sweep_comparisons
from lm2vision.train import read_run_config

TINY = ["model.name=tiny-bert", "model.pretrained=false", "model.image_size=32", "model.patch_size=8",
        "data.max_train_per_class=6", "data.max_test_per_class=4", "data.val_fraction=0.34", "optim.batch_size=10",
        "optim.epochs=2", "optim.warmup_epochs=0", "probe.linear_epochs=3", "runtime.progress=false",
        "runtime.tensorboard=false"]


def _correct(run) -> np.ndarray:
    t = load_file(str(run / "predictions.safetensors"))
    return (t["pred"] == t["label"]).numpy().astype(float)


def test_grid_seeds_set_every_seed_key_and_keep_the_test_images(tmp_path, capsys):
    out = tmp_path / "g"
    assert main(["grid", "--out", str(out), "--sweep", "labels.ratio=[0.5,1.0]", "--seeds", "3,7", *TINY,
                 "data.split_seed=5"]) == 0
    labels = set()
    for arm in ("ratio0.5", "ratio1.0", "direct_all"):
        for seed in (3, 7):
            stages = ("probe",) if arm == "direct_all" else ("bridge", "probe")
            for stage in stages:
                cfg = read_run_config(out / arm / f"seed{seed}" / stage)
                assert (cfg.runtime.seed, cfg.labels.seed if stage == "bridge" else seed, cfg.model.init_seed) == (seed,) * 3
                assert cfg.data.split_seed == 5  # the split never follows the seed
            labels.add(tuple(load_file(str(out / arm / f"seed{seed}" / "probe" / "predictions.safetensors"))["label"].tolist()))
    assert len(labels) == 1  # every arm and seed tested on the same images, in the same order
    # the two seeds really differ: other random labels, other scratch weights
    l3 = load_file(str(out / "ratio0.5" / "seed3" / "bridge" / "labels.safetensors"))
    l7 = load_file(str(out / "ratio0.5" / "seed7" / "bridge" / "labels.safetensors"))
    assert not all(np.array_equal(l3[k].numpy(), l7[k].numpy()) for k in l3)
    assert "changes test accuracy by" in capsys.readouterr().out


def test_grid_summary_is_the_mean_over_seeds_and_the_paired_difference(tmp_path):
    out = tmp_path / "g"
    assert main(["grid", "--out", str(out), "--sweep", "labels.ratio=[1.0]", "--seeds", "0,1,2", *TINY]) == 0
    summary = json.loads((out / "summary.json").read_text())
    row = next(r for r in summary["arms"] if r["arm"] == "ratio1.0")
    accs = [json.loads((out / "ratio1.0" / f"seed{s}" / "probe" / "summary.json").read_text())["test_acc"] for s in range(3)]
    assert row["seeds"] == 3
    assert row["test acc"] == pytest.approx(np.mean(accs))
    assert row["std"] == pytest.approx(np.std(accs, ddof=1))
    half = 4.302652729911275 * np.std(accs, ddof=1) / np.sqrt(3)  # t(0.975, 2 dof)
    assert (row["ci low"], row["ci high"]) == pytest.approx((np.mean(accs) - half, np.mean(accs) + half))
    a = np.stack([_correct(out / "ratio1.0" / f"seed{s}" / "probe") for s in range(3)])
    b = np.stack([_correct(out / "direct_all" / f"seed{s}" / "probe") for s in range(3)])
    assert a.mean() == pytest.approx(np.mean(accs))  # the predictions are the final model's
    comp = next(c for c in summary["comparisons"] if c["comparison"] == "bridging (ratio=1.0)")
    assert comp["effect (points)"] == pytest.approx(100 * (a.mean() - b.mean()))
    assert comp["ci low"] <= comp["effect (points)"] <= comp["ci high"]
    assert (comp["seeds"], comp["images"]) == (3, a.shape[1])
    # lm2v compare on the same six runs: two groups over seeds, the same paired difference
    runs = [str(out / arm / f"seed{s}" / "probe") for arm in ("direct_all", "ratio1.0") for s in (2, 0, 1)]
    assert main(["compare", *runs, "--out", str(tmp_path / "cmp")]) == 0
    cmp = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert [g["seeds"] for g in cmp["groups"]] == [3, 3]
    assert cmp["groups"][1]["test acc"] == pytest.approx(np.mean(accs))
    assert cmp["comparisons"][0]["effect (points)"] == pytest.approx(100 * (a.mean() - b.mean()))


def test_seeds_beside_a_seed_sweep_is_one_line(tmp_path, capsys):
    code = main(["grid", "--out", str(tmp_path / "g"), "--sweep", "runtime.seed=[0,1]", "--seeds", "0,1", *TINY])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "drop the runtime.seed sweep" in err
    assert not (tmp_path / "g").exists()
    assert main(["grid", "--out", str(tmp_path / "g"), "--sweep", "labels.ratio=[1.0]", "--seeds", "0,x", *TINY]) == 2
    assert "--seeds must be a comma list of integers" in capsys.readouterr().err


def test_sweep_comparisons_pair_each_value_with_the_first():
    axes = {"labels.ratio": [0.0, 1.0], "model.pretrained": [True, False]}
    arms = sweep_arms(axes, lambda p: None)
    names = [a.name for a in arms]
    assert names == ["ratio0.0_pretrainedTrue", "ratio0.0_pretrainedFalse", "ratio1.0_pretrainedTrue",
                     "ratio1.0_pretrainedFalse", "direct_pretrainedTrue", "direct_pretrainedFalse"]
    pairs = {(c.a, c.b) for c in sweep_comparisons(axes, arms)}
    assert pairs == {("ratio0.0_pretrainedTrue", "direct_pretrainedTrue"), ("ratio0.0_pretrainedFalse", "direct_pretrainedFalse"),
                     ("ratio1.0_pretrainedTrue", "direct_pretrainedTrue"), ("ratio1.0_pretrainedFalse", "direct_pretrainedFalse"),
                     ("ratio1.0_pretrainedTrue", "ratio0.0_pretrainedTrue"), ("ratio1.0_pretrainedFalse", "ratio0.0_pretrainedFalse"),
                     ("ratio0.0_pretrainedFalse", "ratio0.0_pretrainedTrue"), ("ratio1.0_pretrainedFalse", "ratio1.0_pretrainedTrue")}


def test_every_preset_claim_names_two_of_its_arms():
    for name, p in PRESETS.items():
        arms = {a.name for a in sweep_arms(p.axes, lambda point: None)}
        for claim in claims_of(p, 0.01):
            assert {claim.comparison.a, claim.comparison.b} <= arms, (name, claim.text)
    texts = [c.text for c in claims_of(PRESETS["partial"], 0.01)]
    assert texts == ["the first 2 blocks match all blocks", "the first 5 blocks beat all blocks"]


REPRO = ["reproduce", "label-ratio", "--scale", "smoke", "--seeds", "0,1,2", "data.max_train_per_class=3",
         "data.max_test_per_class=3", "data.val_fraction=0.34", "optim.batch_size=10", "model.dropout=0.0",
         "runtime.progress=false", "runtime.tensorboard=false"]


@pytest.fixture
def tiny_lm(tmp_path):
    """A tiny BERT saved as a Hugging Face folder: a 'pretrained' model offline, for --model."""
    from transformers import BertConfig, BertModel

    path = tmp_path / "tiny-lm"
    BertModel(BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                         max_position_embeddings=64, vocab_size=16)).save_pretrained(path)
    return path


def test_reproduce_killed_and_run_again_continues_and_ends_with_claims(tmp_path, tiny_lm):
    """The real command in a subprocess, SIGKILLed before its 10th checkpoint (epoch 2 of the third
    cell's bridge, seed 0: two cells of 2 + 2 epochs are done); the same command again keeps the
    finished runs, continues the killed one from its epoch-1 checkpoint and ends with the claims table."""
    out = tmp_path / "r"
    cmd = [sys.executable, "-m", "lm2vision.cli.main", *REPRO, "--model", str(tiny_lm), "--out", str(out)]
    env = {**os.environ, "LM2V_FAULT": "before_checkpoint:10", "OMP_NUM_THREADS": "1"}
    killed = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr[-2000:]
    done = sorted(p.parent for p in out.glob("*/seed*/*/summary.json"))
    assert len(done) == 4  # two cells of seed 0 (bridge + probe each) had finished
    stamps = {p: (p / "model.safetensors").stat().st_mtime_ns for p in done}
    env.pop("LM2V_FAULT")
    again = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resumed after epoch" in again.stdout
    assert all((p / "model.safetensors").stat().st_mtime_ns == t for p, t in stamps.items())  # not run twice
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["arms"]) == 10 and all(r["seeds"] == 3 for r in summary["arms"])
    claims = {c["claim"]: c for c in summary["claims"]}
    assert len(claims) == 5
    c = claims["pretrained + bridge beats scratch + bridge (r=1.0)"]
    a = np.stack([_correct(out / "ratio1.0_pretrainedTrue" / f"seed{s}" / "probe") for s in range(3)])
    b = np.stack([_correct(out / "ratio1.0_pretrainedFalse" / f"seed{s}" / "probe") for s in range(3)])
    assert c["effect (points)"] == pytest.approx(100 * (a.mean() - b.mean()))
    expected = "supported" if c["ci low"] > 0 else "contradicted" if c["ci high"] < 0 else "inconclusive"
    assert c["status"] == expected
    assert "Claims of the paper" in again.stdout and (out / "results.png").stat().st_size > 10_000
    assert "| model.pretrained | labels.ratio=0.0 |" in (out / "summary.md").read_text()  # the paper-style table


def test_reproduce_refuses_other_arguments_in_the_same_folder(tmp_path, capsys):
    out = tmp_path / "r"
    (out).mkdir()
    (out / "config.yaml").write_text("experiment: partial\n")
    (out / ".lm2v-run").write_text('{"kind": "reproduce"}')
    code = main([*REPRO, "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "holds this experiment with other experiment" in err
    assert main([*REPRO, "--out", str(tmp_path / "x"), "labels.ratio=0.5"]) == 2
    assert "sets an axis of label-ratio" in capsys.readouterr().err


def test_authors_best_epoch_is_reported_beside_the_final_epoch_and_selects_nothing(tmp_path):
    from lm2vision.train import read_summary
    from lm2vision.train.rundir import read_metrics

    run = tmp_path / "b"
    assert main(["train", "--out", str(run), *TINY, "optim.epochs=3", "runtime.test_each_epoch=true"]) == 0
    recs = [r for r in read_metrics(run) if "test_acc_epoch" in r]
    s = read_summary(run)
    assert [r["epoch"] for r in recs] == [1, 2, 3]
    assert s["test_acc_best_epoch"] == max(r["test_acc_epoch"] for r in recs)
    assert s["test_acc"] == recs[-1]["test_acc_epoch"]  # the final figure is the last epoch's model
    assert s["test_acc"] == pytest.approx(_correct(run).mean())
    assert "authors" in s["test_acc_best_epoch_note"]


def test_dense_preset_pairs_seeds_on_one_dense_set(tmp_path, tiny_lm):
    """``reproduce dense-segment``: stage 1 per arm and seed, then Segmenter on its backbone; every run
    reads the one synthetic set in OUT/data, and the comparison is the mean per-seed difference."""
    from lm2vision.dense.config import SegmentConfig

    out = tmp_path / "d"
    assert main(["reproduce", "dense-segment", "--scale", "smoke", "--seeds", "0,1", "--model", str(tiny_lm),
                 "--out", str(out), *REPRO[6:]]) == 0
    summary = json.loads((out / "summary.json").read_text())
    miou = {}
    for arm in ("pretrainedTrue", "pretrainedFalse", "direct_pretrainedTrue", "direct_pretrainedFalse"):
        miou[arm] = []
        for s in (0, 1):
            cfg = read_run_config(out / arm / f"seed{s}" / "segment", SegmentConfig)
            assert cfg.data.root == str(out / "data") and cfg.runtime.seed == s
            assert cfg.init == (str(out / arm / f"seed{s}" / "bridge") if not arm.startswith("direct") else None)
            miou[arm].append(json.loads((out / arm / f"seed{s}" / "segment" / "summary.json").read_text())["final"]["miou"])
    row = next(r for r in summary["arms"] if r["arm"] == "pretrainedTrue")
    assert row["validation mIoU"] == pytest.approx(np.mean(miou["pretrainedTrue"]))
    claim = next(c for c in summary["claims"] if c["claim"] == "bridging beats no bridging (pretrained)")
    diff = np.subtract(miou["pretrainedTrue"], miou["direct_pretrainedTrue"])
    assert claim["effect (points)"] == pytest.approx(100 * diff.mean())
    half = 12.706204736174707 * np.std(diff, ddof=1) / np.sqrt(2)  # t(0.975, 1 dof)
    assert (claim["ci low"], claim["ci high"]) == pytest.approx((100 * (diff.mean() - half), 100 * (diff.mean() + half)))
    assert (out / "results.png").is_file()
