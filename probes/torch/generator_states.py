"""Raw states of every random generator a training step can reach, read cheaply enough for every module call.

A draw is seen by the generator it moves, not by the function that asked for it: an aliased import of
`dropout`, dropout inside a fused kernel, `np.random` or Python's `random` in a module all move a state.
Reading the states at every module boundary costs a few microseconds per boundary, so the readers avoid
what allocates: the torch CPU state is one `get_state()` read through its pointer (`.numpy()` would
dispatch a detach inside a dispatch mode), numpy's and Python's global Mersenne Twisters are read straight
from their C structs. Those struct layouts are checked once against the public `get_state()`/`getstate()`;
where they do not match (another Python or numpy), the public readers are used instead.
"""

from __future__ import annotations

import ctypes
import random
import struct
from collections.abc import Callable

import numpy as np
import torch

StateReader = Callable[[], bytes]

_MT_WORDS = 624
_MT_BYTES = 4 * _MT_WORDS


def torch_state(generator: torch.Generator) -> bytes:
    """The generator's raw state bytes (Mersenne Twister on CPU, seed and Philox offset on CUDA)."""
    state = generator.get_state()
    return ctypes.string_at(state.data_ptr(), state.numel())


def torch_reader(generator: torch.Generator) -> StateReader:
    return lambda: torch_state(generator)


def numpy_reader() -> StateReader:
    """numpy's global (legacy) generator: `mt19937_state {uint32 key[624]; int pos;}` behind `state_address`."""
    legacy = np.random.mtrand._rand
    try:
        address = legacy._bit_generator.ctypes.state_address
        raw = ctypes.string_at(address, _MT_BYTES + 4)
        public = legacy.get_state()
        if raw == np.asarray(public[1], dtype=np.uint32).tobytes() + struct.pack("i", public[2]):
            return lambda: ctypes.string_at(address, _MT_BYTES + 4)
    except (AttributeError, TypeError, ValueError):
        pass
    return lambda: _public_numpy_state(legacy)


def _public_numpy_state(legacy: np.random.RandomState) -> bytes:
    state = legacy.get_state()
    return np.asarray(state[1], dtype=np.uint32).tobytes() + struct.pack("i", state[2])


def python_reader() -> StateReader:
    """Python's global `random`: `RandomObject {PyObject_HEAD; int index; uint32 state[624];}` in CPython,
    plus the cached second normal of `random.gauss`."""
    instance = random._inst  # type: ignore[attr-defined]
    offset = object.__basicsize__  # PyObject_HEAD
    try:
        raw = ctypes.string_at(id(instance) + offset, 4 + _MT_BYTES)
        version, words, _ = instance.getstate()
        expected = struct.pack("i", words[-1]) + struct.pack(f"{_MT_WORDS}I", *words[:-1])
        if version == 3 and raw == expected:
            def read() -> bytes:
                return ctypes.string_at(id(instance) + offset, 4 + _MT_BYTES) + repr(instance.gauss_next).encode()
            return read
    except (TypeError, ValueError, struct.error):
        pass
    return lambda: repr(instance.getstate()).encode()
