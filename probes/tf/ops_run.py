"""`repro-audit ops` for TensorFlow: not built yet; said as a user error, not a crash."""

from __future__ import annotations

from collections.abc import Callable

from audit.config import RunConfig
from audit.errors import ConfigError
from audit.trace import TraceWriter


def record_ops(config: RunConfig, writer: TraceWriter, *, progress: Callable[[int], None]) -> None:
    raise ConfigError("repro-audit ops runs torch configs only for now; for TensorFlow, "
                      "tf.config.experimental.enable_op_determinism() makes ops without a deterministic "
                      "kernel raise")
