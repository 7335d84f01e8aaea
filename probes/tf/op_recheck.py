"""TensorFlow's counterpart of probes/torch/op_recheck.py, for eager ops only.

An op callback (tensorflow.python.framework.op_callbacks, the hook tf.debugging's numeric checks use) sees
every eager op with its inputs, attributes and outputs; it executes the op a second time with the same
inputs and attributes and compares the bit patterns. Stateful ops are not re-executed: running an
`AssignAddVariableOp` or a stateful random op twice would change the run (variables, generator state), and
their state cannot be put back from here. Ops inside a `tf.function` or a graph are built, not executed, by
Python, so they are not seen (a limitation: `ops` on TF covers eager steps).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from repro_audit.probes.common.source_lines import user_frame


class TfOpRecheck:
    """Install with `install()`, remove with `uninstall()`; `disagreements` and `ops_checked` as for torch."""

    def __init__(self, *, module_of: Callable[[], str | None]) -> None:
        self.module_of = module_of
        self.step = 0
        self.ops_checked = 0
        self.ops_skipped_stateful = 0
        self.disagreements: list[dict[str, Any]] = []
        self.known: dict[tuple[str, str], dict[str, Any]] = {}
        self._busy = False

    def install(self) -> None:
        from tensorflow.python.framework import op_callbacks

        op_callbacks.add_op_callback(self._callback)

    def uninstall(self) -> None:
        from tensorflow.python.framework import op_callbacks

        op_callbacks.remove_op_callback(self._callback)

    def _callback(self, op_type: Any, inputs: Any, attrs: Any, outputs: Any, op_name: Any = None,
                  graph: Any = None) -> None:
        if graph is not None or self._busy or not outputs:
            return
        name = op_type.decode() if isinstance(op_type, bytes) else str(op_type)
        if _is_stateful(name):
            self.ops_skipped_stateful += 1
            return
        from tensorflow.python.eager import context, execute

        self._busy = True
        try:
            again = execute.execute(name, len(outputs), list(inputs), attrs, context.context())
        except Exception:  # noqa: BLE001 - an op that cannot be re-run this way is left unchecked
            return
        finally:
            self._busy = False
        self.ops_checked += 1
        device = _device_type(outputs[0])
        for first, second in zip(outputs, again):
            a, b = first.numpy(), second.numpy()
            if not _bitwise_equal(a, b):
                self.disagreements.append({
                    "op": name, "step": self.step, "phase": "eager", "module": self.module_of(),
                    "source": user_frame(2), "dtype": str(a.dtype), "shape": list(a.shape),
                    "distance": _distance(a, b), "backward_node": None, "loss_terms": []})
                break
        from repro_audit.probes.tf.known_nondeterministic import known_tf_nondeterministic

        entry = known_tf_nondeterministic(name, device)
        if entry is not None:
            key = (name, device)
            record = self.known.setdefault(key, {"op": name, "device": device, "module": self.module_of(),
                                                 "phase": "eager", "alternative": entry[0], "note": entry[1],
                                                 "calls": 0, "deterministic_algorithms": _op_determinism()})
            record["calls"] += 1
        return


def _is_stateful(op_type: str) -> bool:
    from tensorflow.python.framework import op_def_registry

    op_def = op_def_registry.get(op_type)
    return op_def is None or bool(op_def.is_stateful)


def _device_type(tensor: Any) -> str:
    device = str(getattr(tensor, "device", "") or "")
    return "gpu" if "GPU" in device.upper() else "cpu"


def _bits(array: np.ndarray) -> np.ndarray:
    if array.dtype.kind in "fc":
        return array.view(f"u{array.dtype.itemsize if array.dtype.kind == 'f' else array.dtype.itemsize // 2}")
    return array


def _bitwise_equal(a: np.ndarray, b: np.ndarray) -> bool:
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.dtype.kind not in "biufc":
        return bool(np.array_equal(a, b))  # strings, objects: compared by value
    return bool(np.array_equal(_bits(np.ascontiguousarray(a)), _bits(np.ascontiguousarray(b))))


def _distance(a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
    if a.shape != b.shape or a.dtype != b.dtype or a.dtype.kind not in "biufc":
        return {"shapes": [list(a.shape), list(b.shape)], "dtypes": [str(a.dtype), str(b.dtype)]}
    differ = _bits(np.ascontiguousarray(a)) != _bits(np.ascontiguousarray(b))
    result: dict[str, Any] = {"elements": int(a.size), "differing": int(differ.sum())}
    if a.dtype.kind in "fc":
        gap = np.abs(a.astype(np.complex128 if a.dtype.kind == "c" else np.float64) - b)[differ.reshape(a.shape)
                                                                                          if differ.shape == a.shape
                                                                                          else differ]
        finite = gap[np.isfinite(gap)]
        result["max_abs"] = float(finite.max()) if finite.size else None
        result["non_finite"] = int(gap.size - finite.size)
    return result


def _op_determinism() -> bool:
    try:
        from tensorflow.python.framework import config

        return bool(config.is_op_determinism_enabled())
    except (ImportError, AttributeError):
        return False
