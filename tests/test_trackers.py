"""Experiment trackers (``runtime.loggers``): MLflow read back from a local store, W&B through a
recording stand-in; the same tracker run continued on resume; refusals before the run directory exists."""
from __future__ import annotations

import json
import sys
import types
import warnings

import pytest

from conftest import TINY_RUN
from lm2vision.cli.main import main
from lm2vision.errors import Lm2vError, Lm2vWarning
from lm2vision.train import RuntimeConfig, read_metrics, read_summary, run_stage
from lm2vision.train.recipe import stage_config
from lm2vision.train.rundir import MARKER, MetricsLogger
from lm2vision.train.trackers import FAILED, FINISHED, KILLED, mlflow_uri, open_trackers, outcome

ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_ALLOW_FILE_STORE", "WANDB_MODE")


@pytest.fixture(autouse=True)
def _tracker_env(monkeypatch):
    """No tracker settings from the environment; whatever the code sets is undone after the test."""
    for name in ENV:
        monkeypatch.setenv(name, "x")  # recorded, so that the teardown restores the outer value (or its absence)
        monkeypatch.delenv(name)


def _bridge(tmp_path, *over, resume=False, out="r"):
    return run_stage(stage_config("bridge", None, [*TINY_RUN, *over]), tmp_path / out, resume=resume)


def _epochs(run):
    return [r for r in read_metrics(run) if "event" not in r]


# -- MLflow ----------------------------------------------------------------------------------------
def _mlflow_run(uri: str, run_id: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    return client, client.get_run(run_id)


def _history(client, run_id, key):
    return [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]


def test_mlflow_run_stopped_then_resumed_is_one_run_with_one_value_per_epoch(tmp_path):
    pytest.importorskip("mlflow")
    uri = (tmp_path / "store").as_uri()
    over = ("runtime.loggers=[mlflow]", f"runtime.mlflow_uri={uri}", "runtime.tracker_project=exp1")
    run = tmp_path / "r"
    assert _bridge(tmp_path, *over, "runtime.stop_after=1") == {"stopped": True, "epoch": 1}
    state = json.loads((run / "trackers.json").read_text())["mlflow"]
    assert state["tracking_uri"] == uri and state["experiment"] == "exp1"
    client, stopped = _mlflow_run(uri, state["run_id"])
    assert stopped.info.status == "KILLED"  # stopped early: to be resumed
    assert [s for s, _ in _history(client, state["run_id"], "train_loss")] == [1]

    summary = _bridge(tmp_path, *over, resume=True)
    assert json.loads((run / "trackers.json").read_text())["mlflow"] == state  # the same run continued
    client, done = _mlflow_run(uri, state["run_id"])
    experiment = client.get_experiment_by_name("exp1")
    assert len(client.search_runs([experiment.experiment_id])) == 1
    assert done.info.status == "FINISHED" and done.info.run_name == "r"
    params = done.data.params
    assert params["optim.epochs"] == "2" and params["model.name"] == "tiny-bert" and params["labels.ratio"] == "1.0"
    assert params["runtime.loggers"] == "['mlflow']"
    epochs = _epochs(run)
    assert _history(client, state["run_id"], "train_loss") == [(e["epoch"], e["train_loss"]) for e in epochs] \
        and [e["epoch"] for e in epochs] == [1, 2]
    assert _history(client, state["run_id"], "val_acc") == [(e["epoch"], e["val_acc"]) for e in epochs]
    assert summary == read_summary(run)
    assert done.data.metrics["summary/test_acc"] == summary["test_acc"]
    assert _history(client, state["run_id"], "test_acc") == [(2, summary["test_acc"])]  # the "test" record
    assert "epoch" not in done.data.metrics and "summary/pretrained" not in done.data.metrics  # no step, no bools


def test_mlflow_added_on_resume_gets_the_kept_epochs_in_the_default_store(tmp_path, monkeypatch):
    """The default store is mlruns/ inside the run (an lm2v directory), never the current directory."""
    pytest.importorskip("mlflow")
    here = tmp_path / "cwd"
    here.mkdir()
    monkeypatch.chdir(here)
    run = tmp_path / "r"
    _bridge(tmp_path, "runtime.stop_after=1")
    assert not (run / "trackers.json").exists()
    _bridge(tmp_path, "runtime.loggers=[mlflow]", resume=True)
    state = json.loads((run / "trackers.json").read_text())["mlflow"]
    assert state["tracking_uri"] == (run / "mlruns").resolve().as_uri() and state["experiment"] == "lm2vision"
    assert list(here.iterdir()) == []
    client, done = _mlflow_run(state["tracking_uri"], state["run_id"])
    epochs = _epochs(run)
    assert _history(client, state["run_id"], "train_loss") == [(e["epoch"], e["train_loss"]) for e in epochs] \
        and [e["epoch"] for e in epochs] == [1, 2]
    assert done.info.status == "FINISHED"


def test_grid_cells_share_the_store_of_their_outermost_lm2v_folder(tmp_path):
    pytest.importorskip("mlflow")
    cell = tmp_path / "exp" / "arm" / "seed0" / "bridge"
    cell.mkdir(parents=True)
    for d in (tmp_path / "exp", cell):
        (d / MARKER).write_text("{}")
    assert MetricsLogger.home(cell) == (tmp_path / "exp").resolve()
    trackers = open_trackers(cell, RuntimeConfig(loggers=["mlflow"]), MetricsLogger.home(cell))
    trackers.close(FINISHED, None)
    state = json.loads((cell / "trackers.json").read_text())["mlflow"]
    assert state["tracking_uri"] == (tmp_path / "exp" / "mlruns").resolve().as_uri()
    _, run = _mlflow_run(state["tracking_uri"], state["run_id"])
    assert run.info.run_name == "exp/arm/seed0/bridge" and run.info.status == "FINISHED"


def test_mlflow_uri_order_config_then_environment_then_home(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert mlflow_uri(None, tmp_path / "h") == (tmp_path / "h" / "mlruns").as_uri()
    assert mlflow_uri("store", tmp_path / "h") == (tmp_path / "store").as_uri()  # a folder, from the current directory
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracker:5000")
    assert mlflow_uri(None, tmp_path / "h") == "http://tracker:5000"
    assert mlflow_uri("sqlite:///db.sqlite", tmp_path / "h") == "sqlite:///db.sqlite"


@pytest.mark.parametrize("error, summary, status", [
    (None, {"test_acc": 0.5}, FINISHED), (None, None, KILLED),
    (ValueError("boom"), None, FAILED), (ValueError("boom"), {"test_acc": 0.5}, FAILED),
    (KeyboardInterrupt(), None, KILLED),
])
def test_outcome_of_a_stage(error, summary, status):
    assert outcome(error, summary) == status


# -- refusals before the run directory exists -------------------------------------------------------
@pytest.mark.parametrize("value, match", [
    ("[tensorboard]", "runtime.loggers items must be one of mlflow, wandb, got 'tensorboard'"),
    ("[mlflow,mlflow]", "runtime.loggers names mlflow more than once"),
])
def test_bad_logger_is_one_line_exit_2_and_no_run_dir(tmp_path, capsys, value, match):
    pytest.importorskip("mlflow")
    assert main(["bridge", "--out", str(tmp_path / "r"), *TINY_RUN, f"runtime.loggers={value}"]) == 2
    err = capsys.readouterr().err.strip()
    assert match in err and len(err.splitlines()) == 1
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("name", ["mlflow", "wandb"])
def test_missing_library_names_the_extra_before_the_run_dir(tmp_path, monkeypatch, name):
    monkeypatch.setitem(sys.modules, name, None)  # import fails as if not installed
    with pytest.raises(Lm2vError, match=fr'runtime.loggers={name} needs the {name} library: '
                                        fr'pip install "lm2vision\[{name}\]"'):
        _bridge(tmp_path, f"runtime.loggers=[{name}]")
    assert not (tmp_path / "r").exists()


# -- W&B: a recording stand-in for the library --------------------------------------------------------
class _Summary(dict):
    pass


def _fake_wandb(monkeypatch, fail_at_step: int | None = None) -> list:
    """Install a ``wandb`` module that records (call, arguments); ``log`` at ``fail_at_step`` raises."""
    calls = []

    def init(**kw):
        calls.append(("init", kw))
        run = types.SimpleNamespace(id=kw["id"], url=None, summary=_Summary())

        def log(metrics, step):
            if step == fail_at_step:
                raise ConnectionError("server gone\nsecond line")
            calls.append(("log", (step, dict(metrics))))

        run.log = log
        run.summary.update = lambda d: calls.append(("summary", dict(d)))
        run.finish = lambda exit_code: calls.append(("finish", exit_code))
        return run

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=init))
    return calls


def test_wandb_run_continues_on_resume_with_its_id_config_steps_and_finish(tmp_path, monkeypatch):
    calls = _fake_wandb(monkeypatch)
    over = ("runtime.loggers=[wandb]", "runtime.tracker_project=proj")
    run = tmp_path / "r"
    _bridge(tmp_path, *over, "runtime.stop_after=1")
    summary = _bridge(tmp_path, *over, resume=True)
    inits = [kw for c, kw in calls if c == "init"]
    assert len(inits) == 2 and inits[0]["id"] == inits[1]["id"]
    assert json.loads((run / "trackers.json").read_text()) == {"wandb": {"id": inits[0]["id"], "project": "proj"}}
    for kw in inits:
        assert (kw["project"], kw["name"], kw["resume"], kw["dir"]) == ("proj", "r", "allow", str(run))
        assert kw["config"]["optim"]["epochs"] == 2 and kw["config"]["model"]["name"] == "tiny-bert"
    logs = [args for c, args in calls if c == "log"]
    epochs = _epochs(run)
    assert [step for step, _ in logs] == [1, 2, 2]  # epoch 1, epoch 2, the "test" record at the final epoch
    assert logs[0][1]["train_loss"] == epochs[0]["train_loss"] and logs[1][1]["train_loss"] == epochs[1]["train_loss"]
    assert logs[2][1] == {"test_acc": summary["test_acc"], "test_loss": summary["test_loss"]}
    assert not {"epoch", "stage"} & set(logs[0][1])
    # stopped (exit 0, resumable), then the summary and a finished run
    assert [c for c, _ in calls] == ["init", "log", "finish", "init", "log", "log", "summary", "finish"]
    assert [a for c, a in calls if c == "finish"] == [0, 0]
    assert [a for c, a in calls if c == "summary"] == [read_summary(run)]


def test_tracker_failing_mid_run_is_dropped_with_one_warning_and_training_finishes(tmp_path, monkeypatch):
    calls = _fake_wandb(monkeypatch, fail_at_step=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = _bridge(tmp_path, "runtime.loggers=[wandb]")
    ours = [str(w.message) for w in caught if issubclass(w.category, Lm2vWarning)]
    assert ours == ["tracker wandb failed while logging (ConnectionError: server gone); dropped for the rest of "
                    "this run (1 dropped: wandb); metrics.jsonl keeps every record"]
    assert summary == read_summary(tmp_path / "r") and len(_epochs(tmp_path / "r")) == 2
    assert [c for c, _ in calls] == ["init", "log"]  # epoch 1 only; nothing after the drop, no finish


def test_a_failing_stage_ends_its_tracker_run_failed(tmp_path, monkeypatch):
    calls = _fake_wandb(monkeypatch)
    from lm2vision.train import trainer

    def broken(*a, **kw):
        raise RuntimeError("disk full")

    monkeypatch.setattr(trainer, "save_final", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        _bridge(tmp_path, "runtime.loggers=[wandb]")
    assert calls[-1] == ("finish", 1) and "summary" not in [c for c, _ in calls]


def test_real_wandb_offline_writes_its_run_inside_the_run_dir(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    _bridge(tmp_path, "runtime.loggers=[wandb]", "optim.epochs=1")
    run_id = json.loads((tmp_path / "r" / "trackers.json").read_text())["wandb"]["id"]
    assert list((tmp_path / "r" / "wandb").glob(f"offline-run-*-{run_id}"))
