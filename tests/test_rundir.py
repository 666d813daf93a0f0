"""Run directories are safe: --overwrite replaces only what lm2v made, and only once the new run has
started; a run directory has one writer at a time; --resume continues the same run on the same data
or says why not, in one line."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TINY_RUN
from lm2vision.cli.main import main
from lm2vision.errors import Lm2vError, Lm2vWarning
from lm2vision.train import run_stage
from lm2vision.train.recipe import stage_config
from lm2vision.train.rundir import LOCK, MARKER, acquire_lock, check_target, open_run, replaced_path

ONE_EPOCH = [*TINY_RUN, "optim.epochs=1"]


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``root`` with its size and mtime (ns): what "unchanged" means here."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def one_line_error(capsys, match: str) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and match in lines[0], err
    return lines[0]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("finished") / "run"
    assert main(["bridge", "--out", str(run), *ONE_EPOCH]) == 0
    return run


def copy_run(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


# -- what --overwrite may replace ---------------------------------------------------------------


def test_overwrite_refuses_a_project_folder_that_holds_a_config_yaml(tmp_path, capsys):
    project = tmp_path / "project"
    project.mkdir()
    (project / "config.yaml").write_text("lr: 3\n")
    (project / "train.py").write_text("print('mine')\n")
    before = snapshot(tmp_path)
    assert main(["bridge", "--out", str(project), "--overwrite", *ONE_EPOCH]) == 2
    one_line_error(capsys, "it has no .lm2v-run marker")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("out,match", [
    ("", "--out is empty"),
    (".", "it is the current directory or one of its parents"),
    ("..", "it is the current directory or one of its parents"),
    ("notes.txt/run", "notes.txt is a file"),
])
def test_impossible_targets_are_refused_before_anything_is_touched(tmp_path, monkeypatch, capsys, out, match):
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("mine")
    (work / MARKER).write_text("{}")  # even a folder that looks like ours is never the cwd's replacement
    monkeypatch.chdir(work)
    before = snapshot(tmp_path)
    assert main(["bridge", "--out", out, "--overwrite", *ONE_EPOCH]) == 2
    one_line_error(capsys, match)
    assert snapshot(tmp_path) == before


def test_the_init_run_is_never_the_target(finished_run, tmp_path, capsys):
    run = copy_run(finished_run, tmp_path / "b")
    before = snapshot(run)
    assert main(["probe", "--init", str(run), "--out", str(run), "--overwrite", *ONE_EPOCH]) == 2
    one_line_error(capsys, "it holds")
    assert main(["probe", "--init", str(run), "--out", str(tmp_path), "--overwrite", *ONE_EPOCH]) == 2
    one_line_error(capsys, "an input of this command")
    assert snapshot(run) == before


def test_a_typo_in_the_new_config_leaves_the_old_run_whole(finished_run, tmp_path, capsys):
    run = copy_run(finished_run, tmp_path / "r")
    before = snapshot(run)
    assert main(["bridge", "--out", str(run), "--overwrite", *ONE_EPOCH, "data.dataset=/no/such/dataset"]) == 2
    one_line_error(capsys, "/no/such/dataset")
    assert snapshot(run) == before and not replaced_path(run).exists()


def test_a_new_run_that_fails_before_its_first_checkpoint_puts_the_old_one_back(finished_run, tmp_path,
                                                                                monkeypatch):
    import lm2vision.train.stages as stages

    run = copy_run(finished_run, tmp_path / "r")
    before = snapshot(run)

    def crash(*args, **kwargs):
        assert replaced_path(run).is_dir() and not (run / "summary.json").exists()  # old run aside, new one begun
        raise RuntimeError("out of memory")

    monkeypatch.setattr(stages, "_fit", crash)
    with pytest.warns(Lm2vWarning, match="is back in place"), pytest.raises(RuntimeError):
        run_stage(stage_config("bridge", None, ONE_EPOCH), run, overwrite=True)
    assert snapshot(run) == before and not replaced_path(run).exists()


def test_overwrite_replaces_the_old_run_once_the_new_one_has_started(finished_run, tmp_path):
    run = copy_run(finished_run, tmp_path / "r")
    (run / "old-only.txt").write_text("written by the old run")
    seen = {}
    import lm2vision.train.trainer as trainer

    real = trainer._finish

    def spy(*a, **kw):  # after the epoch's checkpoint, before the test split and the summary
        seen.setdefault("aside_after_first_checkpoint", replaced_path(run).exists())
        return real(*a, **kw)

    trainer._finish = spy
    try:
        run_stage(stage_config("bridge", None, ONE_EPOCH + ["runtime.seed=5"]), run, overwrite=True)
    finally:
        trainer._finish = real
    assert seen == {"aside_after_first_checkpoint": False}  # dropped as soon as the new run had a checkpoint
    assert not (run / "old-only.txt").exists() and not replaced_path(run).exists()
    import yaml

    assert yaml.safe_load((run / "config.yaml").read_text())["runtime"]["seed"] == 5
    assert (run / MARKER).is_file() and not (run / LOCK).exists()


def test_an_interrupted_overwrite_is_resolved_by_the_next_command(finished_run, tmp_path):
    # killed before the new run's first checkpoint: the old run comes back
    run = copy_run(finished_run, tmp_path / "a")
    os.replace(run, replaced_path(run))
    run.mkdir()
    (run / MARKER).write_text("{}")
    (run / "config.yaml").write_text("stage: bridge\n")
    with pytest.warns(Lm2vWarning, match="is back in place"), pytest.raises(Lm2vError, match="already exists"):
        run_stage(stage_config("bridge", None, ONE_EPOCH), run)
    assert (run / "summary.json").is_file() and not replaced_path(run).exists()
    # killed after it: the new run stays, the old one is dropped
    run = copy_run(finished_run, tmp_path / "b")
    copy_run(finished_run, replaced_path(run))
    (replaced_path(run) / "old-only.txt").write_text("x")
    with pytest.raises(Lm2vError, match="already exists"):
        run_stage(stage_config("bridge", None, ONE_EPOCH), run)
    assert not replaced_path(run).exists() and not (run / "old-only.txt").exists()


# -- one writer at a time -----------------------------------------------------------------------


def test_a_locked_run_refuses_a_second_writer_and_a_stale_lock_is_taken_over(finished_run, tmp_path, capsys):
    run = copy_run(finished_run, tmp_path / "r")
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run / LOCK).write_text(json.dumps({"pid": sleeper.pid, "host": os.uname().nodename}))
        before = snapshot(run)
        assert main(["bridge", "--out", str(run), "--overwrite", *ONE_EPOCH]) == 2
        one_line_error(capsys, f"being written by another lm2v command (process {sleeper.pid}")
        assert snapshot(run) == before
    finally:
        sleeper.kill()
        sleeper.wait()
    with pytest.warns(Lm2vWarning, match=rf"stale lock .*\(process {sleeper.pid} is no longer running\)"):
        lock = acquire_lock(run)
    assert json.loads(lock.read_text())["pid"] == os.getpid()


def test_a_requeued_slurm_job_takes_over_its_own_lock_from_another_node(tmp_path, monkeypatch):
    """SLURM requeues a hard-killed job under the same job id, maybe on another node: the lock its earlier
    self left (a host this process cannot check) is stale; another job's lock on that host is not."""
    run = tmp_path / "r"
    run.mkdir()
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    (run / LOCK).write_text(json.dumps({"pid": 1, "host": "other-node", "slurm_job": "4243"}))
    with pytest.raises(Lm2vError, match="process 1 on other-node"):
        acquire_lock(run)
    (run / LOCK).write_text(json.dumps({"pid": 1, "host": "other-node", "slurm_job": "4242"}))
    with pytest.warns(Lm2vWarning, match=r"stale lock .*\(SLURM job 4242 was requeued\)"):
        lock = acquire_lock(run)
    assert json.loads(lock.read_text()) == {"pid": os.getpid(), "host": os.uname().nodename, "slurm_job": "4242"}


def test_open_run_holds_the_lock_only_while_the_block_runs(tmp_path):
    with open_run(tmp_path / "r") as run:
        assert json.loads((run / LOCK).read_text())["pid"] == os.getpid()
        with pytest.raises(Lm2vError, match="already exists"):
            with open_run(run):
                pass
    assert not (run / LOCK).exists() and (run / MARKER).is_file()


def test_two_commands_on_one_directory_one_wins_the_other_says_so(tmp_path):
    """Two real processes started together: exactly one writes the run, the other exits 2 with one
    line, and the directory holds one run (the config matches the weights and metrics)."""
    run = tmp_path / "r"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = lambda seed: [sys.executable, "-m", "lm2vision.cli.main", "bridge", "--out", str(run), *ONE_EPOCH,
                        f"runtime.seed={seed}"]
    procs = [subprocess.Popen(cmd(s), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for s in (1, 2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(c for c, _ in results)
    assert codes == [0, 2], results
    loser = [ln for ln in next(err for c, err in results if c == 2).splitlines() if ln.strip()]
    assert len(loser) == 1 and any(m in loser[0] for m in ("already exists", "locked", "being written")), loser
    winner_seed = 1 if results[0][0] == 0 else 2
    import yaml

    assert yaml.safe_load((run / "config.yaml").read_text())["runtime"]["seed"] == winner_seed
    assert [json.loads(ln)["epoch"] for ln in (run / "metrics.jsonl").read_text().splitlines()] == [1, 1]


# -- resume: the same run, on the same data -----------------------------------------------------


def test_resume_of_a_finished_run_changes_nothing(finished_run, tmp_path, capsys):
    run = copy_run(finished_run, tmp_path / "r")
    before = snapshot(run)
    capsys.readouterr()
    assert main(["bridge", "--out", str(run), "--resume"]) == 0
    assert "is already finished" in capsys.readouterr().out
    assert snapshot(run) == before


@pytest.fixture
def stopped_run(tmp_path) -> Path:
    run = tmp_path / "s"
    assert main(["bridge", "--out", str(run), *TINY_RUN, "runtime.stop_after=1"]) == 0
    return run


def test_resume_refuses_overrides_that_change_the_result(stopped_run, capsys):
    before = snapshot(stopped_run)
    assert main(["bridge", "--out", str(stopped_run), "--resume", "optim.lr=0.5", "labels.ratio=0.5"]) == 2
    line = one_line_error(capsys, "--resume continues")
    assert "labels.ratio: 1.0 -> 0.5" in line and "optim.lr: None -> 0.5" in line
    assert snapshot(stopped_run) == before
    # how it runs may change, and the same command as at the start is accepted
    assert main(["bridge", "--out", str(stopped_run), "--resume", *TINY_RUN, "runtime.eval_batch_size=7"]) == 0
    assert (stopped_run / "summary.json").is_file()


def test_resume_refuses_a_dataset_that_changed_on_disk(tmp_path, capsys):
    from PIL import Image

    data = tmp_path / "data"
    for split in ("train", "test"):
        for c in ("a", "b"):
            (data / split / c).mkdir(parents=True)
            for i in range(6):
                Image.new("RGB", (16, 16), (40 * i, 0 if c == "a" else 200, 0)).save(data / split / c / f"{i}.png")
    run = tmp_path / "r"
    args = ["bridge", "--out", str(run), *TINY_RUN, f"data.dataset={data}", "data.val_fraction=0.34",
            "model.image_size=16", "optim.batch_size=4", "runtime.stop_after=1"]
    assert main(args) == 0
    Image.new("RGB", (16, 16)).save(data / "train" / "a" / "extra.png")
    before = snapshot(run)
    assert main(["bridge", "--out", str(run), "--resume"]) == 2
    line = one_line_error(capsys, "the dataset changed since")
    assert "24 files" in line.split("at the start")[0] and "25 files" in line.split("at the start")[1]  # 2 x 2 x 6, + 1
    assert snapshot(run) == before
    with pytest.warns(Lm2vWarning, match="on a changed dataset"):
        assert main(["bridge", "--out", str(run), "--resume", "runtime.allow_data_change=true"]) == 0


def test_resume_without_a_checkpoint_says_to_start_again(tmp_path, capsys):
    from lm2vision.config import save_config

    with open_run(tmp_path / "r") as run:  # a run killed after writing its config, before its first epoch ended
        save_config(stage_config("bridge", None, ONE_EPOCH), run / "config.yaml")
    assert main(["bridge", "--out", str(run), "--resume"]) == 2
    one_line_error(capsys, "stopped before its first checkpoint (no checkpoints/last.json); start it again with --overwrite")


def test_check_target_accepts_a_fresh_folder_beside_the_inputs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert check_target("runs/new", inputs=[tmp_path / "data"]) == Path("runs/new")


def test_a_command_that_stopped_before_computing_is_taken_again_without_overwrite(tmp_path, capsys, monkeypatch):
    # a screen whose model cannot be built (no timm, or its weights neither cached nor reachable) stops
    # inside the run: it leaves the marker and its config, and the same command runs again
    monkeypatch.setattr("lm2vision.models.factory._hub_offline", lambda source: "the hub is offline (test)")
    out = tmp_path / "phase"
    command = ["phase", "--vision", "timm:resnet10t", "--language", "tiny-bert", "--out", str(out), "--no-progress"]
    for _ in range(2):
        assert main(command) == 2
        assert "already exists" not in capsys.readouterr().err
        assert sorted(p.name for p in out.iterdir()) == [MARKER, "config.yaml"]
    with open_run(out, kind="phase") as run:
        (run / "table.csv").write_text("a\n")
    # anything else in it, or a live command's lock, and it is a run again
    with pytest.raises(Lm2vError, match="already exists"):
        with open_run(out, kind="phase"):
            pass
    (out / "table.csv").unlink()
    lock = acquire_lock(out)
    with pytest.raises(Lm2vError, match="already exists|locked|being written"):
        with open_run(out, kind="phase"):
            pass
    lock.unlink()


def test_a_training_run_stopped_by_its_batch_size_is_run_again_with_the_same_out(tmp_path, capsys):
    # the batch check comes after the run dir holds its config and data fingerprint: nothing to lose
    out = tmp_path / "run"
    run = ["bridge", "--out", str(out), *ONE_EPOCH]
    assert main([*run, "optim.batch_size=512"]) == 2
    assert "exceeds" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "config.yaml", "data.json", "labels.safetensors"]
    assert main(run) == 0 and (out / "summary.json").is_file()
