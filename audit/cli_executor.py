"""The options that choose where runs go (`--executor`, `--address`, `--workers`), shared by `noise`,
`diff --seeds` and `bisect`, and the options of the seed runs themselves (`--vary`, `--alpha`). Kept apart
from the commands so `diff` can take them without importing `noise`."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import click

from repro_audit.audit.executors import EXECUTORS, Executor, make_executor
from repro_audit.audit.noise.plan import VARY
from repro_audit.audit.noise.stats import DEFAULT_ALPHA


def executor_options(function: Any) -> Any:
    function = click.option("--workers", type=click.IntRange(min=1),
                            help="Runs at a time (local: default all cores; ray local: CPUs of the instance).")(function)
    function = click.option("--address", metavar="auto|HOST:PORT",
                            help="Ray cluster to use with --executor ray ('auto': the one running on this machine; "
                                 "default: start a private local instance).")(function)
    function = click.option("--executor", "executor", type=click.Choice(EXECUTORS), default="local",
                            show_default=True, help="Where the runs go: this machine's cores, or a Ray cluster.")(function)
    return function


def noise_options(function: Any) -> Any:
    """The options `noise` and `diff --seeds` share (diff adds --seeds itself: without it, diff is diff)."""
    # init by default: every recipe takes a seed, while varying the data order needs the recipe's hook.
    function = click.option("--vary", type=click.Choice(VARY), default="init", show_default=True,
                            help="What the seeds change: initialisation and dropout (init), data order (data), "
                                 "or both (all); data and all need a recipe that takes data_order_seed.")(function)
    function = click.option("--alpha", type=click.FloatRange(min=0.0, max=1.0, min_open=True, max_open=True),
                            default=DEFAULT_ALPHA, show_default=True,
                            help="Significance level of the per-step test.")(function)
    return executor_options(function)


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
