"""Advice for TensorFlow: the op-determinism switches and whether they were already on."""

from __future__ import annotations

from typing import Any


def tf_advice(report: Any) -> list[str]:
    advice = []
    mode = report.settings.get("execution_mode")
    if mode and mode != "eager":
        advice.append(f"this run's steps ran as {mode}: only eager ops are executed twice, so the ops inside "
                      f"its tf.function were not checked; run the recipe eagerly (extras mode 'eager') to check "
                      f"them")
    if not report.findings and not report.known:
        return advice
    if not report.settings.get("op_determinism"):
        advice.append("call tf.config.experimental.enable_op_determinism() before building the model (or set "
                      "TF_DETERMINISTIC_OPS=1 on TF < 2.9): ops without a deterministic kernel then raise "
                      "instead of differing")
    custom = sorted({f.op for f in report.findings if f.op.startswith("py:") or "Py" in f.op})
    if custom:
        advice.append(f"{', '.join(custom)}: runs Python that keeps state between calls; fix it at its line")
    return advice
