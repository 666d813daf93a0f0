"""Layer-wise geometry (lm2vision.analysis.geometry) on known answers, and the ``geometry`` part of
``lm2v analyze``. Linear CKA's invariances are tested in test_analysis_cka.py (not repeated here)."""
import csv
import json
import math
import re

import numpy as np
import pytest
import torch

from lm2vision.analysis.geometry import (binned_states, compression, covariance_spectrum, entropy, information_plane,
                                         layer_geometry, participation_ratio, spectral_decay)
from lm2vision.cli import main as cli_main
from lm2vision.errors import Lm2vError


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


# -- effective dimensionality and decay ------------------------------------------------------------
def test_participation_ratio_of_isotropic_and_rank_one_features():
    iso = torch.randn(20000, 16, generator=_gen())
    assert participation_ratio(iso) == pytest.approx(16, rel=0.05)
    u, v = torch.randn(500, 1, generator=_gen(1)), torch.randn(1, 16, generator=_gen(2))
    assert participation_ratio(u @ v) == pytest.approx(1.0, abs=1e-9)  # one direction carries everything


def test_two_point_spectrum_by_hand():
    """Rows (+-sqrt3, 0), (0, +-sqrt(3)/2): mean 0, covariance diag(3*2/3, 0.75*2/3) = diag(2, 0.5).
    PR = 2.5^2 / (4 + 0.25) = 1.470588...; alpha = log(2 / 0.5) / log 2 = 2 exactly."""
    a, b = math.sqrt(3), math.sqrt(3) / 2
    x = torch.tensor([[a, 0], [-a, 0], [0, b], [0, -b]], dtype=torch.float64)
    assert covariance_spectrum(x).tolist() == pytest.approx([2.0, 0.5], rel=1e-12)
    assert participation_ratio(x) == pytest.approx(6.25 / 4.25, rel=1e-12)
    assert spectral_decay(x) == pytest.approx(2.0, rel=1e-12)


@pytest.mark.parametrize("alpha", [0.8, 1.5, 2.9])
def test_spectral_decay_recovers_a_power_law(alpha):
    """Independent Gaussian coordinates scaled by k^(-alpha/2): covariance eigenvalues k^(-alpha)."""
    k = torch.arange(1, 65, dtype=torch.float64)
    f = torch.randn(20000, 64, generator=_gen(), dtype=torch.float64) * k ** (-alpha / 2)
    assert spectral_decay(f) == pytest.approx(alpha, abs=0.05)
    assert spectral_decay(f, max_rank=16) == pytest.approx(alpha, abs=0.05)


def test_decay_ignores_numerically_zero_directions_and_rejects_non_matrices():
    k = torch.arange(1, 9, dtype=torch.float64)
    f = torch.randn(4000, 8, generator=_gen(), dtype=torch.float64) * k ** -1.0  # alpha = 2
    padded = torch.cat([f, torch.zeros(4000, 8, dtype=torch.float64)], dim=1)  # 8 dead units
    assert spectral_decay(padded) == pytest.approx(spectral_decay(f), rel=1e-9)
    assert math.isnan(spectral_decay(torch.ones(10, 3)))  # constant: nothing to fit
    with pytest.raises(Lm2vError, match="feature matrix"):
        participation_ratio(torch.ones(5))


# -- information plane -----------------------------------------------------------------------------
def test_binning_matches_numpy_histogram_and_equal_rows_share_a_state():
    t = torch.randn(3000, 1, generator=_gen(), dtype=torch.float64)
    counts = np.histogram(t.numpy()[:, 0], bins=10)[0]  # equal-width bins over [min, max], last one closed
    states = binned_states(t, 10)
    assert sorted(torch.bincount(states).tolist()) == sorted(c for c in counts.tolist() if c)
    p = counts[counts > 0] / counts.sum()
    assert entropy(states) == pytest.approx(float(-(p * np.log2(p)).sum()), rel=1e-12)
    two = torch.tensor([[0.0, 0.0], [0.1, 0.0], [0.5, 1.0], [1.0, 1.0]])  # bins [0, .5), [.5, 1]
    assert binned_states(two, 2).tolist() == [0, 0, 1, 1]


def test_invertible_map_of_x_keeps_all_of_h_x():
    """T an invertible function of X with every sample in its own bin: I(X;T) = H(X) = log2 N and
    I(Y;T) = H(Y) (2 bits for 4 equal classes)."""
    n = 1000
    perm = torch.randperm(n, generator=_gen()).double()
    t = torch.stack([perm, n - 1 - perm], dim=1)  # (N, 2) on [0, N - 1]: bins of width < 1, one sample each
    i_xt, i_yt = information_plane(t, torch.arange(n) % 4, bins=n)
    assert i_xt == pytest.approx(math.log2(n), abs=1e-12)
    assert i_yt == pytest.approx(2.0, abs=1e-12)


def test_t_independent_of_y_carries_about_no_label_information():
    """Plug-in bias of I(Y;T) for independent variables is about (|T| - 1)(|Y| - 1) / (2 N ln 2) =
    9 / (2 * 20000 * 0.693) = 3e-4 bits here; I(X;T) is then H(T), the histogram's entropy."""
    t = torch.randn(20000, 1, generator=_gen())
    y = torch.randint(0, 2, (20000,), generator=_gen(1))
    i_xt, i_yt = information_plane(t, y, bins=10)
    assert 0 <= i_yt < 2e-3
    assert i_xt == pytest.approx(entropy(binned_states(t, 10)), rel=1e-12)
    same_x = torch.zeros(20000, dtype=torch.long)  # one identity for all: X carries no information
    assert information_plane(t, y, bins=10, x_ids=same_x)[0] == pytest.approx(0.0, abs=1e-12)


def test_compression_and_layer_table_by_hand():
    assert compression([4.0, 3.0, 2.0]) == 0.5 and compression([2.0, 3.0]) == -0.5
    assert math.isnan(compression([0.0, 1.0]))
    n = 64
    ident = torch.arange(n, dtype=torch.float64)[:, None]  # every sample its own bin with 64 bins
    halves = (torch.arange(n) >= n // 2).double()[:, None]  # two states, = the label
    rows = layer_geometry([ident, halves], ["embed", "block.0"], halves[:, 0].long(), bins=n)
    assert [r["I_XT"] for r in rows] == pytest.approx([6.0, 1.0], abs=1e-12)  # log2 64, log2 2
    assert [r["I_YT"] for r in rows] == pytest.approx([1.0, 1.0], abs=1e-12)
    assert rows[1]["I_YT_over_I_XT"] == pytest.approx(1.0) and rows[0]["width"] == 1
    assert compression([r["I_XT"] for r in rows]) == pytest.approx(5 / 6)


# -- lm2v analyze: the geometry part ---------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_run_dir(tmp_path_factory):
    from lm2vision.config import load_config
    from lm2vision.train import RunConfig, run_stage

    base = tmp_path_factory.mktemp("geo")
    cfg = load_config(RunConfig, None, [
        "stage=train", "model.name=tiny-bert", "model.pretrained=false", "model.image_size=16",
        "model.patch_size=4", "data.max_train_per_class=4", "data.max_test_per_class=4", "data.val_fraction=0.25",
        "optim.epochs=1", "optim.batch_size=10", "runtime.progress=false", "runtime.tensorboard=false"])
    run_stage(cfg, base / "run")
    return base / "run"


def test_analyze_geometry_part_writes_csv_figure_and_section(tiny_run_dir, tmp_path):
    from lm2vision.analysis.features import layer_features
    from lm2vision.analysis.models import load_run
    from lm2vision.analysis.run import AnalyzeConfig, load_sample

    out = tmp_path / "report"
    argv = ["analyze", str(tiny_run_dir), "--out", str(out), "--no-progress", "--samples", "30",
            "--skip", "curves,weights,landscape,features,alignment,layers", "geometry_bins=8"]
    assert cli_main.main(argv) == 0
    rows = list(csv.DictReader((out / "geometry.csv").open()))
    assert [r["layer"] for r in rows] == ["embed", "block.0", "block.1"]  # tiny-bert: 2 blocks + embedding
    # the same numbers from the run's own layer features through the public functions
    loaded = load_run(tiny_run_dir)
    cfg = AnalyzeConfig(samples=30)
    sample = load_sample(loaded.cfg, cfg)
    feats = layer_features(loaded.model, sample.x, pooling="mean")
    for r, f in zip(rows, feats):
        assert float(r["participation_ratio"]) == pytest.approx(participation_ratio(f), rel=1e-9)
        assert float(r["I_XT"]) == pytest.approx(information_plane(f, sample.y, 8)[0], rel=1e-12)
    html = (out / "report.html").read_text()
    assert "<h2>Layer geometry</h2>" in html and len(re.findall(r'src="data:image/png;base64,', html)) == 1
    summary = json.loads((out / "analysis.json").read_text())["Layer geometry"]["summary"][0]
    assert summary["compression"] == pytest.approx(1 - float(rows[-1]["I_XT"]) / float(rows[0]["I_XT"]))
