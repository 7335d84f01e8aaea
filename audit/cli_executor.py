"""The options that choose where runs go (`--executor`, `--address`, `--workers`), shared by `noise`,
`diff --seeds` and `bisect`."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import click

from audit.executors import EXECUTORS, Executor, make_executor


def executor_options(function: Any) -> Any:
    function = click.option("--workers", type=click.IntRange(min=1),
                            help="Runs at a time (local: default all cores; ray local: CPUs of the instance).")(function)
    function = click.option("--address", metavar="auto|HOST:PORT",
                            help="Ray cluster to use with --executor ray ('auto': the one running on this machine; "
                                 "default: start a private local instance).")(function)
    function = click.option("--executor", "executor", type=click.Choice(EXECUTORS), default="local",
                            show_default=True, help="Where the runs go: this machine's cores, or a Ray cluster.")(function)
    return function


@contextlib.contextmanager
def opened_executor(options: dict[str, Any]) -> Iterator[Executor]:
    """The executor the options name, closed however the command ends (a private Ray instance stops)."""
    if options.get("address") and options.get("executor") != "ray":
        raise click.UsageError("--address needs --executor ray")
    executor = make_executor(options.get("executor") or "local", address=options.get("address"),
                             workers=options.get("workers"))
    try:
        yield executor
    finally:
        executor.close()
