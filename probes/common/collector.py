"""Python's cyclic garbage collector, kept off the work a recording adds: held off for the length of a
recorded step, and off while a worker imports the run's framework.

Why the step: a recorded step builds a few thousand short-lived objects (module calls, summaries, the step
record). With the collector on, they set off about four young collections a step, and the survivors of those
a full collection every hundred steps or so, which walks torch's 300k objects (140 ms): some 2.8 ms a step on
the fixture Transformer, against none in a plain step. Reference counting still frees every object the moment
it is dropped; only reference cycles made during the step wait for its end, when the collector is on again
(as it was: a collector the user turned off stays off).

Why the import: importing torch or TensorFlow makes about half a million objects that live as long as the
process. With the collector on, CPython walks all of them again in one full collection after another while
they pile up: a quarter of the import (0.5 s of torch's 1.9 s, 0.5 s of TensorFlow's 2.6 s on 2 cores), in
every run that check, diff or noise starts.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


class CollectorPause:
    """`pause` at the start of a step, `resume` at its end (or when it is abandoned); both idempotent."""

    def __init__(self) -> None:
        self._paused = False

    def pause(self) -> None:
        if not self._paused and gc.isenabled():
            gc.disable()
            self._paused = True

    def resume(self) -> None:
        if self._paused:
            self._paused = False
            gc.enable()

    @contextmanager
    def held(self) -> Iterator[None]:
        """Paused for the block: for a recorder whose whole step is one call (the TensorFlow loops)."""
        self.pause()
        try:
            yield
        finally:
            self.resume()


@contextmanager
def frozen_imports() -> Iterator[None]:
    """The collector off for the block, then everything made so far frozen (`gc.freeze`: left out of every
    later collection, as it lives to the end of the process anyway) and the collector back as it was. For the
    worker's import of the framework, before the recipe's module is imported: the user's code runs with the
    collector as Python starts it. The few thousand objects the imports leave as cyclic garbage stay frozen;
    a full collection to free them would cost half of what the freeze saves."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if was_enabled:
            gc.enable()
