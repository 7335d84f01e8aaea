"""Run a step's forward pass a second time, as it ran the first time, and leave no trace of having done so.

NaN provenance needs the autograd graph of the step where gradients turned non-finite. Keeping every
step's graph (retain_graph) costs memory and time at every step to serve a rare one, so the runner's loop
keeps none after step 1 and, on the step where an outbreak starts, replays the forward pass instead: the
random generators are put back where they stood when the step began, the parameters are still those of
the forward pass (gradients are read before optimizer.step()), and afterwards generators and buffers are
put back where the real step left them, so training goes on exactly as if nothing had been replayed.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch


class RandomState:
    """Every random generator a loss function can reach: torch CPU and CUDA, custom torch generators the
    run has drawn from, Python's `random` and numpy's global generator."""

    def __init__(self, generators: Sequence[torch.Generator] = ()) -> None:
        self.generators = list(generators)
        self.cpu = torch.get_rng_state()
        # is_initialized(): never start a CUDA context just to read a state nobody uses.
        self.cuda = (torch.cuda.get_rng_state_all()
                     if torch.cuda.is_available() and torch.cuda.is_initialized() else None)
        self.custom = [generator.get_state() for generator in self.generators]
        self.python = random.getstate()
        self.numpy = np.random.get_state()

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state_all(self.cuda)
        for generator, state in zip(self.generators, self.custom):
            generator.set_state(state)
        random.setstate(self.python)
        np.random.set_state(self.numpy)


@contextmanager
def buffers_kept(model: torch.nn.Module) -> Iterator[None]:
    """Buffers (BatchNorm running statistics, counters) as they are now, put back after the block."""
    saved = [(buffer, buffer.detach().clone()) for buffer in model.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)


def replay_forward(forward: Callable[[], Any], *, step_start: RandomState, model: torch.nn.Module) -> Any:
    """`forward()` run with the random state of the step's start; generators and buffers left as they were."""
    now = RandomState(step_start.generators)
    with buffers_kept(model), torch.enable_grad():
        step_start.restore()
        try:
            return forward()
        finally:
            now.restore()
