"""Launchers: how an experiment's cells run. A **cell** is one arm and seed: its bridge run (if
bridged), then its stage-2 run, in that order.

- ``serial``: one cell after another in this process (the default);
- ``local``: ``--jobs N`` cells at once as subprocesses, each on its own GPU (``CUDA_VISIBLE_DEVICES``),
  or on K GPUs under torchrun (``--gpus-per-cell K``); on CPU the cores are split between the jobs;
- ``slurm``: one submitit job per cell (a job array); a preempted or timed-out job is requeued and
  its runs continue from their checkpoints;
- ``submitit-local``: the same through submitit's local executor (no cluster needed).

Outside ``serial`` every cell is written down first as ``OUT/ARM/seedS/cell.json``: its runs, each as
(config type, config YAML, run directory, runner name), never a pickle of user data; its output goes
to ``cell.log`` beside it (local) or to submitit's logs (``OUT/submitit``). A cell started again skips
its finished runs and continues an unfinished one from its checkpoint, so running the same command
again after a kill, a failure or a preemption goes on where it stopped. The summary is read from the
run directories afterwards, whatever ran them.
"""
from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..config import load_config, save_config
from ..errors import Lm2vError
from ..train.rundir import is_finished
from ..utils.io import atomic_write_json
from .design import Experiment, seed_dir
from .runner import Stage2Runs, cell_runs, run_or_resume

LAUNCHERS = ("serial", "local", "slurm", "submitit-local")
try:  # the cluster extra; without it the submitit launchers refuse to start and CellJob is never made
    from submitit.helpers import Checkpointable
except ImportError:  # pragma: no cover
    Checkpointable = object

SPEC, LOG = "cell.json", "cell.log"  # in each cell's seed directory
CLUSTER_HINT = 'pip install "lm2vision[cluster]"'
CELL_MODULE = "lm2vision.experiments.cell"  # the entry point of one cell: python -m CELL_MODULE SPEC

# the names a spec may hold -> (module, attribute): a fixed table, so a spec never names code to import
RUNNERS = {"run_stage": ("lm2vision.train.stages", "run_stage"), "run_dense": ("lm2vision.dense.engine", "run_dense")}
CONFIG_TYPES = {"RunConfig": ("lm2vision.train.config", "RunConfig"),
                "SegmentConfig": ("lm2vision.dense.config", "SegmentConfig"),
                "DetectConfig": ("lm2vision.dense.config", "DetectConfig")}


@dataclass
class Launch:
    """How the cells run: never what they are, so never part of an experiment's record."""

    launcher: str = "serial"
    jobs: int | None = None  # local: cells at once (default: visible GPUs // gpus_per_cell, 1 on CPU)
    gpus_per_cell: int = 1  # local: > 1 runs each cell under torchrun; slurm: the job's GPUs and tasks
    slurm: dict = field(default_factory=dict)  # submitit executor parameters (--slurm key=value)

    def __post_init__(self) -> None:
        if self.launcher not in LAUNCHERS:
            raise Lm2vError(f"--launcher must be one of {', '.join(LAUNCHERS)}, got {self.launcher!r}")
        if self.jobs is not None and self.jobs < 1 or self.gpus_per_cell < 1:
            raise Lm2vError(f"--jobs and --gpus-per-cell must be at least 1, got {self.jobs} and {self.gpus_per_cell}")
        if self.launcher in ("slurm", "submitit-local"):
            require_submitit()  # before any directory is made


@dataclass
class Cell:
    """One arm and seed: its runs in order, its spec file and its log."""

    name: str  # ARM/seedS
    where: Path  # the seed directory
    runs: list[Path]

    @property
    def spec(self) -> Path:
        return self.where / SPEC

    @property
    def log(self) -> Path:
        return self.where / LOG

    def finished(self) -> bool:
        """Whether every run of the cell wrote its summary (read from the run directories)."""
        return all(is_finished(r) for r in self.runs)


class CellsFailed(Exception):
    """Some cells failed; the message has one line per failed cell (the CLI exits with code 1)."""


def require_submitit():
    """The submitit module, or a one-line error naming the extra that installs it."""
    try:
        import submitit
    except ImportError:
        raise Lm2vError(f"the slurm and submitit-local launchers need submitit: {CLUSTER_HINT}") from None
    return submitit


# -- cells written down: what each runs, read back by the process that runs it ---------------------


def write_cells(exp: Experiment, out: Path, stage2: Stage2Runs) -> list[Cell]:
    """Write every cell's spec (seed by seed, arm by arm, as ``serial`` runs them); returns the cells."""
    cells = []
    for seed in exp.seed_list():
        for arm in exp.arms:
            where = seed_dir(out, arm, seed)
            runs = cell_runs(arm, seed, where, stage2)
            cells.append(Cell(f"{arm.name}/{where.name}", where, [run for _, run, _ in runs]))
            write_spec(cells[-1], runs)
    return cells


def write_spec(cell: Cell, runs: list[tuple]) -> None:
    """``cell.json``: each run's config type, config YAML (``cell.RUN.yaml``), run directory and runner."""
    entries = []
    for cfg, run, start in runs:
        kind, runner = type(cfg).__name__, start.__name__
        if kind not in CONFIG_TYPES or runner not in RUNNERS:
            raise ValueError(f"no launcher entry for config {kind} / runner {runner}: add it to CONFIG_TYPES / RUNNERS")
        path = cell.where / f"cell.{run.name}.yaml"
        save_config(cfg, path)
        entries.append({"config_type": kind, "config": str(path), "run": str(run), "runner": runner})
    atomic_write_json(cell.spec, {"name": cell.name, "cwd": os.getcwd(), "runs": entries})


def _named(table: dict, name: str):
    module, attr = table[name]
    return getattr(importlib.import_module(module), attr)


def run_cell(spec: str | Path) -> str | None:
    """Run (or continue) the runs of the cell in ``spec`` in order; returns the run that stopped early
    (``runtime.stop_after``) or None when all are finished. Paths are taken from the directory the
    launching command ran in."""
    data = json.loads(Path(spec).read_text())
    os.chdir(data["cwd"])
    for entry in data["runs"]:
        cfg = load_config(_named(CONFIG_TYPES, entry["config_type"]), entry["config"])
        if not run_or_resume(cfg, Path(entry["run"]), _named(RUNNERS, entry["runner"])):
            return entry["run"]
    return None


# -- launching ---------------------------------------------------------------------------------------


def run_cells(exp: Experiment, out: Path, stage2: Stage2Runs, launch: Launch) -> list[str]:
    """Run every cell of ``exp`` with ``launch`` (not ``serial``); returns the cells that stopped early.
    Raises :class:`CellsFailed` (one line per failed cell) once every other cell has ended."""
    cells = write_cells(exp, out, stage2)
    todo = [c for c in cells if not c.finished()]
    print(f"{len(todo)} of {len(cells)} cells to run ({launch.launcher} launcher)", flush=True)
    failed = run_local(todo, launch) if launch.launcher == "local" else run_submitit(todo, out, launch)
    if failed:
        raise CellsFailed("\n".join(failed) + f"\n{len(failed)} of {len(cells)} cells failed; the others are kept: "
                          "run the same command again to continue")
    return [c.name for c in todo if not c.finished()]


def _report(cell: Cell, ok: bool, done: int, total: int, why: str = "") -> None:
    state = ("finished" if cell.finished() else "stopped early (runtime.stop_after)") if ok else f"failed ({why})"
    print(f"cell {cell.name} {state} ({done}/{total})", flush=True)


# local: subprocesses, one GPU (or K under torchrun) each


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as ``CUDA_VISIBLE_DEVICES`` names them (empty on CPU)."""
    import torch

    n = torch.cuda.device_count()
    named = [g.strip() for g in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if g.strip()]
    return named[:n] if named else [str(i) for i in range(n)]


def device_slots(gpus: list[str], jobs: int | None, per_cell: int) -> list[list[str]]:
    """The GPUs of each of the ``jobs`` cells that run at once (``per_cell`` each; none on CPU)."""
    if not gpus:
        return [[] for _ in range(jobs or 1)]
    jobs = jobs or max(len(gpus) // per_cell, 1)
    if jobs * per_cell > len(gpus):
        raise Lm2vError(f"--jobs {jobs} x --gpus-per-cell {per_cell} needs {jobs * per_cell} GPUs, {len(gpus)} visible")
    return [gpus[i * per_cell:(i + 1) * per_cell] for i in range(jobs)]


def cell_command(spec: Path, per_cell: int) -> list[str]:
    """The command line of one cell: python -m CELL_MODULE SPEC, under torchrun for ``per_cell`` > 1."""
    if per_cell > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={per_cell}",
                "-m", CELL_MODULE, str(spec)]
    return [sys.executable, "-m", CELL_MODULE, str(spec)]


def cell_env(gpus: list[str], threads: int) -> dict:
    """The environment of one cell: its GPUs, and its share of the CPU threads (unless the user set them)."""
    env = dict(os.environ)
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
    env.setdefault("OMP_NUM_THREADS", str(threads))
    return env


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def run_local(cells: list[Cell], launch: Launch) -> list[str]:
    """Run ``cells`` as subprocesses, ``len(slots)`` at once; returns one line per failed cell."""
    slots = device_slots(visible_gpus(), launch.jobs, launch.gpus_per_cell)
    threads = max(1, _cpus() // (len(slots) * launch.gpus_per_cell))
    pending, running, failed, done = list(cells), {}, [], 0
    try:
        while pending or running:
            while pending and slots:
                cell, gpus = pending.pop(0), slots.pop(0)
                running[cell.name] = (cell, gpus, _start(cell, gpus, threads, launch.gpus_per_cell))
            time.sleep(0.2)
            for name, (cell, gpus, proc) in list(running.items()):
                if proc.poll() is None:
                    continue
                del running[name]
                slots.append(gpus)
                done += 1
                _report(cell, proc.returncode == 0, done, len(cells), f"exit code {proc.returncode}")
                if proc.returncode != 0:
                    failed.append(f"cell {cell.name} failed with exit code {proc.returncode}; its log: {cell.log}")
    finally:
        for _, _, proc in running.values():  # this command was stopped: so are the cells it started
            proc.terminate()
            proc.wait()
    return failed


def _start(cell: Cell, gpus: list[str], threads: int, per_cell: int) -> subprocess.Popen:
    with open(cell.log, "a") as log:  # the child holds its own copy of the descriptor
        return subprocess.Popen(cell_command(cell.spec.resolve(), per_cell), stdout=log, stderr=subprocess.STDOUT,
                                env=cell_env(gpus, threads))


# submitit: one job per cell, requeued on preemption


def make_executor(out: Path, launch: Launch):
    """submitit's executor in ``OUT/submitit``: SLURM, or its local twin; ``--slurm`` parameters on top."""
    submitit = require_submitit()
    cluster = "slurm" if launch.launcher == "slurm" else "local"
    if cluster == "slurm" and submitit.SlurmExecutor.affinity() <= 0:
        raise Lm2vError("--launcher slurm: no SLURM here (srun not found); use --launcher submitit-local or local")
    executor = submitit.AutoExecutor(folder=Path(out) / "submitit", cluster=cluster)
    k = launch.gpus_per_cell
    gpus = k if cluster == "slurm" or visible_gpus() else 0  # submitit's local jobs see no GPU unless given some
    # submitit's local executor stops a job after 2 minutes by default; on SLURM the user gives timeout_min
    params = {"name": "lm2v-cell", "tasks_per_node": k, **({"gpus_per_node": gpus} if gpus else {}),
              **({"timeout_min": 24 * 60} if cluster == "local" else {}), **launch.slurm}
    try:
        executor.update_parameters(**params)
    except (ValueError, TypeError, AssertionError) as e:
        raise Lm2vError(f"--slurm: {str(e).splitlines()[0]}") from None
    return executor


def run_submitit(cells: list[Cell], out: Path, launch: Launch) -> list[str]:
    """Submit one job per cell, wait for all; returns one line per failed cell."""
    if not cells:
        return []
    submitit = require_submitit()
    executor = make_executor(out, launch)
    threads = max(1, _cpus() // len(cells)) if launch.launcher == "submitit-local" else None
    jobs = executor.map_array(CellJob(threads), [str(c.spec.resolve()) for c in cells])
    which = {job.job_id: cell for job, cell in zip(jobs, cells)}
    print(f"submitted {len(jobs)} jobs ({jobs[0].job_id.split('_')[0]}); logs in {Path(out) / 'submitit'}", flush=True)
    failed = []
    poll = 1.0 if launch.launcher == "submitit-local" else 15.0
    for done, job in enumerate(submitit.helpers.as_completed(jobs, poll_frequency=poll), 1):
        cell, error = which[job.job_id], job.exception()
        why = "" if error is None else str(error).strip().splitlines()[-1][:200]
        _report(cell, error is None, done, len(cells), why)
        if error is not None:
            failed.append(f"cell {cell.name} failed ({why}); its log: {job.paths.stderr}")
    return failed


# -- the process of one cell ------------------------------------------------------------------------
def cell_say(text: str) -> None:
    """One progress line of a cell (its log and the launcher read them), once per cell under torchrun."""
    if os.environ.get("RANK", "0") == "0":  # under torchrun: once per cell, not once per process
        print(f"[lm2v cell] {text} pid={os.getpid()} t={time.time():.3f}", flush=True)


class CellJob(Checkpointable):
    """The submitit job of a cell: ``CellJob(threads)(spec)``. Being ``Checkpointable``, a job that
    SLURM preempts or times out is requeued with the same spec, and its runs continue from their
    checkpoints. ``threads``: torch threads per job (submitit's local executor shares one machine)."""

    def __init__(self, threads: int | None = None):
        self.threads = threads

    def __call__(self, spec: str) -> str | None:
        import submitit
        import torch

        if self.threads:
            torch.set_num_threads(self.threads)
        if submitit.JobEnvironment().num_tasks > 1:  # one task per GPU: torch.distributed's variables
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        cell_say(f"{spec} started")
        stopped = run_cell(spec)
        cell_say(f"stopped in {stopped}" if stopped else "finished")
        return stopped
