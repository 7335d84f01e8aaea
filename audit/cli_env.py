"""`repro-audit env`: this machine's determinism-relevant environment, and what to change in it."""

from __future__ import annotations

import json
from typing import Any

import click

from repro_audit.audit.cli import cli


@cli.command("env")
@click.option("--json", "as_json", is_flag=True, help="Print the environment as JSON.")
def env_command(as_json: bool) -> int:
    """Print versions, determinism settings, threads and locally changed packages, with what to fix.

    \b
    Example:
      repro-audit env
    """
    environment = _environment()
    advice = advise(environment)
    if as_json:
        click.echo(json.dumps({"environment": environment, "advice": advice}, indent=1, sort_keys=True, default=str))
        return 0
    framework = environment.get("framework") or {}
    click.echo(f"python {environment['python']['version']} ({environment['python']['executable_prefix']}), "
               f"{environment['platform']['system']} {environment['platform']['machine']}, "
               f"{environment['cpu']['count']} CPUs ({environment['cpu']['model']})")
    if framework:
        click.echo(f"{framework.get('name')} {framework.get('version')}, devices: "
                   f"{', '.join(str(d.get('name')) for d in framework.get('devices') or [])}")
    for section in ("determinism", "threads"):
        values = environment.get(section) or {}
        if values:
            click.echo(f"{section}: " + ", ".join(f"{key}={value}" for key, value in sorted(values.items())))
    set_vars = {key: value for key, value in (environment.get("env_vars") or {}).items() if value is not None}
    click.echo("environment variables: " + (", ".join(f"{k}={v}" for k, v in sorted(set_vars.items())) or "none set"))
    for name, info in (environment.get("local_changes") or {}).items():
        if info.get("modified"):
            click.echo(f"locally changed: {name} {info.get('version')}: {', '.join(info['modified'])}")
        if info.get("editable"):
            git = info["editable"].get("git") or {}
            click.echo(f"editable install: {name} at {info['editable'].get('path')} (git "
                       f"{str(git.get('commit'))[:10]}{', uncommitted changes' if git.get('dirty') else ''})")
    click.echo("to fix:" if advice else "nothing to fix for run-to-run determinism that this machine shows")
    for line in advice:
        click.echo(f"  - {line}")
    return 0


def _environment() -> dict[str, Any]:
    try:
        from repro_audit.probes.torch.environment import torch_environment

        return torch_environment(recipe_dir=None)
    except ImportError:
        from repro_audit.probes.common.environment import base_environment

        return base_environment(recipe_dir=None)


def advise(environment: dict[str, Any]) -> list[str]:
    """What would make two runs here differ, each with its fix."""
    advice = []
    determinism = environment.get("determinism") or {}
    env_vars = environment.get("env_vars") or {}
    framework = environment.get("framework") or {}
    on_cuda = any(str(d.get("type")) == "cuda" for d in framework.get("devices") or [])
    if determinism.get("deterministic_algorithms") is False:
        advice.append("torch.use_deterministic_algorithms(True) is off: nondeterministic kernels (scatter_add_, "
                      "index_add_, embedding backward on CUDA) may run")
    if determinism.get("cudnn_benchmark"):
        advice.append("torch.backends.cudnn.benchmark is on: cuDNN picks algorithms by timing, run by run")
    if on_cuda and not env_vars.get("CUBLAS_WORKSPACE_CONFIG"):
        advice.append("CUBLAS_WORKSPACE_CONFIG is unset: set it to :4096:8 for deterministic cuBLAS on CUDA")
    if not env_vars.get("PYTHONHASHSEED"):
        advice.append("PYTHONHASHSEED is unset: the iteration order of a set of strings differs from process to process")
    for name, info in (environment.get("local_changes") or {}).items():
        if info.get("modified"):
            advice.append(f"package {name} has files that differ from what was installed: reinstall it, or record "
                          f"which version of them a result used")
    return advice
