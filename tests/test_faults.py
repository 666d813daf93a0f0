"""Fault injection (issue 16): a bridge run killed at any moment resumes to the files of an
uninterrupted run, and a damaged run file is refused in one line, never with a traceback.

The harness and the cases are benchmarks/fault_injection.py's (the whole suite: run that script).
Here: every named kill point, three seeded random kills and every damage case, each command forked
from this worker after one warm-up run (no interpreter start: about half a second a command); then
unit tests of the pieces. ``pytest -m slow``: more random kills, and kills of real
``python -m lm2vision.cli.main`` processes.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn

from conftest import load_benchmark
from lm2vision.errors import Lm2vError, Lm2vWarning
from lm2vision.train.checkpoint import load_checkpoint, pair_paths, save_checkpoint, save_tensors
from lm2vision.train.rundir import MetricsLogger, read_metrics
from lm2vision.utils import io as lio

FI = load_benchmark("fault_injection")

# damage cases that fail in code this suite does not own; strict: an XPASS means it was fixed (drop it here)
KNOWN: dict = {}  # damage cases that fail: none left (strict xfail entries go here)


KNOWN_KILLS: dict = {}  # kill cases that fail: none left


def _param(case, marks=()):
    reason = KNOWN.get(case)
    marks = [*marks, pytest.mark.xfail(strict=True, reason=reason)] if reason else list(marks)
    return pytest.param(case, marks=marks, id="-".join(case).replace("/", "_"))


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    """The launcher (warmed up in this worker), the reference run, the runs stopped after epochs 2
    and 1, and the reference's time holding its lock."""
    root = tmp_path_factory.mktemp("faults")
    launch = FI.Launcher(root / "logs")
    sources, span = FI.make_sources(launch, root / "sources")
    return SimpleNamespace(launch=launch, root=root, sources=sources, ref=sources["finished"], span=span)


def _explain(outcome, suite) -> str:
    return f"{outcome.case}: {outcome.status}: {outcome.detail} (logs in {suite.launch.logs})"


# -- kills ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", [
    pytest.param(c, id=c.name, marks=[pytest.mark.xfail(strict=True, reason=KNOWN_KILLS[c.name])] if c.name in KNOWN_KILLS else [])
    for c in FI.KILL_CASES])
def test_a_run_killed_at_a_named_point_resumes_to_the_uninterrupted_result(suite, case):
    o = FI.kill_case(suite.launch, suite.root / "kills", suite.ref, case)
    assert o.status == "recovered", _explain(o, suite)


@pytest.mark.parametrize("seed", [0, 1, 2, *(pytest.param(s, marks=pytest.mark.slow) for s in range(3, 12))])
def test_a_run_killed_at_random_moments_resumes_to_the_uninterrupted_result(suite, seed):
    o = FI.random_kill_case(suite.launch, suite.root / "random", suite.ref, seed, suite.span)
    assert o.status == "recovered", _explain(o, suite)
    assert "killed at" in o.detail, f"no kill within {suite.span:.2f} s: {_explain(o, suite)}"  # not vacuous


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ckpt_between_files", "in_metrics_line", "after_last_checkpoint"])
def test_a_real_process_killed_at_a_named_point_resumes_to_the_same_result(suite, name):
    """``python -m lm2vision.cli.main`` in a fresh interpreter (OMP_NUM_THREADS=1), SIGKILLed."""
    case = next(c for c in FI.KILL_CASES if c.name == name)
    o = FI.kill_case(suite.launch, suite.root / "subprocess", suite.ref, case, fork=False)
    assert o.status == "recovered", _explain(o, suite)


@pytest.mark.slow
def test_a_real_process_killed_at_random_moments_resumes_to_the_same_result(suite):
    o = FI.random_kill_case(suite.launch, suite.root / "random-subprocess", suite.ref, 0, 2 * suite.span, fork=False)
    assert o.status == "recovered", _explain(o, suite)


def test_resume_of_a_finished_run_changes_nothing(suite):
    run = suite.root / "finished-resume"
    shutil.copytree(suite.ref, run)
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in run.rglob("*") if p.is_file()}
    res = suite.launch.cli(FI.bridge(run, "--resume"), tag="finished-resume")
    assert res.code == 0, res.err
    assert "already finished" in res.out
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in run.rglob("*") if p.is_file()} == before


# -- damage ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", [_param(c) for c in FI.DAMAGE_CASES])
def test_a_damaged_file_is_recovered_from_or_refused_in_one_line(suite, case):
    o = FI.damage_case(suite.launch, suite.root / "damage", suite.sources, suite.ref, *case)
    assert o.status == FI.expected_outcome(*case), _explain(o, suite)


# -- the pieces -----------------------------------------------------------------------------------------


def _model_at(value: float) -> tuple[nn.Module, torch.optim.Optimizer]:
    model = nn.Linear(3, 2)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(value)
    return model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)


def _save(run: Path, epoch: int) -> None:
    model, opt = _model_at(float(epoch))
    model(torch.ones(1, 3)).sum().backward()
    opt.step()  # momentum buffers: the optimizer has tensors to save
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float(epoch))
    save_checkpoint(run, model, opt, {"epoch": epoch})


def _load_into(run: Path) -> tuple[dict, float]:
    model, opt = _model_at(0.0)
    state = load_checkpoint(run, model, opt)
    return state, float(model.weight.detach()[0, 0])


def test_checkpoints_keep_the_previous_pair_and_load_the_newest_whole_one(tmp_path):
    for epoch in (1, 2):
        _save(tmp_path, epoch)
    assert json.loads(pair_paths(tmp_path, "prev")[1].read_text())["epoch"] == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to warn about
        state, w = _load_into(tmp_path)
    assert (state["epoch"], state["source"], w) == (2, "checkpoints/last.*", 2.0)
    # a kill between the two files: tensors of epoch 3, state of epoch 2 -> the previous pair, silently
    save_tensors(pair_paths(tmp_path, "last")[0], {"model.weight": torch.full((2, 3), 3.0)}, {"epoch": 3})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        state, w = _load_into(tmp_path)
    assert (state["epoch"], state["source"], w) == (1, "checkpoints/prev.*", 1.0)
    # the next checkpoint keeps that whole prev pair (it does not rotate the mixed one onto it)
    _save(tmp_path, 2)
    assert json.loads(pair_paths(tmp_path, "prev")[1].read_text())["epoch"] == 1


def test_a_damaged_checkpoint_falls_back_to_the_previous_pair_with_one_warning(tmp_path):
    for epoch in (1, 2):
        _save(tmp_path, epoch)
    pair_paths(tmp_path, "last")[0].write_bytes(b"\x00garbage" * 10)
    with pytest.warns(Lm2vWarning) as rec:
        state, w = _load_into(tmp_path)
    assert len(rec) == 1
    assert "checkpoints/last.safetensors is damaged" in str(rec[0].message)
    assert "resuming from checkpoints/prev.* (epoch 1)" in str(rec[0].message)
    assert (state["epoch"], w) == (1, 1.0)
    pair_paths(tmp_path, "prev")[1].write_text('{"epoch": 1, "optim')  # cut in half
    with pytest.raises(Lm2vError, match=r"checkpoints/last.safetensors is damaged .*checkpoints/prev.json is "
                                        r"damaged .*no whole previous checkpoint") as e:
        _load_into(tmp_path)
    assert "\n" not in str(e.value)


def test_metrics_drop_a_half_written_last_line_with_one_warning(tmp_path):
    log = MetricsLogger(tmp_path, tensorboard=False)
    for epoch in (1, 2, 3):
        log.log({"stage": "bridge", "epoch": epoch, "train_loss": 1.0 / epoch})
    with open(log.path, "a") as f:
        f.write('{"epoch": 4, "train_lo')
    with pytest.warns(Lm2vWarning, match=r"metrics.jsonl line 4 is half-written") as rec:
        assert [r["epoch"] for r in read_metrics(tmp_path)] == [1, 2, 3]
    assert len(rec) == 1
    with pytest.warns(Lm2vWarning, match=r"metrics.jsonl line 4 is half-written") as rec:
        log.truncate_after(2)
    assert len(rec) == 1
    assert log.path.read_text() == "".join(
        json.dumps({"epoch": e, "stage": "bridge", "train_loss": 1.0 / e}, sort_keys=True) + "\n" for e in (1, 2))


@pytest.mark.parametrize("text,match", [
    ('{"epoch": 1}\nnot json\n{"epoch": 2}\n', r"metrics.jsonl line 2 is not JSON .*: the file is damaged"),
    ('{"epoch": 1}\n', r"metrics.jsonl is damaged: it lacks the records of epochs \[2\]"),
    ('{"epoch": 1}\n[1, 2]\n', r"metrics.jsonl line 2 is not a record: the file is damaged"),
])
def test_damaged_metrics_are_refused_in_one_line(tmp_path, text, match):
    (tmp_path / "metrics.jsonl").write_text(text)
    with pytest.raises(Lm2vError, match=match):
        MetricsLogger(tmp_path, tensorboard=False).truncate_after(2)


def test_orphaned_temporary_files_are_removed_and_nothing_else(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    orphans = [tmp_path / ".summary.json.a1b2.tmp", tmp_path / "checkpoints" / ".last.json.x9.tmp",
               tmp_path / "checkpoints" / ".tmpOmnzTe"]  # the last: safetensors' own temporary file
    keep = [tmp_path / "notes.tmp", tmp_path / ".lm2v-lock", tmp_path / "checkpoints" / "last.json"]
    for p in orphans + keep:
        p.write_text("x")
    assert sorted(lio.remove_orphans([tmp_path, tmp_path / "checkpoints"])) == sorted(orphans)
    assert [p.exists() for p in orphans + keep] == [False, False, False, True, True, True]


def test_fault_point_kills_at_the_nth_call_of_its_name_only(monkeypatch):
    kills, notes = [], []
    monkeypatch.setattr(lio.os, "kill", lambda pid, sig: kills.append((pid, sig)))
    monkeypatch.setattr(lio, "_fault_calls", {})
    lio.fault_point("x")  # no LM2V_FAULT: nothing
    monkeypatch.setenv(lio.FAULT_ENV, "replace:last.json:2")
    for name in ("replace:last.json", "replace:prev.json", "replace:last.json", "replace:last.json"):
        lio.fault_point(name, lambda: notes.append(name))
    assert kills == [(os.getpid(), signal.SIGKILL)] and notes == ["replace:last.json"]


def test_atomic_copy_onto_its_own_hard_link_leaves_no_temporary_file(tmp_path):
    src, dst = tmp_path / "last.json", tmp_path / "prev.json"
    src.write_text("{}")
    lio.atomic_copy(src, dst)
    lio.atomic_copy(src, dst)  # a run killed after rotating: prev is already last's hard link
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.json", "prev.json"]
    assert dst.read_text() == "{}"
