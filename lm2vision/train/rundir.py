"""Run directories, written and read back in one place: refuse to overwrite, log metrics to JSON
lines, TensorBoard and the trackers (:mod:`lm2vision.train.trackers`); read a finished run's config, metrics, summary and model.

Layout of RUN/:
  config.yaml        resolved config         metrics.jsonl   one record per epoch, then "test"
  summary.json       final figures           model.safetensors  full final weights
  init.safetensors   trainable weights at the start (theta_0, for analyses)
  labels.safetensors the training labels used (stage 1)
  predictions.safetensors  per-image test predictions and labels (classification; paired comparisons)
  checkpoints/last.safetensors + last.json   for --resume          tb/   TensorBoard
  trackers.json      MLflow / W&B run ids (runtime.loggers)   mlruns/ the default MLflow store (outermost run)
  .lm2v-run          the marker of a directory lm2v made      .lm2v-lock   the writer's pid, host, SLURM job
"""
from __future__ import annotations

import copy
import json
import os
import shutil
import socket
import sys
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import torch

from ..config import CONFIG_END, config_from_dict, load_config, read_yaml_mapping, to_dict
from ..errors import Lm2vError, Lm2vWarning
from ..utils.io import atomic_write_json, atomic_write_text, fault_point
from ..models import VisionBackbone, create_backbone
from .checkpoint import has_checkpoint, load_full_model, load_tensors, save_tensors
from .config import RunConfig
from .trackers import Trackers, open_trackers, outcome

CONFIG = "config.yaml"  # the resolved config: what readers look for
MARKER = ".lm2v-run"  # written when lm2v creates a directory: only such a directory is ever replaced
LOCK = ".lm2v-lock"  # {"pid", "host", "slurm_job"} of the command writing the directory, removed when it ends
REPLACED = ".lm2v-replaced"  # suffix of a run moved aside by --overwrite until the new run has started
COMMITTED = ("checkpoints/last.json", "summary.json")  # a run holding one of these (at any depth: grid cells) has started


# -- writing: safe targets, a lock, replace only after the new run has started --------------------


def check_target(path: str | Path, inputs: Iterable[str | Path] = ()) -> Path:
    """Refuse a path that can never be a run directory, in one line: empty, the current directory or
    one of its parents, an input of the command (or a folder holding one), a path under a file."""
    if not str(path).strip():
        raise Lm2vError("--out is empty: give the run directory to write")
    run = Path(path).expanduser()
    target, here = run.resolve(), Path.cwd().resolve()
    if target == here or target in here.parents:
        raise Lm2vError(f"refusing to write a run into {path}: it is the current directory or one of its parents")
    for item in inputs:
        source = Path(item).expanduser().resolve()
        if target == source or target in source.parents:
            raise Lm2vError(f"refusing to write a run into {path}: it holds {item}, an input of this command")
    for parent in [target, *target.parents]:
        if parent.exists():
            if not parent.is_dir():
                raise Lm2vError(f"cannot write a run into {path}: {parent} is a file")
            break
    return run


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def acquire_lock(run: Path) -> Path:
    """Create ``run/.lm2v-lock`` exclusively; a lock left by a dead process of this host is taken over
    with a warning, a live one is a one-line error."""
    lock = run / LOCK
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            _check_stale(lock)
            continue
        with os.fdopen(fd, "w") as f:
            json.dump({"pid": os.getpid(), "host": socket.gethostname(), "slurm_job": os.environ.get("SLURM_JOB_ID")}, f)
        return lock
    raise Lm2vError(f"{run} is locked by another lm2v command ({lock})")


def _check_stale(lock: Path) -> None:
    """Remove ``lock`` if its process is gone (same host), else refuse in one line."""
    try:
        owner = json.loads(lock.read_text())
    except FileNotFoundError:
        return  # released meanwhile: try again
    except (OSError, ValueError):
        owner = {}  # half-written by a process killed while locking
    pid, host = owner.get("pid"), owner.get("host")
    job = os.environ.get("SLURM_JOB_ID")
    # a SLURM job requeued after a hard kill (maybe on another node) finds its own earlier self's lock
    requeued = job is not None and owner.get("slurm_job") == job
    if not isinstance(pid, int) or requeued or (host == socket.gethostname() and not _alive(pid)):
        why = f"SLURM job {job} was requeued" if requeued else f"process {pid} is no longer running"
        warnings.warn(f"removing the stale lock of {lock.parent} ({why})", Lm2vWarning)
        lock.unlink(missing_ok=True)
        return
    raise Lm2vError(f"{lock.parent} is being written by another lm2v command (process {pid} on {host}); "
                    f"wait for it to finish, or delete {lock} if that process is gone")


def replaced_path(run: str | Path) -> Path:
    """Where ``--overwrite`` keeps the old run of ``run`` until the new one has started."""
    run = Path(run)
    return run.parent / f".{run.name}{REPLACED}"


def has_started(run: str | Path) -> bool:
    """Whether the run in ``run`` (or one of the runs a grid or demo holds) has committed any state:
    a checkpoint or a summary."""
    return any(next(Path(run).glob(f"**/{name}"), None) is not None for name in COMMITTED)


def drop_replaced(run: str | Path) -> None:
    """Delete the run that ``--overwrite`` moved aside: called once the new run has started."""
    old = replaced_path(run)
    if old.is_dir() and (old / MARKER).is_file():
        shutil.rmtree(old)


def _restore_replaced(run: Path) -> None:
    """Put the run moved aside back in place of a new run that never started."""
    old = replaced_path(run)
    if not (old.is_dir() and (old / MARKER).is_file()):
        return
    if run.exists():
        if not (run / MARKER).is_file() or has_started(run):
            return  # not ours, or the new run has started: the old one is kept aside, not lost
        shutil.rmtree(run)
    os.replace(old, run)
    warnings.warn(f"{run}: the new run stopped before its first checkpoint, so the run it was to replace "
                  "is back in place", Lm2vWarning)


def _recover_interrupted_replace(run: Path) -> None:
    """A command killed during ``--overwrite`` left the old run aside: if the new run had started it
    is dropped, else it is put back."""
    if replaced_path(run).exists():
        if run.is_dir() and has_started(run):
            drop_replaced(run)
        else:
            _restore_replaced(run)


def made_by_lm2v(run: Path) -> bool:
    """Whether lm2v made ``run``: it holds the marker, or nothing but lm2v's own files (a command killed
    while writing the marker leaves ``.lm2v-run.*.tmp``)."""
    return (run / MARKER).is_file() or all(p.name.lstrip(".").startswith("lm2v-") for p in run.iterdir())


def _replace(run: Path) -> None:
    """Move the lm2v-made directory ``run`` aside (after checking no command is writing it)."""
    if not made_by_lm2v(run):
        what = "an lm2v run made before run markers existed" if (run / CONFIG).is_file() else "not an lm2v run"
        raise Lm2vError(f"refusing to overwrite {run}: it has no {MARKER} marker ({what}); "
                        "move or delete it yourself, or choose another --out")
    lock = acquire_lock(run)
    try:
        if not (run / MARKER).is_file():  # leftovers of a cut marker write: mark it, so the aside copy is dropped as ours
            (run / MARKER).touch()
        os.replace(run, replaced_path(run))
    except OSError as e:
        lock.unlink(missing_ok=True)
        raise Lm2vError(f"cannot move {run} aside to replace it: {e.strerror}") from None
    (replaced_path(run) / LOCK).unlink(missing_ok=True)


def is_stub(run: Path) -> bool:
    """Whether ``run`` holds only what a command that stopped before computing anything leaves: lm2v's
    marker, the config it was to run, its data fingerprint and its drawn labels, all derived from the
    config (no lock of a live command). Such a directory is taken again without ``--overwrite``:
    there is nothing in it to lose."""
    names = {p.name for p in run.iterdir()}
    return MARKER in names and names <= {MARKER, CONFIG, DATA_FINGERPRINT, LABELS}


def _create(run: Path, kind: str) -> None:
    run.mkdir(parents=True, exist_ok=True)
    marker = {"kind": kind, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "pid": os.getpid()}
    atomic_write_json(run / MARKER, marker)


def _claim(run: Path, resume: bool, overwrite: bool, kind: str) -> Path:
    """Checks and moves of ``open_run``: returns the lock it holds."""
    if resume and overwrite:
        raise Lm2vError("--resume and --overwrite exclude each other")
    _recover_interrupted_replace(run)
    occupied = run.is_dir() and any(run.iterdir()) and not is_stub(run)
    if resume:
        if not is_run_dir(run):
            raise Lm2vError(f"nothing to resume in {run}: not an lm2v run directory")
        return acquire_lock(run)
    if occupied and not overwrite:
        how = "--resume to continue it or --overwrite" if kind in ("run", "grid") else "--overwrite"
        raise Lm2vError(f"{kind} directory {run} already exists; use {how} to replace it")
    if occupied:
        _replace(run)
    _create(run, kind)
    return acquire_lock(run)


@contextmanager
def open_run(path: str | Path, *, resume: bool = False, overwrite: bool = False, inputs: Iterable[str | Path] = (),
             kind: str = "run", rt=None) -> Iterator[Path]:
    """The run directory ``path``, safe to write while the block runs.

    Call it after the new run's config, model and data have been validated. It refuses impossible
    targets (:func:`check_target`), refuses an existing directory unless ``resume`` (an lm2v run) or
    ``overwrite`` (only a directory lm2v made, holding ``.lm2v-run``), and locks the directory for the
    block. ``overwrite`` moves the old run aside; it is deleted once the new run has started (its first
    checkpoint or summary, see :func:`drop_replaced`) and put back if the block fails before that.
    Under torchrun only the main process (``rt.is_main``) touches the file system; all meet at a barrier.
    """
    run = check_target(path, inputs)
    main = rt is None or rt.is_main
    lock = _claim(run, resume, overwrite, kind) if main else None
    if rt is not None:
        rt.barrier()
    try:
        yield run
    except BaseException:
        if main:
            lock.unlink(missing_ok=True)
            _restore_replaced(run)
        raise
    if main:
        drop_replaced(run)
        lock.unlink(missing_ok=True)


# -- resuming: the same run, on the same data ---------------------------------------------------

DATA_FINGERPRINT = "data.json"  # the dataset's fingerprint, saved when the run starts
LABELS = "labels.safetensors"  # stage 1's training labels (drawn from the seed)


def finished_summary(run: str | Path) -> dict | None:
    """The summary of a finished run, or None when ``run/summary.json`` is missing or does not parse
    (a resume then redoes the final evaluation and writes it again)."""
    try:
        summary = json.loads((Path(run) / "summary.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return summary if isinstance(summary, dict) else None


def is_finished(run: str | Path) -> bool:
    """Whether the run in ``run`` wrote a whole summary (``--resume`` then has nothing to do)."""
    return finished_summary(run) is not None


def config_changes(saved: dict, new: dict, prefix: str = "") -> list[str]:
    """``key: old -> new`` for every dotted key whose value differs between two config dicts."""
    out = []
    for key in sorted(set(saved) | set(new)):
        a, b, name = saved.get(key), new.get(key), f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_changes(a, b, f"{name}.")
        elif a != b:
            out.append(f"{name}: {a!r} -> {b!r}")
    return out


def result_changes(saved: Any, cfg: Any) -> list[str]:
    """:func:`config_changes` between two configs of one run, leaving out what does not change its
    result: ``runtime.*`` (how it runs) and ``model.num_classes`` (set from the data at the start)."""
    theirs, ours = to_dict(saved), to_dict(cfg)
    for d in (theirs, ours):
        d.pop("runtime")
        d.get("model", {}).pop("num_classes", None)
    return config_changes(theirs, ours)


def resumed_config(run: str | Path, cls: type = RunConfig, path: str | Path | None = None,
                   overrides: Sequence[str] = ()) -> Any:
    """The config ``--resume`` continues with: the run's saved config with the user's file and
    overrides on top (refused by :func:`check_resume` if they change anything but ``runtime.*``)."""
    _check_resumable(Path(run))
    return load_config(cls, path, overrides, base=to_dict(read_run_config(run, cls)))


def _check_resumable(run: Path) -> None:
    """Refuse ``--resume`` of a directory that holds no run config, saying what to do instead."""
    if is_run_dir(run):
        return
    if run.is_dir() and made_by_lm2v(run):
        raise Lm2vError(f"nothing to resume in {run}: it stopped before writing its {CONFIG}; "
                        "start it again with --overwrite")
    raise Lm2vError(f"nothing to resume in {run}: not an lm2v run directory (no {CONFIG})")


def check_resume(run: str | Path, cfg: Any) -> Any:
    """The saved config of ``run`` with ``cfg``'s runtime; refuses, listing them, any difference
    between ``cfg`` and the saved config outside ``runtime.*`` (the result would no longer be the
    run's), and a run with no checkpoint to continue from."""
    run = Path(run)
    _check_resumable(run)
    saved = read_run_config(run, type(cfg))
    changes = result_changes(saved, cfg)
    if changes:
        raise Lm2vError(f"--resume continues {run} as it was configured, but these settings differ: "
                        f"{'; '.join(changes)}; drop them, or start a new run (another --out, or --overwrite)")
    if not is_finished(run) and not has_checkpoint(run):
        raise Lm2vError(f"nothing to resume in {run}: it stopped before its first checkpoint (no checkpoints/last.json); "
                        "start it again with --overwrite")
    saved.runtime = cfg.runtime
    return saved


def resume_state(run: Path, cfg: Any, resume: bool) -> tuple[Any, dict | None]:
    """(the config to run, the summary if there is nothing left to do). With ``resume``: the saved
    config with ``cfg``'s runtime (:func:`check_resume`), and a finished run's summary, marked
    ``"finished_before"``, so that the command reports it and changes nothing."""
    if not resume:
        return cfg, None
    cfg = check_resume(run, cfg)
    summary = finished_summary(run)
    return cfg, ({**summary, "finished_before": True} if summary is not None else None)


def record_data(run: Path, fp: dict) -> None:
    """Save the dataset's fingerprint in the run (at its start)."""
    atomic_write_json(run / DATA_FINGERPRINT, fp)


def check_data(run: Path, fp: dict, allow_change: bool) -> None:
    """Refuse to resume on a dataset whose fingerprint differs from the one saved at the start,
    unless ``allow_change`` (``runtime.allow_data_change=true``), which warns instead."""
    path = run / DATA_FINGERPRINT
    if not path.is_file():
        return  # a run from before fingerprints: nothing to compare with
    try:
        was = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise Lm2vError(f"{path} is damaged ({e.__class__.__name__}); it records the dataset the run started on: "
                        "resume with runtime.allow_data_change=true if you know the data is unchanged") from None
    if not isinstance(was, dict):
        was = {}
    if was == fp:
        return
    what = (f"{was.get('source')}: {was.get('files')} files, sha256 {str(was.get('sha256'))[:12]} at the start; "
            f"{fp['source']}: {fp['files']} files, sha256 {fp['sha256'][:12]} now")
    if not allow_change:
        raise Lm2vError(f"the dataset changed since {run} started ({what}); resume anyway with "
                        "runtime.allow_data_change=true, or start a new run")
    warnings.warn(f"resuming {run} on a changed dataset ({what})", Lm2vWarning)


# wall-clock keys of the metrics records: the only ones that differ between a run and its resumed twin
TIMING_KEYS = ("epoch_time_s", "img_per_s")


class MetricsLogger:
    """Appends one JSON object per record to metrics.jsonl, mirrors scalars to TensorBoard and the
    numbers to the experiment trackers of ``runtime.loggers`` (:mod:`lm2vision.train.trackers`)."""

    def __init__(self, run: Path, tensorboard: bool = True, enabled: bool = True, trackers: Trackers | None = None):
        self.run = run
        self.path = run / "metrics.jsonl"
        self.enabled = enabled
        self.trackers = trackers if enabled and trackers is not None else Trackers([], [])
        self.tb = None
        if enabled and tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run / "tb"))

    @classmethod
    def for_run(cls, run: Path, runtime, enabled: bool = True) -> "MetricsLogger":
        """The logger of a stage's run directory, as its ``runtime`` config (``RuntimeConfig``) asks:
        on the main process, it starts or continues the tracker runs of ``runtime.loggers``."""
        trackers = open_trackers(run, runtime, cls.home(run)) if enabled and runtime.loggers else None
        return cls(run, runtime.tensorboard, enabled=enabled, trackers=trackers)

    @staticmethod
    def home(run: Path) -> Path:
        """The outermost lm2v directory holding ``run`` (a grid's, a demo's, or ``run`` itself)."""
        run = Path(run).resolve()
        marked = [p for p in (run, *run.parents) if (p / MARKER).is_file()]
        return marked[-1] if marked else run

    def log(self, record: dict) -> None:
        """Write ``record`` (numbers, strings); scalars also go to TensorBoard at its epoch."""
        if not self.enabled:
            return
        line = json.dumps(record, sort_keys=True) + "\n"
        with open(self.path, "a") as f:
            fault_point("in_metrics_line", lambda: (f.write(line[: len(line) // 2]), f.flush()))
            f.write(line)
            f.flush()
        if self.tb is not None:
            step = int(record.get("epoch", 0))
            prefix = record.get("stage", "run")
            for k, v in record.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "epoch":
                    self.tb.add_scalar(f"{prefix}/{k}", v, step)
            self.tb.flush()
        self.trackers.log(record)

    @staticmethod
    def read(path: Path) -> list[dict]:
        """The records of the metrics file ``path``. An unterminated last line that does not parse is
        what a process killed inside :meth:`log` leaves: it is dropped with one warning. Any other
        line that does not parse is a one-line :class:`Lm2vError` (the file is damaged)."""
        records, half = MetricsLogger._parse(path)
        if half:
            warnings.warn(f"{path} line {half} is half-written (a process was killed while logging); dropped",
                          Lm2vWarning)
        return records

    @staticmethod
    def _parse(path: Path) -> tuple[list[dict], int | None]:
        """(records, the number of a half-written last line or None); see :meth:`read`."""
        try:
            lines = path.read_bytes().decode("utf-8").split("\n")  # last item "": the file ends with a newline
        except UnicodeDecodeError:
            raise Lm2vError(f"{path} is damaged (not text)") from None
        records = []
        for i, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                if i == len(lines):
                    return records, i
                raise Lm2vError(f"{path} line {i} is not JSON ({e}): the file is damaged") from None
            if not isinstance(record, dict):
                raise Lm2vError(f"{path} line {i} is not a record: the file is damaged")
            records.append(record)
        return records, None

    def epoch_record(self, epoch: int) -> dict:
        """The record of ``epoch`` (a resume after the last epoch finishes with it)."""
        found = [r for r in self._parse(self.path)[0] if r.get("epoch") == epoch and "event" not in r] \
            if self.path.is_file() else []
        if not found:
            raise Lm2vError(f"{self.path} has no record of epoch {epoch}, the last checkpoint's: the file is damaged")
        return found[-1]

    def truncate_after(self, epoch: int) -> None:
        """On resume, drop records of epochs after the checkpoint (a crash may have left some) and
        the ``test`` record; refuse, in one line, a file that lacks a record of epochs 1..``epoch``."""
        if not self.enabled:
            return
        records, half = self._parse(self.path) if self.path.is_file() else ([], None)
        keep = [r for r in records if r.get("epoch", 0) <= epoch and r.get("event") != "test"]
        have = {r.get("epoch") for r in keep if "event" not in r}
        missing = [e for e in range(1, epoch + 1) if e not in have]
        if missing:
            what = "is damaged: it lacks" if self.path.is_file() else "is missing, with"
            raise Lm2vError(f"{self.path} {what} the records of epochs {missing} before the checkpoint "
                            f"(epoch {epoch}); start the run again with --overwrite")
        if half:  # warned here, after the check: a refusal stays one line
            warnings.warn(f"{self.path} line {half} is half-written (a process was killed while logging); dropped",
                          Lm2vWarning)
        text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in keep)
        if text.encode() != (self.path.read_bytes() if self.path.is_file() else b""):
            atomic_write_text(self.path, text)
        self.trackers.replay(keep)

    def close(self) -> None:
        """Close TensorBoard; log ``summary.json`` (when written) to the trackers and end their runs:
        FINISHED with a summary, FAILED when an error passes through the ``finally`` that calls this
        (KILLED for Ctrl-C), KILLED when the stage stopped early (``runtime.stop_after``)."""
        if self.tb is not None:
            self.tb.close()
        if self.trackers:
            summary = finished_summary(self.run)
            self.trackers.close(outcome(sys.exc_info()[1], summary), summary)


# -- reading -------------------------------------------------------------------------------------
def is_run_dir(path: str | Path) -> bool:
    """Whether ``path`` is a directory holding a run's ``config.yaml``."""
    return (Path(path) / CONFIG).is_file()


def read_run_config(run: str | Path, cls: type = RunConfig) -> Any:
    """The resolved config saved in ``run/config.yaml``, as ``cls`` (dense runs: DetectConfig /
    SegmentConfig). A file that is not a config, or (in a marked run) one cut short, is an Lm2vError."""
    if not is_run_dir(run):
        raise Lm2vError(f"{run} is not an lm2v run directory (no {CONFIG})")
    path = Path(run) / CONFIG
    data = read_yaml_mapping(path)
    if (Path(run) / MARKER).is_file() and not path.read_bytes().rstrip().endswith(CONFIG_END.encode()):
        raise Lm2vError(f"{path} is damaged: it was cut short (no '{CONFIG_END}' line at its end)")
    return config_from_dict(cls, data)


def read_metrics(run: str | Path) -> list[dict]:
    """All records of a run's metrics.jsonl, in order (epochs, then the ``"event": "test"`` record);
    a half-written last line (a killed run) is dropped with a warning, any other damage refused."""
    path = Path(run) / "metrics.jsonl"
    if not path.is_file():
        raise Lm2vError(f"no metrics.jsonl in {run}")
    return MetricsLogger.read(path)


def read_summary(run: str | Path) -> dict:
    """The final figures of a finished run (``summary.json``)."""
    path = Path(run) / "summary.json"
    if not path.is_file():
        raise Lm2vError(f"{run} has no summary.json (unfinished run?)")
    summary = finished_summary(run)
    if summary is None:
        raise Lm2vError(f"{path} is damaged (not a JSON mapping); lm2v {{bridge,probe,train}} --resume writes it again")
    return summary


PREDICTIONS = "predictions.safetensors"  # the final model's test predictions, image by image


def save_predictions(run: str | Path, pred: torch.Tensor, label: torch.Tensor) -> None:
    """The final model's class index for every test image, in the test split's order, beside the
    true labels: what paired comparisons across runs resample (:mod:`lm2vision.stats`)."""
    save_tensors(Path(run) / PREDICTIONS, {"pred": pred.to(torch.int64), "label": label.to(torch.int64)})


def read_predictions(run: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """(pred, label) of a run's test images, as saved by :func:`save_predictions`; a run without them
    (written before lm2v saved them, or a dense task) is a one-line error."""
    path = Path(run) / PREDICTIONS
    if not path.is_file():
        raise Lm2vError(f"{run} has no {PREDICTIONS} (a run from an older lm2v, or not a classification "
                        "run): rerun it to compare it image by image")
    t = load_tensors(path)
    if set(t) != {"pred", "label"} or t["pred"].shape != t["label"].shape or t["pred"].dim() != 1:
        raise Lm2vError(f"{path} is damaged (expected 1-d tensors pred and label of one length)")
    return t["pred"], t["label"]


def build_architecture(cfg: RunConfig) -> VisionBackbone:
    """The run's architecture, freshly initialised, without reading any pretrained weights."""
    model_cfg = copy.deepcopy(cfg.model)
    model_cfg.pretrained = False
    return create_backbone(model_cfg)


def load_run_model(run: str | Path, weights: str = "model.safetensors") -> tuple[VisionBackbone, RunConfig]:
    """Rebuild a finished run's backbone with its final weights (or ``init.safetensors`` merged in)."""
    if weights not in ("model.safetensors", "init.safetensors"):
        raise Lm2vError(f"weights must be model.safetensors or init.safetensors, got {weights!r}")
    run = Path(run)
    cfg = read_run_config(run)
    model = build_architecture(cfg)
    load_full_model(run / "model.safetensors", model)
    if weights == "init.safetensors":
        load_init_weights(run, model)
    return model, cfg


def load_init_weights(run: str | Path, model: VisionBackbone) -> None:
    """Overwrite the trainable tensors with their values at the start of the run (theta_0)."""
    path = Path(run) / "init.safetensors"
    if not path.is_file():
        raise Lm2vError(f"{run} has no init.safetensors")
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in load_tensors(path).items():
            if name not in params or params[name].shape != value.shape:
                raise Lm2vError(f"{path}: tensor {name} does not match the model")
            params[name].copy_(value)
