"""``lm2v`` end to end in-process: exit codes, one-line errors, the demo on a reduced setting."""
from __future__ import annotations

import json

import pytest

from conftest import TINY_RUN
from lm2vision.cli.main import main
from reference import run_test_accuracy


def test_bridge_then_probe_from_the_command_line(tmp_path, capsys):
    assert main(["bridge", "--out", str(tmp_path / "b"), *TINY_RUN, "trainable.blocks=first:1"]) == 0
    assert main(["probe", "--out", str(tmp_path / "p"), "--init", str(tmp_path / "b"), *TINY_RUN,
                 "probe.mode=linear", "probe.linear_epochs=3"]) == 0
    out = capsys.readouterr().out
    assert "trainable params" in out
    summary = json.loads((tmp_path / "p" / "summary.json").read_text())
    assert summary["init"] == str(tmp_path / "b")
    # the figure printed and saved is the saved probe model's accuracy on the test split
    assert summary["test_acc"] == pytest.approx(run_test_accuracy(tmp_path / "p"), abs=1e-6)
    assert f"probe done: test acc {summary['test_acc']:.4f}" in out


@pytest.mark.parametrize("argv,match", [
    (["bridge", "labels.ratio=2"], "labels.ratio must be in [0, 1]"),
    (["bridge", "trainable.blocks=first:3"], "asks for 3 blocks but the model has 2"),
    (["train", "model.image_size=30"], "not divisible"),
    (["train", "model.name=/nonexistent/model"], "cannot load model"),
    (["train", "data.dataset=/nonexistent/data"], "/nonexistent/data"),
    (["train", "nosuchkey=1"], "bad config"),
    (["train", "model.pooling"], "key=value"),
    (["train", "runtime.sdpa=flash,xformers"], "runtime.sdpa must be auto or a comma list of cudnn, flash, efficient, math"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, argv, match):
    code = main([argv[0], "--out", str(tmp_path / "r"), *TINY_RUN, *argv[1:]])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and match in err, err


def test_existing_run_refused_without_resume_or_overwrite(tmp_path, capsys):
    argv = ["train", "--out", str(tmp_path / "r"), *TINY_RUN, "optim.epochs=1"]
    assert main(argv) == 0
    assert main(argv) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(argv + ["--overwrite"]) == 0


def test_grid_runs_every_cell_and_prints_one_table(tmp_path, capsys):
    code = main(["grid", "--out", str(tmp_path / "g"), "--sweep", "labels.ratio=[0.0,1.0]",
                 "--sweep", "trainable.blocks=[all,first:1]", *TINY_RUN, "optim.epochs=1", "probe.linear_epochs=2"])
    assert code == 0
    rows = [r for r in json.loads((tmp_path / "g" / "summary.json").read_text())["arms"] if r["bridged"]]
    assert len(rows) == 4
    assert {(r["labels.ratio"], r["trainable.blocks"]) for r in rows} == {(0.0, "all"), (0.0, "first:1"),
                                                                         (1.0, "all"), (1.0, "first:1")}
    assert "| arm | labels.ratio | trainable.blocks |" in capsys.readouterr().out


def test_demo_end_to_end_reduced(tmp_path, capsys):
    """The main job on MiniLM with a handful of images: four arms x two seeds, a table with intervals,
    a figure, and one verdict line per comparison."""
    code = main(["demo", "--out", str(tmp_path / "d"), "data.max_train_per_class=6", "data.max_test_per_class=3",
                 "data.val_fraction=0.34", "bridge_epochs=1", "batch_size=16", "probe.linear_epochs=3",
                 "seeds=[4,5]", "runtime.progress=false", "runtime.tensorboard=false"])
    assert code == 0
    out = capsys.readouterr().out
    for name in ("pretrained_direct", "pretrained_bridged", "scratch_direct", "scratch_bridged"):
        assert name in out
        for seed in (4, 5):
            assert (tmp_path / "d" / name / f"seed{seed}" / "probe" / "summary.json").is_file()
    assert (tmp_path / "d" / "results.png").stat().st_size > 10_000
    verdicts = [line for line in out.splitlines() if "changes test accuracy by" in line]
    assert len(verdicts) == 4 and verdicts[0].startswith("- bridging (pretrained) changes test accuracy by")
    arms = json.loads((tmp_path / "d" / "summary.json").read_text())["arms"]
    assert [r["seeds"] for r in arms] == [2, 2, 2, 2]


def test_diverged_run_stops_with_one_line_and_no_nan_checkpoint(tmp_path, capsys):
    """A loss that turns NaN (here lr = 1e30) stops the run after that epoch: exit 2, one line, no
    checkpoint of the NaN weights, the NaN epoch still in metrics.jsonl."""
    run = tmp_path / "r"
    code = main(["bridge", "--out", str(run), *TINY_RUN, "optim.lr=1e30", "optim.grad_clip=0", "optim.epochs=3"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and "training diverged" in err and "epoch 1 is nan" in err, err
    assert not (run / "checkpoints" / "last.safetensors").exists()
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1]


def test_divergence_keeps_the_last_finite_checkpoint(tmp_path, capsys, monkeypatch):
    """Epoch 2 diverges: the checkpoint on disk stays the one of epoch 1, and the error says so."""
    import lm2vision.train.trainer as trainer

    real = trainer.train_epoch

    def nan_in_epoch_2(task, epoch, *args, **kw):
        out = real(task, epoch, *args, **kw)
        return {**out, "train_loss": float("nan")} if epoch == 1 else out

    monkeypatch.setattr(trainer, "train_epoch", nan_in_epoch_2)
    run = tmp_path / "r"
    assert main(["bridge", "--out", str(run), *TINY_RUN, "optim.epochs=3"]) == 2
    assert "still holds epoch 1" in capsys.readouterr().err
    state = json.loads((run / "checkpoints" / "last.json").read_text())
    assert state["epoch"] == 1
