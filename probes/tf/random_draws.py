"""The per-step ledger of random draws (steps.jsonl `random_draws`) for TensorFlow runs.

Keras 3 random ops are stateless: each draw takes its seed from a SeedGenerator's state `[seed, counter]`,
which `next()` then moves on (counter + 1, or a scramble for the global generator). While tracing, the
state is symbolic, so the draws seen at trace time are replayed here from the generators' states at the
start of the step; an eager step knows the states directly. Raw TF stateful random ops (tf.random.uniform,
tf.compat.v1 dropout) draw from a stream held by their kernel and seeded by the op's (seed, seed2): they
are listed from the graph, with the number of times the op has run as its position in that stream.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from probes.common.hashing import hash_array
from probes.tf.capture import RandomCall


def next_state(state: np.ndarray, ordered: bool) -> np.ndarray:
    """Keras's SeedGenerator.next: counter + 1, or `(state + 1) * 5387 % 933199` when not ordered."""
    if ordered:
        return state + np.array([0, 1], dtype=state.dtype)
    return (state + 1) * 5387 % 933199


class DrawLedger:
    """Counts values drawn per generator over the run and turns captured calls into ledger entries."""

    def __init__(self) -> None:
        self.offsets: dict[str, int] = {}
        self.executions: dict[str, int] = {}

    def entries(self, calls: Sequence[RandomCall], *, start_states: Mapping[str, np.ndarray],
                counts: Mapping[int, int], generator_keys: Mapping[int, str]) -> tuple[list[dict[str, Any]], list[str]]:
        """Ledger entries of one step's Keras draws; `start_states` by generator, when calls were traced."""
        notes: list[str] = []
        states = {name: np.array(state) for name, state in start_states.items()}
        records = []
        for index, call in enumerate(calls):
            state = call.state
            if state is None:
                state = states.get(call.generator)
                if state is None and call.seed_object is not None:
                    key = generator_keys.get(id(call.seed_object))
                    state = states.get(key) if key else None
                if state is not None:
                    states[call.generator] = next_state(state, call.ordered)
            count = counts.get(index, call.count) if not isinstance(call.count, int) else call.count
            records.append(self._entry(len(records), op=call.op, module=call.module, phase=call.phase,
                                       generator=call.generator, count=int(count), state=state))
            if state is None:
                notes.append(f"random draw {call.op} in {call.module}: generator state not readable")
        return records, notes

    def stateful_entries(self, ops: Sequence[tuple[Any, str | None, str, int]], *, start_index: int
                         ) -> list[dict[str, Any]]:
        """Entries for stateful TF random ops: (op, module, phase, count) in execution order."""
        records = []
        for offset, (op, module, phase, count) in enumerate(ops):
            seeds = _seeds(op)
            stream = f"tf-op-seed:{op.name}"
            runs = self.executions.get(stream, 0)
            self.executions[stream] = runs + 1
            state = np.array([*(seeds or (0, 0)), runs], dtype=np.int64)
            entry = self._entry(start_index + offset, op=op.type, module=module, phase=phase,
                                generator=stream, count=count, state=state)
            entry["generator"] = "tf-op-seed"
            entry["stream"] = op.name
            entry["seed"] = list(seeds) if seeds else None
            records.append(entry)
        return records

    def _entry(self, index: int, *, op: str, module: str | None, phase: str, generator: str, count: int,
               state: np.ndarray | None) -> dict[str, Any]:
        offset = self.offsets.get(generator, 0)
        self.offsets[generator] = offset + count
        return {
            "index": index,
            "op": op,
            "module": module,
            "phase": phase,
            "generator": generator,
            "count": count,
            "offset_before": offset,
            "rng_fingerprint": hash_array(np.asarray(state, dtype=np.int64)) if state is not None else "unavailable",
            "seed_state": [int(n) for n in np.asarray(state).reshape(-1)] if state is not None else None,
        }


def _seeds(op: Any) -> tuple[int, int] | None:
    try:
        return int(op.get_attr("seed")), int(op.get_attr("seed2"))
    except (ValueError, TypeError):
        return None
