"""``lm2v grid``: one config per cell reaches both stages, direct cells beside bridged ones, and
``--resume`` continues an unfinished cell from its checkpoint."""
from __future__ import annotations

import json

import torch
from safetensors.torch import load_file

from lm2vision.cli.main import main
from lm2vision.train import read_run_config

TINY = ["model.name=tiny-bert", "model.pretrained=false", "model.image_size=32", "model.patch_size=8",
        "data.max_test_per_class=2", "data.val_fraction=0.25", "optim.batch_size=10", "optim.epochs=1",
        "probe.linear_epochs=2", "runtime.progress=false", "runtime.tensorboard=false"]


def test_the_probe_runs_on_the_cells_data_recipe_and_seed(tmp_path):
    cfg_file = tmp_path / "cell.yaml"
    cfg_file.write_text("data:\n  split_seed: 5\noptim:\n  blr: 0.002\n")
    out = tmp_path / "g"
    code = main(["grid", "--out", str(out), "--config", str(cfg_file), "--sweep", "data.max_train_per_class=[4,6]",
                 "--probe-mode", "reinit", *TINY, "runtime.seed=3", "optim.warmup_epochs=0.5"])
    assert code == 0
    for n in (4, 6):
        cell = out / f"max_train_per_class{n}" / "seed3"  # no --seeds: the config's own seed
        bridge, probe = read_run_config(cell / "bridge"), read_run_config(cell / "probe")
        for cfg in (bridge, probe):  # the probe used to run on the bundled defaults with optim/seed unset
            assert cfg.data.max_train_per_class == n
            assert cfg.data.split_seed == 5 and cfg.optim.blr == 0.002
            assert cfg.runtime.seed == 3 and cfg.optim.warmup_epochs == 0.5
        assert probe.init == str(cell / "bridge") and probe.probe.mode == "reinit" and probe.labels.ratio == 0.0
    assert json.loads((out / "max_train_per_class4" / "seed3" / "probe" / "summary.json").read_text())["epochs"] == 1


def test_grid_has_a_direct_cell_per_initialisation(tmp_path, capsys):
    out = tmp_path / "g"
    code = main(["grid", "--out", str(out), "--sweep", "labels.ratio=[0.5,1.0]", "--sweep",
                 "model.init_seed=[0,1]", *TINY, "data.max_train_per_class=4"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert len([r for r in summary["arms"] if r["bridged"]]) == 4
    # two initialisations -> two direct probes, each compared with its own two label ratios
    assert sorted(p.name for p in out.glob("direct_*")) == ["direct_init_seed0", "direct_init_seed1"]
    for seed in (0, 1):
        direct = out / f"direct_init_seed{seed}" / "seed0" / "probe"
        assert json.loads((direct / "summary.json").read_text())["init"] is None
        assert read_run_config(direct).model.init_seed == seed
    pairs = {(c["a"], c["b"]) for c in summary["comparisons"] if c["comparison"].startswith("bridging")}
    assert pairs == {(f"ratio{r}_init_seed{s}", f"direct_init_seed{s}") for r in (0.5, 1.0) for s in (0, 1)}
    assert "| arm | labels.ratio | model.init_seed |" in capsys.readouterr().out


def test_resume_continues_an_unfinished_cell_from_its_checkpoint(tmp_path, capsys):
    args = ["--sweep", "labels.ratio=[1.0]", "--no-direct", *TINY, "data.max_train_per_class=4", "optim.epochs=2"]
    assert main(["grid", "--out", str(tmp_path / "full"), *args]) == 0
    part = tmp_path / "part"
    assert main(["grid", "--out", str(part), *args, "runtime.stop_after=1"]) == 0
    cell = part / "ratio1.0" / "seed0"
    assert not (cell / "bridge" / "summary.json").exists()
    assert json.loads((cell / "bridge" / "checkpoints" / "last.json").read_text())["epoch"] == 1
    capsys.readouterr()
    assert main(["grid", "--out", str(part), "--resume", *args]) == 0
    assert "resumed after epoch 1" in capsys.readouterr().out  # was: the cell restarted from scratch
    a = load_file(str(tmp_path / "full" / "ratio1.0" / "seed0" / "bridge" / "model.safetensors"))
    b = load_file(str(cell / "bridge" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    full_rows = json.loads((tmp_path / "full" / "summary.json").read_text())
    assert json.loads((part / "summary.json").read_text()) == full_rows


def test_resume_with_other_axes_is_refused(tmp_path, capsys):
    args = ["--sweep", "labels.ratio=[1.0]", "--no-direct", *TINY, "data.max_train_per_class=4"]
    assert main(["grid", "--out", str(tmp_path / "g"), *args]) == 0
    capsys.readouterr()
    assert main(["grid", "--out", str(tmp_path / "g"), "--resume", *args, "optim.blr=0.01"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--resume: this grid's overrides differ" in err
