"""Launchers of ``lm2v grid`` / ``lm2v reproduce``: cells as parallel subprocesses (``local``) and as
submitit jobs (``submitit-local``) give the serial grid's numbers; a failed cell is one line and the
others finish; the same command again continues; launcher options are not part of the record.

Torch threads are pinned to 1 in the serial grid (``one_thread``) and in every cell (OMP_NUM_THREADS=1,
which the local launcher passes on and submitit's local jobs inherit), so the numbers are bit-identical."""
from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path

import pytest

from lm2vision.cli.main import main
from lm2vision.config import load_config
from lm2vision.errors import Lm2vError
from lm2vision.experiments.launch import cell_command, device_slots, write_cells
from lm2vision.experiments.design import Arm, Experiment
from lm2vision.train import RunConfig

TINY = ["model.name=tiny-bert", "model.pretrained=false", "model.image_size=32", "model.patch_size=8",
        "data.max_test_per_class=2", "data.val_fraction=0.25", "optim.batch_size=10", "optim.epochs=1",
        "probe.linear_epochs=1", "runtime.progress=false", "runtime.tensorboard=false"]
GRID = ["--sweep", "data.max_train_per_class=[4,6]", "--no-direct", *TINY]
CELLS = ["max_train_per_class4/seed0", "max_train_per_class6/seed0"]
BUNDLED = Path(__file__).resolve().parents[1] / "lm2vision" / "data" / "assets" / "cifar10_subset.tar.gz"


@pytest.fixture(scope="module")
def serial(tmp_path_factory):
    """The two-cell grid run one cell after another in this process, on one torch thread."""
    import torch

    out, n = tmp_path_factory.mktemp("serial") / "g", torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["grid", "--out", str(out), *GRID]) == 0
    finally:
        torch.set_num_threads(n)
    return out


@pytest.fixture(autouse=True)
def _one_thread_per_cell(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


def probe_acc(out: Path, cell: str) -> float:
    return json.loads((out / cell / "probe" / "summary.json").read_text())["test_acc"]


def log_times(log: Path) -> tuple[int, float, float]:
    """(pid, start, end) of the cell from the lines it writes in its log."""
    found = re.findall(r"\[lm2v cell\] .*?(started|finished) pid=(\d+) t=([\d.]+)", log.read_text())
    marks = {what: (int(pid), float(t)) for what, pid, t in found}
    assert marks["started"][0] == marks["finished"][0]
    return marks["started"][0], marks["started"][1], marks["finished"][1]


def test_local_launcher_runs_two_cells_at_once_with_the_serial_numbers(tmp_path, serial, capsys):
    out = tmp_path / "g"
    assert main(["grid", "--out", str(out), *GRID, "--launcher", "local", "--jobs", "2"]) == 0
    printed = capsys.readouterr().out
    assert "2 of 2 cells to run (local launcher)" in printed and "finished (2/2)" in printed
    (pa, a0, a1), (pb, b0, b1) = (log_times(out / c / "cell.log") for c in CELLS)
    assert len({pa, pb, os.getpid()}) == 3  # two processes, neither this one
    assert a0 < b1 and b0 < a1  # each started before the other ended: they overlapped
    assert [probe_acc(out, c) for c in CELLS] == [probe_acc(serial, c) for c in CELLS]
    assert summary(out) == summary(serial)


def test_submitit_local_gives_the_serial_numbers(tmp_path, serial, capsys):
    pytest.importorskip("submitit")
    out = tmp_path / "g"
    assert main(["grid", "--out", str(out), *GRID, "--launcher", "submitit-local"]) == 0
    assert "finished (2/2)" in capsys.readouterr().out
    logs = sorted((out / "submitit").glob("*_log.out"))
    assert len(logs) == 2 and all("finished pid=" in p.read_text() for p in logs)
    assert len({log_times(p)[0] for p in logs}) == 2  # one job (process) per cell
    assert summary(out) == summary(serial)


def test_a_failed_cell_is_one_line_the_other_finishes_and_running_again_continues(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # relative paths: the cells run where the command ran
    late, out = Path("late.tar.gz"), Path("g")  # late: missing in the first run, so that cell fails
    args = ["grid", "--out", "g", "--sweep", "data.dataset=[bundled,late.tar.gz]", "--no-direct", *TINY,
            "data.max_train_per_class=4", "--launcher", "local", "--jobs", "2"]
    assert main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    bad = out / "datasetlate.tar.gz" / "seed0"
    assert [line for line in err if "failed" in line][0] == \
        f"cell datasetlate.tar.gz/seed0 failed with exit code 2; its log: {bad / 'cell.log'}"
    assert err[-1].startswith("1 of 2 cells failed; the others are kept: run the same command again")
    assert "late.tar.gz" in (bad / "cell.log").read_text()  # the cell's own one-line error
    good = out / "datasetbundled" / "seed0" / "probe" / "metrics.jsonl"
    assert (good.parent / "summary.json").is_file()
    assert not (out / "summary.json").exists()  # the summary needs every cell
    shutil.copy(BUNDLED, late)
    before = good.read_bytes()
    assert main(args + ["--resume"]) == 0
    assert "1 of 2 cells to run" in capsys.readouterr().out and good.read_bytes() == before  # finished: skipped
    assert [a["arm"] for a in summary(out)["arms"]] == ["datasetbundled", "datasetlate.tar.gz"]


def test_stopped_cells_continue_under_another_launcher(tmp_path, capsys):
    out = tmp_path / "g"
    args = ["--sweep", "labels.ratio=[1.0]", "--no-direct", *TINY, "data.max_train_per_class=4", "optim.epochs=2"]
    assert main(["grid", "--out", str(out), *args, "runtime.stop_after=1", "--launcher", "local", "--jobs", "2"]) == 0
    assert "cell ratio1.0/seed0 stopped early" in capsys.readouterr().out
    bridge = out / "ratio1.0" / "seed0" / "bridge"
    assert not (bridge / "summary.json").exists() and not (out / "summary.json").exists()
    saved = (out / "config.yaml").read_text()
    assert "launcher" not in saved and "jobs" not in saved  # how it ran is not what it is
    assert main(["grid", "--out", str(out), *args, "--resume", "--launcher", "serial"]) == 0
    assert "resumed after epoch 1" in capsys.readouterr().out  # continued from the cell's checkpoint
    epochs = [r["epoch"] for r in map(json.loads, (bridge / "metrics.jsonl").read_text().splitlines()) if "event" not in r]
    assert epochs == [1, 2]  # one record per epoch: continued, not restarted
    assert summary(out)["arms"][0]["seeds"] == 1


def test_missing_submitit_is_one_line_before_anything_is_written(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "submitit", None)  # import submitit -> ImportError
    out = tmp_path / "g"
    assert main(["grid", "--out", str(out), *GRID, "--launcher", "slurm"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.endswith('need submitit: pip install "lm2vision[cluster]"')
    assert not out.exists()


def test_a_dense_cell_spec_names_its_config_type_and_runner(tmp_path):
    from lm2vision.experiments.dense import dense_stage

    cell = load_config(RunConfig, None, TINY)
    exp = Experiment([Arm("a", {}, cell), Arm("direct", {}, cell, bridged=False)], seeds=[3])
    cells = write_cells(exp, tmp_path, dense_stage("segment", "/data/seg", ["optim.epochs=2"]))
    assert [c.name for c in cells] == ["a/seed3", "direct/seed3"]
    spec = json.loads(cells[0].spec.read_text())
    assert [(r["config_type"], r["runner"], r["run"]) for r in spec["runs"]] == [
        ("RunConfig", "run_stage", str(tmp_path / "a" / "seed3" / "bridge")),
        ("SegmentConfig", "run_dense", str(tmp_path / "a" / "seed3" / "segment"))]
    from lm2vision.dense.config import SegmentConfig

    dense = load_config(SegmentConfig, spec["runs"][1]["config"])
    assert dense.init == str(tmp_path / "a" / "seed3" / "bridge") and dense.runtime.seed == 3
    assert dense.data.root == "/data/seg" and dense.optim.epochs == 2
    assert [r["runner"] for r in json.loads(cells[1].spec.read_text())["runs"]] == ["run_dense"]  # no bridge


@pytest.mark.parametrize("gpus, jobs, k, slots", [
    ([], None, 1, [[]]),
    ([], 3, 1, [[], [], []]),
    (["0", "1", "2", "3"], None, 1, [["0"], ["1"], ["2"], ["3"]]),
    (["0", "1", "2", "3"], None, 2, [["0", "1"], ["2", "3"]]),
    (["4", "7"], 1, 2, [["4", "7"]]),
])
def test_device_slots(gpus, jobs, k, slots):
    assert device_slots(gpus, jobs, k) == slots


def test_too_many_gpus_asked_is_one_line():
    with pytest.raises(Lm2vError, match=r"^--jobs 3 x --gpus-per-cell 2 needs 6 GPUs, 4 visible$"):
        device_slots(["0", "1", "2", "3"], 3, 2)


def test_a_cell_on_k_gpus_runs_under_torchrun():
    assert cell_command(Path("/o/a/seed0/cell.json"), 2)[1:] == [
        "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "lm2vision.experiments.cell",
        "/o/a/seed0/cell.json"]
    assert cell_command(Path("/o/cell.json"), 1)[1:] == ["-m", "lm2vision.experiments.cell", "/o/cell.json"]
