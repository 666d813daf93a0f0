"""Fault injection for ``lm2v bridge`` runs: a run killed at any moment resumes to the files of an
uninterrupted run, and a damaged file is refused in one line, never with a traceback.

Three families of cases:

* kill at a named point: the command SIGKILLs itself at the N-th call of ``fault_point(POINT)``
  (``LM2V_FAULT=POINT:N``, see :mod:`lm2vision.utils.io`); one killed command per fault of the case
  (the first a fresh run, the others ``--resume``), then a plain ``--resume``;
* kill at a random moment: SIGKILL after a delay drawn from ``random.Random(seed)`` (the clock starts
  when the command holds the run's lock), again on each ``--resume`` until a command finishes;
* damage: each file of a finished run and of a run stopped by ``runtime.stop_after`` (after epoch 2,
  and after epoch 1: no ``prev`` checkpoint), truncated to half, overwritten with garbage bytes or
  deleted, then each command that reads that file.

Outcomes: ``recovered``: exit 0 and, for ``--resume``, the run's final files equal the uninterrupted
run's (:func:`compare_runs`); ``refused``: exit 2 and one stderr line naming the file; ``FAILED``:
anything else (a traceback, a hang, another exit code, other files, a vague message) or an outcome
other than :func:`expected_outcome`, the policy written down.

    python benchmarks/fault_injection.py --seeds 0 1 2 --out /tmp/lm2v-faults
    python benchmarks/fault_injection.py --fork      # every command forked from this process (fast)

Kills run ``python -m lm2vision.cli.main`` (one thread) unless ``--fork``; the damage cases always run
``main(argv)`` in a child forked from this process (no interpreter start, the same code path).
tests/test_faults.py runs a sample of these cases through the same functions.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
import yaml

from lm2vision.utils.io import FAULT_ENV
from lm2vision.train.rundir import LOCK, TIMING_KEYS

IGNORED = {".lm2v-run", LOCK, "tb"}  # run marker, lock, TensorBoard: not part of a run's result
EPOCHS = 4
RUN_ARGS = (
    "model.name=tiny-gpt2", "model.pretrained=false", "model.image_size=32", "model.patch_size=8",
    "model.dropout=0.1",  # the dropout RNG must be restored too
    "data.max_train_per_class=4", "data.max_test_per_class=2", "data.val_fraction=0.25",
    "optim.batch_size=8", f"optim.epochs={EPOCHS}", "runtime.progress=false", "runtime.tensorboard=false",
)
RESUME_ARGS = ("runtime.stop_after=0", "runtime.progress=false", "runtime.tensorboard=false")
TIMEOUT_S = 300
MARK = ".lm2v-fault-injection"  # marks a --out directory this script may replace


def bridge(run: Path, *flags: str) -> list[str]:
    """``lm2v bridge`` into ``run``: a fresh run, or with ``--resume`` / ``--overwrite``."""
    return ["bridge", "--out", str(run), *flags, *(RESUME_ARGS if "--resume" in flags else RUN_ARGS)]


# -- running one command in a child process ----------------------------------------------------


@dataclass
class Result:
    code: int  # exit code; -9 when SIGKILLed
    out: str
    err: str
    seconds: float  # from the start of the clock (see Launcher.cli) to the end

    @property
    def killed(self) -> bool:
        return self.code == -signal.SIGKILL

    def text(self) -> str:
        return self.out + self.err

    def err_lines(self) -> list[str]:
        return [ln for ln in self.err.splitlines() if ln.strip()]

    def refusal(self) -> str | None:
        """The one-line refusal: exit 2, no traceback, one ``error:`` line on stderr and it is the last
        (progress lines before it, as ``lm2v analyze`` logs, are allowed); else None."""
        lines = self.err_lines()
        errors = [ln for ln in lines if "error:" in ln]
        if self.code != 2 or "Traceback" in self.err or len(errors) != 1 or lines[-1] != errors[0]:
            return None
        return errors[0]


def _print_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"{category.__name__}: {message}", file=sys.stderr)


def _child(fn: Callable[[], int], fault: str | None, out: Path, err: Path) -> None:
    """In a forked child: arm the fault, send output to files, run ``fn``, exit with its code (2 on
    an Lm2vError, 70 with the traceback on stderr for anything else). Never returns."""
    code = 70
    try:
        from lm2vision.errors import Lm2vError
        from lm2vision.utils import io as lio

        lio._fault_calls.clear()
        os.environ.pop(FAULT_ENV, None)
        if fault:
            os.environ[FAULT_ENV] = fault
        torch.set_num_threads(1)  # OpenMP's pool does not survive fork; one thread, as the references
        for fd, path in ((1, out), (2, err)):
            os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), fd)
        sys.stdout = open(1, "w", buffering=1, closefd=False)
        sys.stderr = open(2, "w", buffering=1, closefd=False)
        warnings.resetwarnings()
        warnings.simplefilter("default")
        warnings.showwarning = _print_warning  # the parent (pytest) may be recording warnings
        try:
            code = int(fn() or 0)
        except Lm2vError as e:
            print(f"error: {e}", file=sys.stderr)
            code = 2
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 2
    except BaseException:
        traceback.print_exc()
        code = 70
    finally:
        for f in (sys.stdout, sys.stderr):
            try:
                f.flush()
            except Exception:
                pass
        os._exit(code)


def _lock_pid(clock: Path) -> int | None:
    try:
        return json.loads(clock.read_text()).get("pid")
    except (OSError, ValueError, AttributeError):
        return None


class Launcher:
    """Runs commands in child processes, forked from this one (``fork=True``: no interpreter start)
    or as ``python -m lm2vision.cli.main``; logs go under ``logs``."""

    def __init__(self, logs: Path, fork: bool = True):
        self.logs, self.fork, self.n = Path(logs), fork, 0
        self.logs.mkdir(parents=True, exist_ok=True)
        self._warm_up(self.logs / "warm-up")

    @staticmethod
    def _warm_up(work: Path) -> None:
        """One short bridge run and its analysis in this process: the lazy imports and first-call
        set-ups happen here once, and every forked child inherits them (about 0.5 s a command, not 4)."""
        import contextlib
        import io

        from lm2vision.cli.main import main

        shutil.rmtree(work, ignore_errors=True)
        sink, threads = io.StringIO(), torch.get_num_threads()
        torch.set_num_threads(1)  # as the children: a model this small is several times slower on two
        try:
            with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                codes = [main([*bridge(work / "run"), "optim.epochs=1"]),
                         main(["analyze", str(work / "run"), "--out", str(work / "analysis"), "--no-progress",
                               "--skip", "landscape,features,alignment,weights"])]
        finally:
            torch.set_num_threads(threads)
        if codes != [0, 0]:
            raise RuntimeError(f"the warm-up run failed: {sink.getvalue()[-400:]}")

    def _paths(self, tag: str) -> tuple[Path, Path]:
        self.n += 1
        base = f"{self.n:04d}-{tag}"
        return self.logs / f"{base}.out", self.logs / f"{base}.err"

    def cli(self, argv: Sequence[str], fault: str | None = None, kill_after: float | None = None,
            clock: Path | None = None, tag: str = "cmd", fork: bool | None = None) -> Result:
        """``lm2v argv``; with ``fault`` armed; SIGKILLed ``kill_after`` seconds after the clock starts
        (when the command holds the lock file ``clock``, else at once)."""
        out, err = self._paths(tag)
        if self.fork if fork is None else fork:
            from lm2vision.cli.main import main

            return self._forked(lambda: main(list(argv)), fault, kill_after, clock, out, err)
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        env.pop(FAULT_ENV, None)
        if fault:
            env[FAULT_ENV] = fault
        with open(out, "w") as fo, open(err, "w") as fe:
            proc = subprocess.Popen([sys.executable, "-m", "lm2vision.cli.main", *argv], stdout=fo, stderr=fe, env=env)
            code, seconds = self._wait(proc.pid, proc.poll, proc.kill, kill_after, clock)
        return Result(code, out.read_text(), err.read_text(), seconds)

    def call(self, fn: Callable[[], object], tag: str = "call") -> Result:
        """``fn()`` in a forked child: exit 0, 2 on an Lm2vError (one line), 70 on anything else."""
        out, err = self._paths(tag)
        return self._forked(lambda: (fn(), 0)[1], None, None, None, out, err)

    def _forked(self, fn, fault, kill_after, clock, out, err) -> Result:
        sys.stdout.flush(), sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _child(fn, fault, out, err)

        def poll():
            done, status = os.waitpid(pid, os.WNOHANG)
            return os.waitstatus_to_exitcode(status) if done else None

        def kill():
            os.kill(pid, signal.SIGKILL)

        code, seconds = self._wait(pid, poll, kill, kill_after, clock)
        return Result(code, out.read_text(), err.read_text(), seconds)

    @staticmethod
    def _wait(pid: int, poll, kill, kill_after, clock) -> tuple[int, float]:
        t0 = time.monotonic()
        started = None if clock is not None else t0
        killed = False
        while True:
            code = poll()
            now = time.monotonic()
            if code is not None:
                return code, now - (started if started is not None else now)
            if started is None and _lock_pid(clock) == pid:
                started = now
            late = kill_after is not None and started is not None and now - started >= kill_after
            if not killed and (late or now - t0 > TIMEOUT_S):
                kill()
                killed = True
            time.sleep(0.002)


# -- comparing a run with the uninterrupted one -----------------------------------------------


def _files(run: Path) -> set[str]:
    names = set()
    for p in run.rglob("*"):
        rel = p.relative_to(run)
        if p.is_file() and rel.parts[0] not in IGNORED and not (rel.parts[0] == "checkpoints" and p.suffix == ".json"):
            names.add(rel.as_posix())
    return names


def _records(path: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(ln).items() if k not in TIMING_KEYS}
            for ln in path.read_text().splitlines() if ln.strip()]


def _config(path: Path) -> dict:
    cfg = yaml.safe_load(path.read_text())
    cfg.get("runtime", {}).pop("stop_after", None)  # how that command was run, not what it computes
    return cfg


def compare_runs(ref: Path, run: Path, skip: Sequence[str] = ()) -> list[str]:
    """What differs between two runs' final files (empty: the same result). Compared: every file but
    the marker, the lock, tb/ and checkpoints/*.json (they hold runtime.*): bytes, except
    metrics.jsonl and summary.json (values without :data:`TIMING_KEYS`) and config.yaml (without
    runtime.stop_after)."""
    a, b = _files(ref) - set(skip), _files(run) - set(skip)
    diffs = [f"missing {n}" for n in sorted(a - b)] + [f"extra {n}" for n in sorted(b - a)]
    for name in sorted(a & b):
        x, y = ref / name, run / name
        if name == "metrics.jsonl":
            same = _records(x) == _records(y)
        elif name == "summary.json":
            strip = lambda p: {k: v for k, v in json.loads(p.read_text()).items() if k not in TIMING_KEYS}
            same = strip(x) == strip(y)
        elif name == "config.yaml":
            same = _config(x) == _config(y)
        else:
            same = x.read_bytes() == y.read_bytes()
        if not same:
            diffs.append(f"{name} differs")
    return diffs


# -- cases ---------------------------------------------------------------------------------------


@dataclass
class Outcome:
    case: str
    status: str  # recovered | refused | FAILED
    detail: str = ""


@dataclass(frozen=True)
class KillCase:
    """Kill a fresh run at ``faults[0]``, each ``--resume`` after it at the next fault, then resume
    to the end; ``expect``: texts the final ``--resume`` prints exactly once. ``restart``: the kill
    came before the first checkpoint, so ``--resume`` is refused and ``--overwrite`` starts again."""

    name: str
    faults: tuple[str, ...]
    expect: tuple[str, ...] = ()
    restart: bool = False


KILL_CASES = (
    KillCase("in_metrics_line", ("in_metrics_line:3",),
             ("metrics.jsonl line 3 is half-written", "resumed after epoch 2 (checkpoints/last.*)")),
    KillCase("before_checkpoint", ("before_checkpoint:2",), ("resumed after epoch 1 (checkpoints/last.*)",)),
    KillCase("ckpt_rotated", ("ckpt_rotated:3",), ("resumed after epoch 2 (checkpoints/last.*)",)),
    KillCase("ckpt_between_files", ("ckpt_between_files:3",), ("resumed after epoch 2 (checkpoints/prev.*)",)),
    KillCase("replace_last_json", ("replace:last.json:2",),
             ("removed 1 temporary file(s)", ": checkpoints/.last.json.", "resumed after epoch 1 (checkpoints/prev.*)")),
    KillCase("replace_prev_tensors", ("replace:prev.safetensors:2",),
             ("removed 1 temporary file(s)", ": checkpoints/.prev.safetensors.", "resumed after epoch 2 (checkpoints/last.*)")),
    KillCase("after_last_checkpoint", ("after_last_checkpoint:1",), ("resumed after epoch 4 (checkpoints/last.*)",)),
    KillCase("before_summary", ("before_summary:1",), ("resumed after epoch 4 (checkpoints/last.*)",)),
    KillCase("replace_summary", ("replace:summary.json:1",), ("removed 1 temporary file(s)", ": .summary.json.")),
    KillCase("killed_twice", ("before_checkpoint:3", "replace:metrics.jsonl:1"),
             ("removed 1 temporary file(s)", ": .metrics.jsonl.", "resumed after epoch 2 (checkpoints/last.*)")),
    KillCase("before_first_checkpoint", ("before_checkpoint:1",), restart=True),
    KillCase("replace_config", ("replace:config.yaml:1",), restart=True),  # the run has its marker, no config
    KillCase("replace_marker", ("replace:.lm2v-run:1",), restart=True),  # the directory exists, not yet marked
)


def _finish(ref: Path, run: Path, name: str, detail: str) -> Outcome:
    diffs = compare_runs(ref, run)
    return Outcome(name, "FAILED", "; ".join(diffs)) if diffs else Outcome(name, "recovered", detail)


def _bad(name: str, what: str, res: Result) -> Outcome:
    tail = (res.err_lines() or ["(no stderr)"])[-1]
    return Outcome(name, "FAILED", f"{what}: exit {res.code}: {tail}")


def kill_case(launch: Launcher, root: Path, ref: Path, case: KillCase, fork: bool | None = None) -> Outcome:
    """One :class:`KillCase` in ``root/NAME``."""
    name, run = f"kill {case.name}", root / case.name
    for i, fault in enumerate(case.faults):
        res = launch.cli(bridge(run, *(["--resume"] if i else [])), fault=fault, tag=case.name, fork=fork)
        if not res.killed:
            return _bad(name, f"{fault} did not kill the run", res)
    if case.restart:
        res = launch.cli(bridge(run, "--resume"), tag=case.name, fork=fork)
        if res.refusal() is None or "--overwrite" not in res.refusal():
            return _bad(name, "--resume before the first checkpoint: no one-line refusal that points to --overwrite", res)
        res = launch.cli(bridge(run, "--overwrite"), tag=case.name, fork=fork)
    else:
        res = launch.cli(bridge(run, "--resume"), tag=case.name, fork=fork)
    if res.code != 0:
        return _bad(name, "the last command", res)
    wrong = [t for t in case.expect if res.text().count(t) != 1]
    if wrong:
        return Outcome(name, "FAILED", f"the resume did not print exactly once: {wrong}")
    return _finish(ref, run, name, f"{len(case.faults)} kill(s): {', '.join(case.faults)}")


def random_kill_case(launch: Launcher, root: Path, ref: Path, seed: int, span: float, runs: int = 8,
                     fork: bool | None = None) -> Outcome:
    """SIGKILL after ``random.Random(seed).uniform(0, span)`` seconds of holding the run, then
    ``--resume`` (``--overwrite`` if refused before the first checkpoint), until a command finishes.
    A fresh run that outruns its delay (runs can be faster than the reference) starts again, so
    the case kills at least once unless ``runs`` draws all miss."""
    name, run, rng = f"random kill seed {seed}", root / f"random-{seed}", random.Random(seed)
    flags: list[str] = []
    delays, restarts = [], []
    for attempt in range(runs):
        delay = rng.uniform(0, span) if attempt < runs - 1 else None
        res = launch.cli(bridge(run, *flags), kill_after=delay, clock=run / LOCK, tag=f"random{seed}", fork=fork)
        if res.code == 0 and (delays or delay is None):
            told = f"; --overwrite after: {' | '.join(restarts)}" if restarts else ""
            return _finish(ref, run, name, ("killed at " + ", ".join(delays) + " s" if delays else "never killed") + told)
        if res.code == 0:
            flags = ["--overwrite"]
        elif res.killed:
            delays.append(f"{delay:.2f}")
            flags = ["--resume"]
        elif res.refusal() and "nothing to resume" in res.refusal() and flags == ["--resume"]:
            flags = ["--overwrite"]  # killed before its first checkpoint: the documented way to start again
            restarts.append(res.refusal().split("error: ", 1)[-1][:80])
        else:
            return _bad(name, f"command {attempt + 1} ({' '.join(flags) or 'fresh'})", res)
    return Outcome(name, "FAILED", f"not finished after {runs} commands")


# damage: (directory, file) -> the commands that read that file
DAMAGES = ("half", "garbage", "delete")
READERS = {
    ("finished", "summary.json"): ("resume",),
    ("finished", "config.yaml"): ("resume", "probe", "analyze", "load"),
    ("finished", "metrics.jsonl"): ("analyze",),
    ("finished", "model.safetensors"): ("probe", "analyze", "load"),
    ("finished", "init.safetensors"): ("analyze", "load_init"),
    ("stopped", "checkpoints/last.safetensors"): ("resume",),
    ("stopped", "checkpoints/last.json"): ("resume",),
    ("stopped", "checkpoints/prev.safetensors"): ("resume",),
    ("stopped", "checkpoints/prev.json"): ("resume",),
    ("stopped", "metrics.jsonl"): ("resume",),
    ("stopped", "config.yaml"): ("resume",),
    ("stopped", "data.json"): ("resume",),
    ("first", "checkpoints/last.safetensors"): ("resume",),
    ("first", "checkpoints/last.json"): ("resume",),
}
# what a resume writes again (the others it only reads)
REWRITTEN = ("summary.json", "metrics.jsonl", "model.safetensors", "labels.safetensors", "checkpoints/last.safetensors",
             "checkpoints/last.json", "checkpoints/prev.safetensors", "checkpoints/prev.json")
DAMAGE_CASES = [(d, f, how, cmd) for (d, f), cmds in READERS.items() for how in DAMAGES for cmd in cmds]


def expected_outcome(directory: str, file: str, how: str, command: str) -> str:
    """The policy. ``--resume`` recovers from a damaged or missing checkpoint file while the other
    pair is whole (``stopped``: last.* and prev.*), and from a damaged or missing summary.json (it
    redoes the final evaluation), and resumes without data.json (a run from before fingerprints);
    a run stopped after epoch 1 has no prev.* and is refused. A metrics.jsonl cut in the middle of a
    line is read with a warning by ``analyze``, which also runs without init.safetensors (an optional
    input: the analyses that need it are left out). Everything else is refused in one line."""
    if command == "resume":
        if directory == "stopped" and file.startswith("checkpoints/"):
            return "recovered"
        if file == "summary.json" or (file == "data.json" and how == "delete"):
            return "recovered"
    if command == "analyze" and (file, how) in (("metrics.jsonl", "half"), ("init.safetensors", "delete")):
        return "recovered"
    return "refused"


def damage(path: Path, how: str, seed: int = 0) -> None:
    """Truncate ``path`` to half its bytes, overwrite it with as many garbage bytes, or delete it."""
    data = path.read_bytes()
    if how == "delete":
        path.unlink()
    elif how == "half":
        path.write_bytes(data[: len(data) // 2])
    else:
        path.write_bytes(random.Random(seed).randbytes(max(len(data), 64)))


def damage_case(launch: Launcher, root: Path, sources: dict[str, Path], ref: Path, directory: str, file: str,
                how: str, command: str) -> Outcome:
    """Copy the ``directory`` run, damage ``file``, run ``command`` on it; the outcome."""
    name = f"damage {directory} {file} {how} -> {command}"
    tag = f"d{DAMAGE_CASES.index((directory, file, how, command)):02d}"  # no file name in it: the message must name it
    run = root / tag
    shutil.rmtree(run, ignore_errors=True)
    shutil.copytree(sources[directory], run, symlinks=True)
    (run / LOCK).unlink(missing_ok=True)
    damage(run / file, how)
    res = _command(launch, root, run, command, tag)
    if res.code == 0:
        kept = () if file in REWRITTEN else (file,)  # a file that the command does not write again stays as damaged
        diffs = compare_runs(ref, run, skip=kept) if command == "resume" else []
        got = Outcome(name, "FAILED", "; ".join(diffs)) if diffs else Outcome(name, "recovered", _warned(res))
    elif res.refusal() and Path(file).name in res.refusal():
        got = Outcome(name, "refused", res.refusal()[:160])
    else:
        return _bad(name, "not one line naming the file" if res.code == 2 else "crashed", res)
    want = expected_outcome(directory, file, how, command)
    if got.status != "FAILED" and got.status != want:
        return Outcome(name, "FAILED", f"{got.status}, expected {want}: {got.detail}")
    return got


def _warned(res: Result) -> str:
    lines = [ln for ln in res.err_lines() if "Warning" in ln]
    return lines[0][:160] if lines else ""


def _command(launch: Launcher, root: Path, run: Path, command: str, tag: str) -> Result:
    if command == "resume":
        return launch.cli(bridge(run, "--resume"), tag=tag, fork=True)
    if command == "probe":
        data = [a for a in RUN_ARGS if a.startswith(("data.", "runtime."))]
        argv = ["probe", "--out", str(root / f"{tag}-probe"), "--init", str(run), "probe.mode=linear",
                "probe.linear_epochs=2", *data]
        return launch.cli(argv, tag=tag, fork=True)
    if command == "analyze":
        argv = ["analyze", str(run), "--out", str(root / f"{tag}-analysis"), "--no-progress",
                "--skip", "landscape,features,alignment,weights"]
        return launch.cli(argv, tag=tag, fork=True)
    from lm2vision.train import load_run_model

    weights = "init.safetensors" if command == "load_init" else "model.safetensors"
    return launch.call(lambda: load_run_model(run, weights), tag=tag)


# -- the run directories the cases start from -----------------------------------------------------


def make_sources(launch: Launcher, root: Path) -> tuple[dict[str, Path], float]:
    """The uninterrupted reference run (``finished``), the same stopped after epochs 2 and 1 (all
    forked); and the reference's time holding its lock (the span of the random kills)."""
    out = {"finished": root / "reference", "stopped": root / "stopped", "first": root / "first"}
    res = launch.cli(bridge(out["finished"]), clock=out["finished"] / LOCK, tag="reference", fork=True)
    for key, n in (("stopped", 2), ("first", 1)):
        r = launch.cli([*bridge(out[key]), f"runtime.stop_after={n}"], tag=key, fork=True)
        if r.code != 0:
            raise RuntimeError(f"could not make the {key} run: {r.err[-400:]}")
    if res.code != 0:
        raise RuntimeError(f"the reference run failed: {res.err[-400:]}")
    return out, res.seconds


def run_all(root: Path, seeds: Sequence[int], fork: bool, per_seed: int, only: str = "") -> list[Outcome]:
    """Every case (those whose name holds ``only``), printed as they finish."""
    launch = Launcher(root / "logs", fork=fork)
    sources, span = make_sources(launch, root / "sources")
    ref_kill = sources["finished"]  # forked or not, one thread: the same result (checked by the kill cases)
    if not fork:
        span *= 2  # a fresh interpreter still has first-call costs after it takes the lock
    jobs: list[tuple[str, Callable[[], Outcome]]] = []
    for case in KILL_CASES:
        jobs.append((f"kill {case.name}", lambda c=case: kill_case(launch, root / "kills", ref_kill, c)))
    for seed in seeds:
        for k in range(per_seed):
            s = seed * 1000 + k
            jobs.append((f"random kill seed {s}",
                         lambda s=s: random_kill_case(launch, root / "random", ref_kill, s, span)))
    for d, f, how, cmd in DAMAGE_CASES:
        jobs.append((f"damage {d} {f} {how} -> {cmd}",
                     lambda a=(d, f, how, cmd): damage_case(launch, root / "damage", sources, sources["finished"], *a)))
    outcomes = []
    for name, job in jobs:
        if only and only not in name:
            continue
        try:
            o = job()
        except Exception as e:  # the harness itself: report, go on
            o = Outcome(name, "FAILED", f"harness: {type(e).__name__}: {e}")
        outcomes.append(o)
        print(f"| {o.case:<58} | {o.status:<9} | {o.detail[:150]} |", flush=True)
    return outcomes


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds of the random kills")
    p.add_argument("--per-seed", type=int, default=4, help="random-kill cases per seed")
    p.add_argument("--out", default="fault-injection", help="work directory (replaced)")
    p.add_argument("--fork", action="store_true", help="fork every command from this process (no interpreter start)")
    p.add_argument("--only", default="", help="run only the cases whose name contains this text")
    args = p.parse_args(argv)
    root = Path(args.out)
    if root.exists() and any(root.iterdir()) and not (root / MARK).is_file():
        print(f"--out {root} exists and was not made by this script (no {MARK}): choose another", file=sys.stderr)
        return 2
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    (root / MARK).write_text("")
    torch.set_num_threads(1)  # before any parallel op: forked children then never meet a dead pool
    t0 = time.monotonic()
    print(f"| {'case':<58} | {'outcome':<9} | detail |\n|{'-' * 60}|{'-' * 11}|--------|", flush=True)
    outcomes = run_all(root, args.seeds, args.fork, args.per_seed, args.only)
    counts = {s: sum(o.status == s for o in outcomes) for s in ("recovered", "refused", "FAILED")}
    print(f"\n{len(outcomes)} cases: {counts['recovered']} recovered, {counts['refused']} refused, "
          f"{counts['FAILED']} FAILED in {time.monotonic() - t0:.0f} s (logs in {root / 'logs'})")
    return 1 if counts["FAILED"] else 0


if __name__ == "__main__":
    sys.exit(main())
