"""The per-step ledger of random draws (steps.jsonl `random_draws`) for TensorFlow runs.

Keras 3 random ops are stateless: each draw takes its seed from a SeedGenerator's state `[seed, counter]`,
which `next()` then moves on (counter + 1, or a scramble for the global generator). While tracing, the
state is symbolic, so the draws seen at trace time are replayed here from the generators' states at the
start of the step; an eager step knows the states directly. Raw TF stateful random ops (tf.random.uniform,
tf.nn.dropout without a seed) draw from a stream held by their kernel and seeded by the op's (seed, seed2):
their entries (`generator: tf-op-seed`) carry the seed pair, the op's `stream` and, in the seed state, how
often that kernel ran before (repro_audit.probes.tf.stateful_random). In graph mode they are listed from the graph.
A `tf.random.Generator` draw carries the generator's state before it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from repro_audit.probes.common.hashing import hash_array
from repro_audit.probes.tf.capture import RandomCall


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
                counts: Mapping[int, int], generator_keys: Mapping[int, str],
                drawn_states: Mapping[int, np.ndarray] | None = None, trace: int | None = None
                ) -> tuple[list[dict[str, Any]], list[str]]:
        """Ledger entries of one step's draws. For traced calls: `start_states` of Keras generators,
        `counts` and `drawn_states` (a tf.random.Generator's state) by call index from the step's outputs,
        and the `trace` that ran (a traced op's kernel lives as long as its concrete function)."""
        notes: list[str] = []
        states = {name: np.array(state) for name, state in start_states.items()}
        records: list[dict[str, Any]] = []
        for index, call in enumerate(calls):
            count = counts.get(index, call.count) if not isinstance(call.count, int) else call.count
            if call.kind == "tf-op-seed":
                records.append(self._op_seed_entry(len(records), call, int(count), trace))
                continue
            state = call.state
            if call.kind == "tf-random-generator" and state is None:
                state = (drawn_states or {}).get(index)
            if call.kind != "keras":
                records.append(self._entry(len(records), op=call.op, module=call.module, phase=call.phase,
                                           generator=call.generator, count=int(count), state=state))
                records[-1]["stream"] = call.stream
                if state is None:
                    notes.append(f"random draw {call.op} in {call.module}: generator state not readable")
                continue
            if state is None:
                state = states.get(call.generator)
                if state is None and call.seed_object is not None:
                    key = generator_keys.get(id(call.seed_object))
                    state = states.get(key) if key else None
                if state is not None:
                    states[call.generator] = next_state(state, call.ordered)
            records.append(self._entry(len(records), op=call.op, module=call.module, phase=call.phase,
                                       generator=call.generator, count=int(count), state=state))
            if state is None:
                notes.append(f"random draw {call.op} in {call.module}: generator state not readable")
        return records, notes

    def _op_seed_entry(self, index: int, call: RandomCall, count: int, trace: int | None) -> dict[str, Any]:
        """A stateful op's entry: its seed pair and its kernel's runs before (eager: counted as it ran)."""
        seeds = call.seed or (0, 0)
        runs = call.position
        kernel = f"tf-op-seed:{'eager' if runs is not None else trace}:{call.stream}:{seeds[0]}:{seeds[1]}"
        if runs is None:
            runs = self.executions.get(kernel, 0)
            self.executions[kernel] = runs + 1
        entry = self._entry(index, op=call.op, module=call.module, phase=call.phase, generator=kernel, count=count,
                            state=np.array([*seeds, runs], dtype=np.int64))
        entry.update(generator="tf-op-seed", stream=call.stream, seed=list(seeds))
        return entry

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
