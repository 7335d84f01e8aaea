"""Tiny real recipes that end badly in the ways a runner must name: an early exit, a forked child, a
multi-line error, names matplotlib would read as TeX. Built on tiny_mlp (milliseconds per step)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from tiny_mlp import build

from repro_audit import Recipe


def build_exiting(params: dict) -> Recipe:
    """Leaves with os._exit(code) in step `at` (default 2): no exception, no "done", maybe exit code 0."""
    recipe = build(params)
    inner = recipe.loss

    def loss(model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        if step == params.get("at", 2):
            os._exit(params.get("code", 0))
        return inner(model, batch)

    recipe.loss = loss
    return recipe


def build_forking(params: dict) -> Recipe:
    """Starts a child that sleeps for an hour and writes its pid to params["pid_file"]: the run must not
    leave it behind."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
    Path(params["pid_file"]).write_text(str(child.pid), encoding="utf-8")
    return build(params)


def build_multiline_error(params: dict) -> Recipe:
    recipe = build(params)

    def loss(model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
        raise ValueError("first line of the problem\nsecond line\n\tthird line\r\x1b[31mred\x1b[0m")

    recipe.loss = loss
    return recipe


def build_dollar_names(params: dict) -> Recipe:
    """A loss term `$x^2$` and a parameter `$\\frac$.weight`: matplotlib would parse both as mathtext, and
    the second is bad TeX."""
    model = torch.nn.Sequential()
    model.add_module("$\\frac$", torch.nn.Linear(4, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=params.get("lr", 0.1))
    generator = torch.Generator().manual_seed(1)
    batches = [(torch.randn(16, 4, generator=generator), torch.randint(0, 3, (16,), generator=generator))
               for _ in range(4)]

    def loss(model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
        x, y = batch
        logits = model(x)
        return {"ce": torch.nn.functional.cross_entropy(logits, y), "$x^2$": logits.pow(2).mean()}

    return Recipe(model=model, optimizer=optimizer, batches=batches, loss=loss)


def build_dying_once(params: dict) -> Recipe:
    """Kills its own process with SIGKILL the first time (a lost worker), builds normally once
    params["marker"] exists: the executor's one retry must then succeed."""
    import signal

    marker = Path(params["marker"])
    if not marker.exists():
        marker.write_text("died once", encoding="utf-8")
        os.kill(os.getpid(), signal.SIGKILL)
    return build({key: value for key, value in params.items() if key != "marker"})
