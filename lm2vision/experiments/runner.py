"""Run an experiment's arms x seeds, each run skipped if finished and continued from its checkpoint
if not, so the same command run again after a kill goes on where it stopped."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from ..errors import Lm2vError
from ..train import RunConfig, read_run_config, run_stage
from ..train.checkpoint import has_checkpoint
from ..train.rundir import is_finished, is_run_dir, result_changes
from .design import Arm, Experiment, seed_dir, seeded, stage_configs

# stage2(arm, seed, where) -> (config, run directory, runner such as run_stage or run_dense)
Stage2Runs = Callable[[Arm, "int | None", Path], tuple]


def run_or_resume(cfg: RunConfig, run: Path, start: Callable[..., dict] = run_stage) -> bool:
    """Run ``cfg`` into ``run`` with ``start`` (``run_stage``; ``run_dense`` for a dense config):
    nothing if it finished, resume from its checkpoint if it has one, restart it if it stopped before
    its first checkpoint. A run started with another config is refused. True when the run is finished."""
    if is_finished(run):
        return True
    started = is_run_dir(run)
    changes = result_changes(read_run_config(run, type(cfg)), cfg) if started else []
    if changes:
        raise Lm2vError(f"{run} was started with another config than this experiment's ({'; '.join(changes)}): "
                        "rerun with --overwrite (or another --out)")
    resume = started and has_checkpoint(run)
    summary = start(cfg, run, resume=resume, overwrite=started and not resume)
    return not summary.get("stopped")


def check_configs(exp: Experiment, out: Path) -> None:
    """Build every run's config before any run starts, so a bad arm fails at once, not hours in."""
    for seed in exp.seed_list():
        for arm in exp.arms:
            stage_configs(exp, arm, seed, seed_dir(out, arm, seed))


def probe_stage(exp: Experiment) -> Stage2Runs:
    """An arm's stage 2 as a classification probe (:func:`stage_configs`), in ``WHERE/probe``."""
    def stage2(arm: Arm, seed: int | None, where: Path):
        return stage_configs(exp, arm, seed, where)[1], where / "probe", run_stage
    return stage2


def cell_runs(arm: Arm, seed: int | None, where: Path, stage2: Stage2Runs) -> list[tuple]:
    """The runs of one cell (an arm and a seed, under ``where``) in order, as (config, run directory,
    runner): its bridge (if bridged), then ``stage2(arm, seed, where)``."""
    bridge = [(seeded(arm.cell, seed), where / "bridge", run_stage)] if arm.bridged else []
    return bridge + [stage2(arm, seed, where)]


def run_experiment(exp: Experiment, out: Path, stage2: Stage2Runs | None = None) -> Path | None:
    """Every arm for every seed (seed by seed, so the first seeds' picture is whole early): its bridge,
    then ``stage2(arm, seed, where)`` -> (config, run directory, runner), by default the probe.
    Returns the run that stopped early (``runtime.stop_after``) or None when all are finished."""
    stage2 = stage2 or probe_stage(exp)
    for seed in exp.seed_list():
        for arm in exp.arms:
            for cfg, run, start in cell_runs(arm, seed, seed_dir(out, arm, seed), stage2):
                if not run_or_resume(cfg, run, start):
                    return run
    return None
