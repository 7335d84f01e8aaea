"""Small helpers several test modules share: the CLI in-process with its streams apart, the one-line error
rule, every place in a JSON document, a C compiler that always fails."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from repro_audit.audit.cli import cli


def run_cli(*args: str) -> tuple[int, str, str]:
    """Exit code, stdout and stderr of `repro-audit ARGS`, run in this process."""
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.stdout, result.stderr


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
