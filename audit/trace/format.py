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
# Version 4: the manifest of a finished trace (complete, or closed after a crash) lists every file of the
# trace with its size and xxh3-128 digest (`files`) and counts the lines of steps.jsonl (`step_records`)
# (audit/trace/integrity.py). The version is what lets a reader demand that proof: a complete version-4
# trace without it is refused, where versions 1-3, which never had it, are read as before (a version-3
# trace that lost its last lines read as complete and compared IDENTICAL).
SCHEMA_VERSION = 4
READABLE_VERSIONS = (1, 2, 3, 4)
CHUNKED_HASHES_FROM = 3
DIGESTS_FROM = 4

MANIFEST = "manifest.json"
ENVIRONMENT = "environment.json"
STRUCTURE = "structure.json"
INITIALISATION = "initialisation.json"
STEPS = "steps.jsonl"
LOG = "run.log"
GRAPHS_DIR = "graphs"
VALUES_DIR = "values"
PARTIAL_SUFFIX = ".partial"
LOCK = "writer.lock"  # in the staging folder: held (fcntl.flock) by the process writing it


def graph_file(step: int) -> str:
    return f"{GRAPHS_DIR}/step_{step:05d}.json"


def values_file(step: int) -> str:
    return f"{VALUES_DIR}/step_{step:05d}.safetensors"


def lists_digests(schema_version: int) -> bool:
    """Whether a finished trace of this schema version lists its files with their digests."""
    return schema_version >= DIGESTS_FROM


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
