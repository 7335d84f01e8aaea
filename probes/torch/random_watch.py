"""Which region of a step moved which random generator, and by which op.

Every module call, and every phase of a step (between steps, forward, backward, optimizer), is a region.
At each boundary between regions the states of all generators are read (generator_states) and each one
that moved since the last boundary is a draw of the region that just ran: nothing can draw unseen, however
the user imported the function or whichever kernel drew. A region that drew is then watched op by op from
the next step on, by a light dispatch mode that reads the torch generators around each op of that region
only, so its later draws carry the op and the count; the rest of the step runs without a dispatch mode,
which would cost tens of microseconds per op. Inside a watched region the mode still steps aside where
nothing can draw: in torch's own draw-free layers (a Linear inside an attention block that drops out), and
around every aten op not tagged random (views, matmuls, softmax: every aten op that can move a generator
carries `nondeterministic_seeded`), whose generators are not read. Step 1 has the full dispatch capture,
which names every random op itself (and keeps the watch in step through `synced`).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from repro_audit.probes.torch.generator_states import StateReader, numpy_reader, python_reader, torch_reader
from repro_audit.probes.torch.random_ledger import RandomLedger

_SEEDED = torch.Tag.nondeterministic_seeded
# Draws of numpy's and Python's generators are seen only as a moved state: no op names them.
_UNTRACED_OPS = {"numpy": "numpy.random", "python": "random"}

Region = tuple[str | None, str]  # (module path or None outside modules, phase)


class RandomWatch:
    """Generator states at region boundaries; regions that drew are watched op by op afterwards."""

    def __init__(self, ledger: RandomLedger) -> None:
        self.ledger = ledger
        self.names: list[str] = []
        self.readers: list[StateReader] = []
        self.last: list[bytes] = []
        self.torch_positions: list[int] = []  # readers of torch generators, the ones ops can move
        self.watched: set[Region] = set()
        self.ops_enabled = True  # off while a full dispatch capture (step 1) names the ops itself
        self.active = False
        self.stack: list[str | None] = []
        self.inert_depth = 0  # inside how many draw-free layers the current op runs
        self._known: set[int] = set()
        self._mode = RandomOpMode(self)
        self._mode_on = False
        self._add("cpu", torch_reader(torch.default_generator), torch_generator=True)
        self._add("numpy", numpy_reader(), torch_generator=False)
        self._add("python", python_reader(), torch_generator=False)
        self.refresh()

    # -- generators ------------------------------------------------------------------------------------

    def refresh(self) -> None:
        """Take in CUDA generators once CUDA is up, and custom generators the ledger has met."""
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            for index, generator in enumerate(torch.cuda.default_generators):
                self.track(generator, f"cuda:{index}")
        for generator in self.ledger.custom_generators:
            self.track(generator, self.ledger.generator_name(generator, None))

    def track(self, generator: torch.Generator, name: str) -> None:
        if id(generator) not in self._known:
            self._known.add(id(generator))
            self._add(name, torch_reader(generator), torch_generator=True)

    def _add(self, name: str, reader: StateReader, *, torch_generator: bool) -> None:
        if torch_generator:
            self.torch_positions.append(len(self.readers))
        self.names.append(name)
        self.readers.append(reader)
        self.last.append(reader())

    def watch_region(self) -> None:
        """The current region drew (seen by the full capture): name its ops at later steps too."""
        if self.active:
            self.watched.add(self.region)

    def synced(self, name: str, state: bytes) -> None:
        """A draw recorded elsewhere (the full dispatch capture) left generator `name` at `state`."""
        if name in self.names:
            self.last[self.names.index(name)] = state

    def state_of(self, name: str) -> bytes | None:
        return self.readers[self.names.index(name)]() if name in self.names else None

    # -- regions ---------------------------------------------------------------------------------------

    def begin_step(self) -> None:
        """Draws since the last step (data loading, the user's code between steps) are phase "data"."""
        self.refresh()
        self.active = True
        self.stack = [None]
        self.inert_depth = 0
        self.ledger.phase = "data"
        self.boundary()
        self.set_phase("forward")

    def end_step(self) -> None:
        self.boundary()
        self.active = False
        self.stack = []
        self._set_mode(False)

    def set_phase(self, phase: str) -> None:
        if self.active:
            self.boundary()
        self.ledger.phase = phase
        self._update_mode()

    def enter(self, module: str) -> None:
        if not self.active:
            return
        self.boundary()
        self.stack.append(module)
        self._update_mode()

    def leave(self) -> None:
        if not self.active or len(self.stack) < 2:
            return
        self.boundary()
        self.stack.pop()
        self._update_mode()

    def enter_inert(self) -> None:
        """A layer that cannot draw starts (modules.DRAW_FREE_TYPES): its ops are not watched. No boundary
        is read around it; a draw in something it calls is still seen at the next one."""
        self.inert_depth += 1
        if self._mode_on:
            self._set_mode(False)

    def leave_inert(self) -> None:
        if self.inert_depth:
            self.inert_depth -= 1
            if not self.inert_depth:
                self._update_mode()

    @property
    def mode_on(self) -> bool:
        """Whether the op-level mode is on now (the probes' own tensor work then steps around it)."""
        return self._mode_on

    @property
    def region(self) -> Region:
        return (self.stack[-1] if self.stack else None, self.ledger.phase)

    def boundary(self) -> None:
        """Every generator that moved since the last boundary drew in the current region."""
        if not self.active:
            return
        readers, last = self.readers, self.last
        for position in range(len(readers)):
            now = readers[position]()
            if now != last[position]:
                self._untraced_draw(position, last[position], now)
                last[position] = now

    def _untraced_draw(self, position: int, before: bytes, after: bytes) -> None:
        name = self.names[position]
        module, _ = self.region
        self.ledger.record(op=_UNTRACED_OPS.get(name), count=None, generator=name, before=before, after=after,
                           module=module)
        if position in self.torch_positions:
            self.watched.add(self.region)  # from the next step on, its ops are named

    @contextmanager
    def paused(self) -> Iterator[None]:
        """A replayed forward pass: its draws are not the run's, and generators end where they were."""
        active, stack = self.active, self.stack
        self._set_mode(False)
        self.active = False
        try:
            yield
        finally:
            self.active, self.stack = active, stack
            self.last = [read() for read in self.readers]
            self._update_mode()

    def close(self) -> None:
        self._set_mode(False)
        self.active = False

    # -- the op-level mode -----------------------------------------------------------------------------

    def _update_mode(self) -> None:
        self._set_mode(self.active and self.ops_enabled and not self.inert_depth and self.region in self.watched)

    def _set_mode(self, on: bool) -> None:
        if on == self._mode_on:
            return
        if on:
            self._mode.__enter__()
        else:
            self._mode.__exit__(None, None, None)
        self._mode_on = on

    def op_draw(self, func: Any, args: tuple[Any, ...], out: Any, position: int, before: bytes,
                after: bytes) -> None:
        """An op of a watched region moved the generator at `position`."""
        module, _ = self.region
        self.ledger.record(op=func._schema.name, count=drawn_count(func, args, out), generator=self.names[position],
                           before=before, after=after, module=module)
        self.last[position] = after


class RandomOpMode(TorchDispatchMode):
    """Reads the torch generators around every op of a watched region that can draw; an op that moved one
    drew. Ops of other namespaces (custom and fused kernels) are read around too: they may draw on the side."""

    def __init__(self, watch: RandomWatch) -> None:
        super().__init__()
        self.watch = watch
        self._inert: dict[Any, bool] = {}  # op overload -> cannot move a generator

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple[Any, ...] = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        inert = self._inert.get(func)
        if inert is None:
            inert = self._inert[func] = cannot_draw(func)
        if inert:
            return func(*args, **kwargs)
        watch = self.watch
        generator = kwargs.get("generator")
        if generator is not None:
            watch.track(generator, watch.ledger.generator_name(generator, None))
        positions = watch.torch_positions
        before = [watch.readers[p]() for p in positions]
        out = func(*args, **kwargs)
        for p, state in zip(positions, before):
            after = watch.readers[p]()
            if after != state:
                watch.op_draw(func, args, out, p, state, after)
        return out


def cannot_draw(func: Any) -> bool:
    """An aten op without the `nondeterministic_seeded` tag: aten tags every op that takes a generator or
    drops out (their backward ops aside, which draw nothing)."""
    return getattr(func, "namespace", None) == "aten" and _SEEDED not in func.tags


def drawn_count(func: Any, args: tuple[Any, ...], out: Any) -> int | None:
    """Values a random op drew: the elements it filled. None for an op that is not tagged random (a
    fused kernel that drew on the side): its output's size says nothing about the draw."""
    if _SEEDED not in func.tags:
        return None
    if func._schema.name.endswith("_") and args and isinstance(args[0], torch.Tensor):
        return args[0].numel()
    outputs = [value for value in tree_flatten(out)[0] if isinstance(value, torch.Tensor)]
    return outputs[0].numel() if outputs else 0
