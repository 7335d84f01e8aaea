"""Small helpers several test modules share: the CLI in-process with its streams apart or in its own process,
work started in the background, the one-line error rule, every place in a JSON document, a C compiler that
always fails."""

from __future__ import annotations

import stat
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import pytest
from click.testing import CliRunner

from repro_audit.audit.cli import cli


def run_cli(*args: str) -> tuple[int, str, str]:
    """Exit code, stdout and stderr of `repro-audit ARGS`, run in this process."""
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.stdout, result.stderr


def run_cli_process(*args: str) -> tuple[int, str, str]:
    """Exit code, stdout and stderr of `repro-audit ARGS`, run in its own process. Safe from a background
    thread, where the in-process runner's swapped streams would catch the other tests' output."""
    done = subprocess.run([sys.executable, "-m", "repro_audit.audit.cli_main", *args], capture_output=True,
                          text=True, check=False)
    return done.returncode, done.stdout, done.stderr


T = TypeVar("T")


def in_background(function: Callable[..., T], *args: Any) -> Future[T]:
    """`function(*args)`, started now in a thread. For a run that mostly waits (a hang that must reach its
    timeout): started before a module's first test, it waits while the other tests use the cores, and the
    test that checks it reads its result when it comes to it."""
    pool = ThreadPoolExecutor(max_workers=1)
    future = pool.submit(function, *args)
    pool.shutdown(wait=False)
    return future


def will_run(request: pytest.FixtureRequest, name: str) -> bool:
    """Whether this session runs the requesting module's test `name`: a run started in the background for it
    is waste when it was deselected."""
    return any(item.name == name and getattr(item, "module", None) is request.module
               for item in request.session.items)


def one_line(stderr: str) -> str:
    """The single line a refusal prints: no traceback, nothing else."""
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].strip() and "Traceback" not in stderr, stderr
    return lines[0]


def paths_in(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in a JSON document, the document itself included."""
    found = [prefix]
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        found += paths_in(item, (*prefix, key))
    return found


def broken_compiler(folder: Path, error: str) -> tuple[Path, Path]:
    """A C compiler that fails with `error` and logs each call: (the compiler, its log of calls)."""
    log = folder / "calls.log"
    compiler = folder / "broken-cc"
    compiler.write_text(f"#!/bin/sh\necho called >> {log}\necho '{error}' >&2\nexit 1\n")
    compiler.chmod(compiler.stat().st_mode | stat.S_IEXEC)
    return compiler, log
