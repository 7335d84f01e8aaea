"""The trace: one recorded run as a folder of JSON, JSON lines and safetensors files.

Probes write it through `TraceWriter`; everything after the probes reads it through `Trace`. See
docs/trace-format.md for the layout.
"""

from __future__ import annotations

from repro_audit.audit.trace.format import SCHEMA_VERSION, TRACE_FORMAT
from repro_audit.audit.trace.reader import Trace
from repro_audit.audit.trace.writer import TraceWriter, finalize_partial

__all__ = ["SCHEMA_VERSION", "TRACE_FORMAT", "Trace", "TraceWriter", "finalize_partial"]
