"""Experiment trackers beside metrics.jsonl and TensorBoard (``runtime.loggers``): MLflow and Weights &
Biases, each an optional extra imported only when a config names it.

A tracker run follows its run directory: it starts with the run's config (``config.yaml``) as its
parameters, gets every metrics record's numbers at the record's epoch as step (the ``"test"``
record's as ``test_*``), then the final ``summary.json`` and a status: FINISHED, FAILED (an error),
KILLED (stopped early: ``runtime.stop_after`` or Ctrl-C). Its id is kept in ``RUN/trackers.json``,
so ``--resume`` continues the same tracker run; a tracker that first appears on a resume (or whose
store changed) gets the records kept so far replayed. A tracker that fails at the start is a one-line
error (nothing has trained yet); one that fails later is dropped with one warning, and training goes on.

MLflow store: ``runtime.mlflow_uri`` (a URI, or a folder), else ``MLFLOW_TRACKING_URI``, else the
folder ``mlruns/`` inside the outermost lm2v directory holding the run (the run itself, or the grid /
demo / reproduce folder around it), so that lm2v never writes outside a directory it made. Folders
use MLflow's file store, the one the ``mlflow-skinny`` extra reads and writes offline (its sqlite store
needs SQLAlchemy and Alembic, ``pip install mlflow``); MLflow 3 keeps it behind
``MLFLOW_ALLOW_FILE_STORE=true``, which lm2v sets for this process unless you set it yourself.

W&B: ``wandb.init(project=runtime.tracker_project, id=..., resume="allow", dir=RUN)``; set
``WANDB_MODE=offline`` to log without an account or network (``wandb sync`` uploads it later).
"""
from __future__ import annotations

import importlib
import json
import os
import secrets
import time
import warnings
from pathlib import Path
from typing import Any, Iterable, Protocol
from urllib.parse import urlparse

from tqdm import tqdm

from ..config import read_yaml_mapping
from ..errors import Lm2vError, Lm2vWarning
from ..utils.io import atomic_write_json

TRACKERS = ("mlflow", "wandb")  # the choices of runtime.loggers (TensorBoard and JSON lines are always there)
STATE = "trackers.json"  # RUN/trackers.json: {tracker: its run's id and store}, for --resume
FINISHED, FAILED, KILLED = "FINISHED", "FAILED", "KILLED"
ALLOW_FILE_STORE = "MLFLOW_ALLOW_FILE_STORE"
CONFIG = "config.yaml"  # the run's resolved config (rundir.CONFIG; rundir imports this module)


def require(name: str) -> Any:
    """The tracker library ``name`` (mlflow or wandb), imported; its absence is a one-line
    :class:`Lm2vError` naming the extra to install."""
    try:
        return importlib.import_module(name)
    except ImportError:
        raise Lm2vError(f'runtime.loggers={name} needs the {name} library: pip install "lm2vision[{name}]"') from None


def flatten(config: dict, prefix: str = "") -> dict[str, Any]:
    """``{"optim": {"epochs": 2}}`` -> ``{"optim.epochs": 2}``."""
    out = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def numbers(record: dict, skip: Iterable[str] = ()) -> dict[str, float]:
    """The int and float values of ``record`` (not bools, not ``skip``)."""
    return {k: float(v) for k, v in record.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in skip}


def record_metrics(record: dict) -> dict[str, float]:
    """A metrics record's numbers for a tracker: all but the epoch (it is the step); those of the
    ``"test"`` record named ``test_*``."""
    values = numbers(record, skip=("epoch",))
    if record.get("event") == "test":
        values = {k if k.startswith("test_") else f"test_{k}": v for k, v in values.items()}
    return values


class Tracker(Protocol):
    """One tracker run, as :class:`Trackers` drives it."""

    name: str

    def start(self, config: dict, previous: dict | None) -> tuple[dict, bool]:
        """Open a new run with ``config`` (the nested run config) as its parameters, or continue the
        run ``previous`` (this tracker's entry of trackers.json); returns (the entry to record,
        whether it continued ``previous``)."""

    def location(self) -> str:
        """Where the run is, in words, for the start-of-run line."""

    def log(self, metrics: dict[str, float], step: int) -> None:
        """Log ``metrics`` at ``step`` (the epoch)."""

    def log_summary(self, summary: dict) -> None:
        """Log the final figures of ``summary.json``."""

    def finish(self, status: str) -> None:
        """End the run with FINISHED, FAILED or KILLED."""


def mlflow_uri(uri: str | None, home: Path) -> str:
    """The MLflow tracking URI: ``uri`` (a folder becomes a ``file:`` URI), else
    ``MLFLOW_TRACKING_URI``, else ``HOME/mlruns``."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or str(home / "mlruns")
    if len(urlparse(uri).scheme) > 1:  # "file", "http", "sqlite", ...; not a path (nor a Windows drive)
        return uri
    return Path(uri).expanduser().resolve().as_uri()


class MlflowTracker:
    """An MLflow run in experiment ``project`` of the store ``uri``, through ``MlflowClient`` (no
    global active run, so several stages can run in one process)."""

    name = "mlflow"

    def __init__(self, uri: str, project: str, run_name: str, run_dir: Path):
        self.uri, self.project, self.run_name, self.run_dir = uri, project, run_name, run_dir
        self.client, self.run_id = None, None

    def start(self, config: dict, previous: dict | None) -> tuple[dict, bool]:
        require("mlflow")
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        if urlparse(self.uri).scheme == "file":
            os.environ.setdefault(ALLOW_FILE_STORE, "true")  # MLflow 3 keeps its file store behind this
        self.client = MlflowClient(tracking_uri=self.uri)
        if previous and previous.get("tracking_uri") == self.uri:
            self.run_id = previous["run_id"]
            self.client.update_run(self.run_id, status="RUNNING")
            return previous, True
        if previous:
            warnings.warn(f"{self.run_dir}: the MLflow store changed from {previous.get('tracking_uri')} to "
                          f"{self.uri}; the run continues in a new MLflow run there", Lm2vWarning)
        experiment = self.client.get_experiment_by_name(self.project)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(self.project)
        run = self.client.create_run(experiment_id, run_name=self.run_name,
                                     tags={"lm2v.run_dir": str(self.run_dir.resolve())})
        self.run_id = run.info.run_id
        self.client.log_batch(self.run_id, params=[Param(k, str(v)) for k, v in flatten(config).items()])
        return {"run_id": self.run_id, "tracking_uri": self.uri, "experiment": self.project}, False

    def location(self) -> str:
        return f"{self.uri}, experiment {self.project}, run {self.run_name} ({self.run_id})"

    def log(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in metrics.items()])

    def log_summary(self, summary: dict) -> None:
        """The summary's numbers as metrics ``summary/KEY`` (MLflow has no separate summary)."""
        self.log({f"summary/{k}": v for k, v in numbers(summary).items()}, 0)

    def finish(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status)


class WandbTracker:
    """A W&B run in project ``project``, its files in ``RUN/wandb``; offline with ``WANDB_MODE=offline``."""

    name = "wandb"
    EXIT_CODES = {FINISHED: 0, KILLED: 0, FAILED: 1}  # W&B has no "killed" a client can set: stopped is finished

    def __init__(self, project: str, run_name: str, run_dir: Path):
        self.project, self.run_name, self.run_dir = project, run_name, run_dir
        self.run = None

    def start(self, config: dict, previous: dict | None) -> tuple[dict, bool]:
        wandb = require("wandb")
        again = bool(previous) and previous.get("project") == self.project
        run_id = previous["id"] if again else secrets.token_hex(4)
        if previous and not again:
            warnings.warn(f"{self.run_dir}: the W&B project changed from {previous.get('project')} to "
                          f"{self.project}; the run continues in a new W&B run there", Lm2vWarning)
        self.run = wandb.init(project=self.project, name=self.run_name, id=run_id, resume="allow", config=config,
                              dir=str(self.run_dir))
        return {"id": run_id, "project": self.project}, again

    def location(self) -> str:
        where = getattr(self.run, "url", None) or f"{self.run_dir / 'wandb'} (offline)"
        return f"project {self.project}, run {self.run_name} ({self.run.id}): {where}"

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(metrics, step=step)

    def log_summary(self, summary: dict) -> None:
        self.run.summary.update(summary)

    def finish(self, status: str) -> None:
        self.run.finish(exit_code=self.EXIT_CODES[status])


class Trackers:
    """The tracker runs of one run directory: each call goes to every tracker, and one that raises is
    dropped with one warning (training goes on; metrics.jsonl keeps every record)."""

    def __init__(self, active: list[Tracker], replay: list[Tracker]):
        self.active, self.replay_to, self.dropped = list(active), list(replay), []

    def __bool__(self) -> bool:
        return bool(self.active)

    def log(self, record: dict) -> None:
        """Send the numbers of a metrics record at its epoch."""
        self._each(lambda t: t.log(record_metrics(record), int(record.get("epoch", 0))), "logging")

    def replay(self, records: list[dict]) -> None:
        """Send the records kept on resume to the trackers that started a new run (once)."""
        targets, self.replay_to = [t for t in self.replay_to if t in self.active], []
        for record in records:
            self._each(lambda t: t.log(record_metrics(record), int(record.get("epoch", 0))), "replaying", targets)

    def close(self, status: str, summary: dict | None) -> None:
        """Log ``summary`` (if any), then end every tracker run with ``status``."""
        if summary is not None:
            self._each(lambda t: t.log_summary(summary), "logging the summary")
        self._each(lambda t: t.finish(status), f"ending the run ({status})")
        self.active = []

    def _each(self, call, doing: str, targets: list[Tracker] | None = None) -> None:
        for t in list(self.active if targets is None else targets):
            if t not in self.active:
                continue
            try:
                call(t)
            except Exception as e:  # a server gone must not stop training
                self.active.remove(t)
                self.dropped.append(t.name)
                warnings.warn(f"tracker {t.name} failed while {doing} ({_first_line(e)}); dropped for the "
                              f"rest of this run ({len(self.dropped)} dropped: {', '.join(self.dropped)}); "
                              "metrics.jsonl keeps every record", Lm2vWarning)


def _first_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}"


def outcome(error: BaseException | None, summary: dict | None) -> str:
    """The status a stage ends its tracker runs with: an error is FAILED (Ctrl-C: KILLED); without one,
    a summary is FINISHED and its absence KILLED (stopped early, to be resumed)."""
    if error is not None:
        return KILLED if isinstance(error, KeyboardInterrupt) else FAILED
    return FINISHED if summary is not None else KILLED


def _build(name: str, runtime, run: Path, home: Path) -> Tracker:
    run_name = run.resolve().relative_to(home.resolve().parent).as_posix()
    if name == "mlflow":
        return MlflowTracker(mlflow_uri(runtime.mlflow_uri, home), runtime.tracker_project, run_name, run)
    return WandbTracker(runtime.tracker_project, run_name, run)


def _read_state(run: Path) -> dict:
    try:
        state = json.loads((run / STATE).read_text())
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise Lm2vError(f"{run / STATE} is damaged (not JSON); it holds the tracker run ids that --resume continues: "
                        "move it away to start new tracker runs") from None
    return state if isinstance(state, dict) else {}


def open_trackers(run: Path, runtime, home: Path) -> Trackers:
    """Start (or, as ``RUN/trackers.json`` records, continue) the tracker runs ``runtime.loggers`` asks
    for, record them and print where they are. ``home`` is the outermost lm2v directory holding
    ``run``: MLflow's default store is in it, and run names are paths from its parent. A run that
    already logged records (a resume) replays them to a tracker that starts a new run."""
    state, started, replay = _read_state(run), [], []
    config = read_yaml_mapping(run / CONFIG) if (run / CONFIG).is_file() else {}
    resuming = (run / "metrics.jsonl").is_file()
    for name in runtime.loggers:
        tracker = _build(name, runtime, run, home)
        try:
            state[name], continued = _start(tracker, config, state.get(name))
        except Lm2vError:
            Trackers(started, []).close(FAILED, None)
            raise
        atomic_write_json(run / STATE, state)  # at once: a run killed now is continued, not started twice
        started.append(tracker)
        if resuming and not continued:
            replay.append(tracker)
    return Trackers(started, replay)


def _start(tracker: Tracker, config: dict, previous: dict | None) -> tuple[dict, bool]:
    """``tracker.start`` and a line saying where its run is; a failure is a one-line
    :class:`Lm2vError` (nothing has trained yet)."""
    try:
        entry, continued = tracker.start(config, previous)
        tqdm.write(f"tracker {tracker.name}: {'continues ' if continued else ''}{tracker.location()}")
        return entry, continued
    except Lm2vError:
        raise
    except Exception as e:
        raise Lm2vError(f"cannot start the {tracker.name} run ({_first_line(e)}); fix it, or run "
                        "without it (runtime.loggers=[], also with --resume)") from None
