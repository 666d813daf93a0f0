"""One cell of an experiment, run from its spec file (:mod:`lm2vision.experiments.launch`):

    python -m lm2vision.experiments.cell OUT/ARM/seedS/cell.json
    torchrun --standalone --nproc-per-node K -m lm2vision.experiments.cell OUT/ARM/seedS/cell.json

(:class:`~lm2vision.experiments.launch.CellJob` runs a cell the same way as a submitit job).
Exit code 0 when every run finished or one stopped early (``runtime.stop_after``: the launcher reads
which from the run directories), 2 on bad input (one line), 1 on any other failure (a traceback).
"""
from __future__ import annotations

import sys

from ..errors import Lm2vError
from .launch import cell_say as _say, run_cell


def main(argv: list[str] | None = None) -> int:
    """Run the cell whose spec is ``argv[0]``; returns the exit code."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m lm2vision.experiments.cell OUT/ARM/seedS/cell.json", file=sys.stderr)
        return 2
    _say(f"{argv[0]} started")
    try:
        stopped = run_cell(argv[0])
    except Lm2vError as e:
        print(f"lm2v cell: error: {e}", file=sys.stderr)
        return 2
    _say(f"stopped in {stopped}" if stopped else "finished")
    return 0


if __name__ == "__main__":
    sys.exit(main())
