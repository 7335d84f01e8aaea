"""Recordings that several test modules share: each is made once per session, by whichever xdist worker asks
first, and read by the others.

A run is named by its config (everything `RunConfig.to_dict` holds, the config's folder included) and a
replica number, so two runs of one config (`baseline` and `baseline_again`) stay two real runs. Every
worker of a session sees the same folder (the parent of the workers' own temp folders, as pytest-xdist
recommends); a file lock per run keeps two workers from recording it twice. Tests read these traces and
never change them in place (a test that damages a trace works on a copy).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from contextlib import ExitStack
from pathlib import Path

import pytest
from filelock import FileLock

from repro_audit.audit.config import RunConfig
from repro_audit.audit.executors.local import record_all
from repro_audit.audit.trace import Trace


def shared_folder(factory: pytest.TempPathFactory) -> Path:
    """The session's folder of shared runs, the same for every xdist worker."""
    root = factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    folder = root / "shared-runs"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def shared_traces(factory: pytest.TempPathFactory, runs: Mapping[str, tuple[RunConfig, int]]) -> dict[str, Trace]:
    """{name: Trace} for `runs` {name: (config, replica)}: the ones not recorded yet in this session are
    recorded now, two at a time, in their own worker processes."""
    folder = shared_folder(factory)
    paths = {name: folder / f"{_digest(config)}-{replica}.trace" for name, (config, replica) in runs.items()}
    with ExitStack() as locks:
        # Locks are taken in one global order, so two workers asking for overlapping sets cannot deadlock.
        for path in sorted(set(paths.values())):
            locks.enter_context(FileLock(str(path) + ".lock"))
        missing: dict[Path, RunConfig] = {}
        for name, path in paths.items():
            if not _done(path):
                missing.setdefault(path, runs[name][0])
        if missing:
            results = record_all([(config, path) for path, config in missing.items()])
            failed = [result.failure_line() for result in results if not result.ok]
            assert not failed, failed
            for path in missing:
                _done_marker(path).touch()
    return {name: Trace(path) for name, path in paths.items()}


def _digest(config: RunConfig) -> str:
    text = json.dumps({**config.to_dict(), "config_dir": config.config_dir}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _done_marker(path: Path) -> Path:
    return path.with_name(path.name + ".done")


def _done(path: Path) -> bool:
    return _done_marker(path).exists() and path.exists()
