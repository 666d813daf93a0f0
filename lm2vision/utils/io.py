"""Atomic file writes: a crash never leaves a half-written file under the final name.

A write goes to ``.NAME.<random>.tmp`` in the same folder, then ``os.replace``s it onto ``NAME``; a
process killed in between leaves only temporary files, which :func:`remove_orphans` clears (on
``--resume``). :func:`fault_point` lets the fault-injection tests kill the process at named points.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
from pathlib import Path
from typing import Callable, Iterable

FAULT_ENV = "LM2V_FAULT"  # "POINT:N": SIGKILL this process at the N-th call of fault_point(POINT)
_fault_calls: dict[str, int] = {}


def fault_point(name: str, before_death: Callable[[], None] | None = None) -> None:
    """Fault injection for the tests: a no-op unless ``LM2V_FAULT=name:N`` is set, then the N-th call
    of ``fault_point(name)`` in this process runs ``before_death`` (e.g. writes half a line) and
    SIGKILLs the process: no ``finally``, no ``except``, no flush, as a power cut or the OOM killer."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    point, _, n = spec.rpartition(":")
    if point != name:
        return
    _fault_calls[name] = _fault_calls.get(name, 0) + 1
    if _fault_calls[name] == int(n):
        if before_death is not None:
            before_death()
        os.kill(os.getpid(), signal.SIGKILL)


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` then rename the temporary file onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        fault_point(f"replace:{path.name}")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_copy(src: Path, dst: Path) -> None:
    """Make ``dst`` a copy of ``src`` atomically: a hard link where the file system has them (no
    bytes copied; a later atomic write of ``src`` replaces its name, not the shared file)."""
    if Path(dst).exists() and os.path.samefile(src, dst):
        return  # already linked (a run killed after linking): renaming a link onto itself is a no-op

    def _w(tmp: str) -> None:
        os.unlink(tmp)
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)

    atomic_write(dst, _w)


def atomic_write_text(path: Path, text: str) -> None:
    """Write text to ``path`` atomically."""

    def _w(tmp: str) -> None:
        with open(tmp, "w") as f:
            f.write(text)

    atomic_write(path, _w)


def atomic_write_json(path: Path, obj) -> None:
    """Write JSON to ``path`` atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True))


# temporary files of writes cut by a kill: ours (atomic_write), and safetensors' own (its Rust writer
# saves through ".tmp" + 6 random characters beside the target, then renames)
ORPHANS = (".*.tmp", ".tmp??????")


def remove_orphans(folders: Iterable[Path]) -> list[Path]:
    """Delete the temporary files (:data:`ORPHANS`) that killed writes left in ``folders``; returns
    them. Call it only while no other process writes there (e.g. under the run's lock)."""
    gone = []
    for folder in (Path(f) for f in folders):
        found = {p for pattern in ORPHANS for p in folder.glob(pattern)} if folder.is_dir() else set()
        for tmp in sorted(p for p in found if p.is_file()):
            tmp.unlink()
            gone.append(tmp)
    return gone
