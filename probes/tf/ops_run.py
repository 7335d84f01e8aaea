"""`repro-audit ops` for TensorFlow: the recorder's own loop with every eager op executed twice.

Partial next to torch: eager ops only (a tf.function's ops run in C++ and are not seen), stateful ops are
not re-executed, modules are Keras layer paths, loss terms are not attributed, and the GPU table is
probes/tf/known_nondeterministic.py. The trace the recorder writes stays beside ops.json.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from repro_audit.audit.config import RunConfig
from repro_audit.audit.recipe import step_batches
from repro_audit.audit.trace import TraceWriter

OPS_FILE = "ops.json"


def record_ops(config: RunConfig, writer: TraceWriter, *, progress: Callable[[int], None]) -> None:
    from repro_audit.probes.tf.op_recheck import TfOpRecheck, _op_determinism
    from repro_audit.probes.tf.recorder import open_recording

    recheck: TfOpRecheck | None = None
    done = 0
    mode = "eager"
    try:
        with open_recording(config, writer) as recording:
            mode = str(recording.recipe.extras.get("mode", "eager"))
            capture = getattr(recording, "capture", None)
            recheck = TfOpRecheck(module_of=capture.current_module if capture is not None else lambda: None)
            batches = step_batches(recording.recipe.batches, steps=config.steps, spec=config.recipe)
            for step, batch in enumerate(batches, start=1):
                recheck.step = step
                recheck.install()
                try:
                    recording.step(step, batch)
                finally:
                    recheck.uninstall()
                done = step
                progress(step)
    finally:
        writer.write_json(OPS_FILE, _record(recheck, steps=done, mode=mode, determinism=_op_determinism()))


def _record(recheck: Any, *, steps: int, mode: str, determinism: bool) -> dict[str, Any]:
    import tensorflow as tf

    gpus = tf.config.list_logical_devices("GPU")
    return {
        "framework": "tensorflow",
        "tf_version": tf.__version__,
        "device": "gpu" if gpus else "cpu",
        "steps": steps,
        "execution_mode": mode,
        "ops_checked": recheck.ops_checked if recheck else 0,
        "ops_skipped_stateful": recheck.ops_skipped_stateful if recheck else 0,
        "op_determinism": determinism,
        "tf_deterministic_ops": os.environ.get("TF_DETERMINISTIC_OPS"),
        "disagreements": recheck.disagreements if recheck else [],
        "known": list(recheck.known.values()) if recheck else [],
    }
