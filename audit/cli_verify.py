"""`diff --verify` and `verify`: prove the named mechanisms by re-running run B with each neutralised."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import click

from repro_audit.audit.cli import cli
from repro_audit.audit.cli_compare import (
    _compare_and_report,
    _record,
    _report_requests,
    _run_folder,
    _tolerance_options,
)
from repro_audit.audit.cli_progress import Progress
from repro_audit.audit.config import RunConfig, load_config, refuse_launch
from repro_audit.audit.divergence import Comparison
from repro_audit.audit.errors import UserError
from repro_audit.audit.outputs import check_report_targets
from repro_audit.audit.trace import Trace

Annotate = Callable[[Comparison, Trace, Trace], None]
COMPARED_KEYS = ("recipe", "framework", "seed", "params", "loss_weights")  # what makes a config that run


def verified_values(values: str | None) -> str:
    """Verification reads initial and last-step values: `--values` must keep all of them."""
    if values not in (None, "all"):
        raise click.UsageError(f"--verify keeps every value (--values all); it cannot run with --values {values}")
    return "all"


def verification_step(config_b: RunConfig, folder: Path, *, quiet: bool) -> Annotate:
    """What `diff --verify` does once the comparison exists: the interventions' runs go into `folder`."""

    def annotate(comparison: Comparison, trace_a: Trace, trace_b: Trace) -> None:
        from repro_audit.audit.verify import verify

        if comparison.identical:
            return
        if not quiet:
            click.echo("verifying: re-running run B with each mechanism neutralised", err=True)
        with Progress(quiet=quiet) as progress:
            comparison.verification = verify(comparison, config_b, trace_a, trace_b, folder,
                                             progress=progress.update)

    return annotate


@cli.command("verify")
@click.argument("trace_a", type=click.Path())
@click.argument("trace_b", type=click.Path())
@click.option("--config-a", "config_a", required=True, type=click.Path(dir_okay=False),
              help="The config trace A was recorded from.")
@click.option("--config-b", "config_b", required=True, type=click.Path(dir_okay=False),
              help="The config trace B was recorded from.")
@click.option("--set-a", "set_a", multiple=True, metavar="K=V", help="An override trace A was recorded with.")
@click.option("--set-b", "set_b", multiple=True, metavar="K=V", help="An override trace B was recorded with.")
@click.option("--keep", type=click.Path(file_okay=False), help="Keep the verification runs in this folder.")
@_tolerance_options
def verify_command(trace_a: str, trace_b: str, config_a: str, config_b: str, set_a: tuple[str, ...],
                   set_b: tuple[str, ...], keep: str | None, **options: Any) -> int:
    """Compare two traces and prove each named mechanism by intervention.

    Run B is re-run from CONFIG_B with each mechanism neutralised (alone, all together, all but one), and the
    table says whether it then matches run A on every shared number. Traces recorded without values are
    recorded again, with values kept.

    \b
    Example:
      repro-audit verify runs/a.trace runs/b.trace --config-a a.yaml --config-b b.yaml --html r.html
    """
    traces = [Trace(trace_a), Trace(trace_b)]
    configs = [_config_of(trace, path, overrides, side)
               for trace, path, overrides, side in zip(traces, (config_a, config_b), (set_a, set_b), "AB")]
    reports = check_report_targets(_report_requests(options), protected=[Path(trace_a), Path(trace_b)])
    with _run_folder(keep) as folder:
        if any(_lacks_values(trace) for trace in traces):
            if not options["quiet"]:
                click.echo("recording both runs again with values kept (verification reads them)", err=True)
            traces = _record(configs, folder=folder, kept=keep is not None, quiet=options["quiet"])
        return _compare_and_report(traces[0], traces[1], reports, temporary=None if keep is not None else folder,
                                   annotate=verification_step(configs[1], folder, quiet=options["quiet"]), **options)


def _config_of(trace: Trace, path: str, overrides: tuple[str, ...], side: str) -> RunConfig:
    """The config file, as the trace was recorded from it; another config is refused by the key that differs."""
    config = refuse_launch(load_config(path, overrides=overrides, steps=max(len(trace.steps), 1), values="all"),
                           what="--verify")
    recorded, loaded = trace.config, config.to_dict()
    for key in COMPARED_KEYS:
        if recorded.get(key) != loaded.get(key):
            raise UserError(f"trace {side} ({trace.path}) was not recorded from {path}: its {key!r} differs "
                            f"({recorded.get(key)!r} in the trace, {loaded.get(key)!r} in the config)")
    return config


def _lacks_values(trace: Trace) -> bool:
    from repro_audit.audit.verify import needs_values

    return needs_values(trace)
