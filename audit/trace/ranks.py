"""A run of N ranks on disk: one folder with a trace per rank (`rank_00/`, `rank_01/`, ...) and `ranks.json`.

Each rank's trace is an ordinary trace, so everything that reads one trace reads one rank; `ranks.json`
says how many ranks the run started, so a rank that died before it wrote anything is missing by name.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from repro_audit.audit.errors import TraceError

RANKS_FILE = "ranks.json"
RANKS_FORMAT = "repro-audit-ranks"


def rank_folder(run: Path, rank: int) -> Path:
    return run / f"rank_{rank:02d}"


def is_ranked_run(folder: Path) -> bool:
    """A folder this tool wrote for a run under torchrun (its ranks.json says so)."""
    try:
        data = json.loads((folder / RANKS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("format") == RANKS_FORMAT


def start_ranked_run(run: Path, *, nproc: int, label: str) -> None:
    """Make `run` an empty ranked run folder: an earlier ranked run there is replaced, nothing else is."""
    if run.is_symlink():
        raise TraceError(f"refusing to write the run to {run}: it is a symbolic link")
    if run.exists():
        if not is_ranked_run(run) and any(run.iterdir()):
            raise TraceError(f"refusing to write the run to {run}: it exists and is not a repro-audit run")
        shutil.rmtree(run)
    run.mkdir(parents=True)
    write_ranks_file(run, {"format": RANKS_FORMAT, "nproc": nproc, "label": label, "complete": False})


def write_ranks_file(run: Path, data: dict[str, Any]) -> None:
    temporary = run / (RANKS_FILE + ".tmp")
    temporary.write_text(json.dumps(data, sort_keys=True, indent=1), encoding="utf-8")
    os.replace(temporary, run / RANKS_FILE)


def read_ranks_file(run: Path) -> dict[str, Any]:
    if not is_ranked_run(run):
        raise TraceError(f"{run} is not a run recorded with launch/--nproc (no {RANKS_FILE})")
    data: dict[str, Any] = json.loads((run / RANKS_FILE).read_text(encoding="utf-8"))
    nproc = data.get("nproc")
    if isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1:
        raise TraceError(f"{run / RANKS_FILE}: 'nproc' must be a positive integer, got {nproc!r}")
    return data


def open_ranks(run: str | os.PathLike[str]) -> list[Any]:
    """The trace of every rank, in rank order; a rank without a trace is the run's error, by name."""
    from repro_audit.audit.trace import Trace

    folder = Path(run)
    nproc = read_ranks_file(folder)["nproc"]
    missing = [rank for rank in range(nproc) if not rank_folder(folder, rank).is_dir()]
    if missing:
        raise TraceError(f"{folder}: rank {missing[0]} left no trace (the run has {nproc} ranks)")
    return [Trace(rank_folder(folder, rank)) for rank in range(nproc)]
