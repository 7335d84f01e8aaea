"""Names and version of the trace layout, shared by writer and reader."""

from __future__ import annotations

import json
from typing import Any

TRACE_FORMAT = "repro-audit-trace"
# Bump when a reader of the previous version would misread a new trace. Readers refuse versions they do not
# know, by name, rather than guessing. Version 2: the torch probe writes `health` compact, and the reader
# derives its per-layer and per-output statistics (docs/health.md); a version-1 trace holds them itself.
# Version 3: a tensor of more than 64 KiB is hashed as the hash of its 64 KiB chunks' hashes
# (probes/common/hashing.py), so its hash differs from the one an earlier version wrote.
SCHEMA_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
CHUNKED_HASHES_FROM = 3

MANIFEST = "manifest.json"
ENVIRONMENT = "environment.json"
STRUCTURE = "structure.json"
INITIALISATION = "initialisation.json"
STEPS = "steps.jsonl"
LOG = "run.log"
GRAPHS_DIR = "graphs"
VALUES_DIR = "values"
PARTIAL_SUFFIX = ".partial"


def graph_file(step: int) -> str:
    return f"{GRAPHS_DIR}/step_{step:05d}.json"


def values_file(step: int) -> str:
    return f"{VALUES_DIR}/step_{step:05d}.safetensors"


def hashes_tensors_in_chunks(schema_version: int) -> bool:
    """Whether a trace of this schema version hashes large tensors chunk by chunk."""
    return schema_version >= CHUNKED_HASHES_FROM


def dumps(data: Any) -> str:
    """Deterministic JSON: sorted keys, NaN and Infinity kept as Python's json writes them."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), default=json_default)


def json_default(value: Any) -> Any:
    # numpy scalars and tuples-as-lists end up here; anything else is a probe bug.
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    raise TypeError(f"not serialisable in a trace: {type(value).__name__}")
