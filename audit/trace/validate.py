"""What each field of a trace file must be, so that a malformed trace is one error line, never a traceback.

The differ, the explanation and health rules and the reports index and iterate trace data as the probes
write it (`term['value']:.6g`, `{op.get("loss_term") for op in ops}`, `sorted(..., key=creation_index)`):
one value of another type deep in a step line crashed them. Every field they read is checked here, as
the reader loads each file; fields nobody reads, and unknown ones (newer probes add some), pass. Fields a
reader only compares or prints may hold any JSON (`AnyJSON`), nested at most 32 deep.
"""

from __future__ import annotations

from typing import Any

from repro_audit.audit.errors import TraceError
from repro_audit.audit.trace.schema import (
    AnyJSON,
    Bool,
    Fields,
    Int,
    Invalid,
    ListOf,
    MapOf,
    Num,
    Opaque,
    Schema,
    Str,
)

ANY, OPAQUE = AnyJSON(), Opaque()
STR, STR_OR_NULL = Str(), Str(nullable=True)
INT_OR_NULL, COUNT_OR_NULL, COUNT = Int(nullable=True), Int(nullable=True, minimum=0), Int(minimum=0)
NUM, NUM_OR_NULL = Num(), Num(nullable=True)
BOOL, BOOL_OR_NULL = Bool(), Bool(nullable=True)

STATISTICS = ("norm", "min", "max", "mean", "max_abs")
_SUMMARY_FIELDS: dict[str, Schema] = {
    "shape": ListOf(INT_OR_NULL), "dtype": STR_OR_NULL, "numel": COUNT_OR_NULL, "hash": STR_OR_NULL,
    **{key: NUM_OR_NULL for key in STATISTICS}, "nan": COUNT_OR_NULL, "inf": COUNT_OR_NULL, "zeros": COUNT_OR_NULL,
}
SUMMARY = Fields(_SUMMARY_FIELDS, nullable=True)  # a tensor summary, or null where none was taken
# `repro-audit show` counts gradients with NaN or Inf by `summary["nan"]` and `summary["inf"]`.
GRADIENT = Fields(_SUMMARY_FIELDS, required=("nan", "inf"), nullable=True)
TENSOR_ENTRY = Fields({"name": STR, "shape": ListOf(INT_OR_NULL, nullable=True), "dtype": STR_OR_NULL},
                      required=("name",))

MANIFEST = Fields({
    "format": STR, "schema_version": Int(), "framework": STR, "label": STR_OR_NULL,
    "config": MapOf(ANY, nullable=True), "complete": BOOL, "steps_recorded": COUNT,
    "error": Fields({"kind": STR_OR_NULL, "type": STR_OR_NULL, "message": STR_OR_NULL, "traceback": STR_OR_NULL,
                     "step": INT_OR_NULL}, nullable=True),
    "files": MapOf(Fields({"bytes": COUNT, "hash": STR}, required=("bytes", "hash"))),
    "step_records": COUNT,
}, required=("format", "schema_version"))

ENVIRONMENT = Fields({
    **{section: ANY for section in ("python", "platform", "cpu", "threads", "summary_kernel", "summary_op")},
    "framework": Fields({"name": STR_OR_NULL, "devices": ListOf(MapOf(ANY), nullable=True)}, nullable=True,
                        rest=ANY),
    "determinism": MapOf(ANY, nullable=True), "env_vars": MapOf(ANY, nullable=True),
    "packages": MapOf(ANY, nullable=True),
    "modules": MapOf(Fields({"path": STR_OR_NULL, "hash": ANY}, nullable=True), nullable=True),
    "git": Fields({"commit": ANY, "dirty": ANY, "root": ANY}, nullable=True),
})

STRUCTURE = Fields({
    "modules": ListOf(Fields({
        "path": STR, "type": STR_OR_NULL,
        "parameters": ListOf(TENSOR_ENTRY, nullable=True), "buffers": ListOf(TENSOR_ENTRY, nullable=True),
    }), nullable=True),
    "graph_steps": ListOf(Int(), nullable=True),
})

_DRAW = {"index": INT_OR_NULL, "op": STR_OR_NULL, "module": STR_OR_NULL, "phase": STR_OR_NULL,
         "generator": STR_OR_NULL, "count": INT_OR_NULL, "offset_before": INT_OR_NULL,
         "rng_fingerprint": STR_OR_NULL, "rng_after": STR_OR_NULL, "offset_exact": BOOL_OR_NULL}
INITIALISATION = Fields({
    "tensors": ListOf(Fields({
        "name": STR, "kind": STR_OR_NULL, "module": STR_OR_NULL, "creation_index": INT_OR_NULL,
        "shape": ListOf(Int()), "dtype": STR_OR_NULL, "initialiser": STR_OR_NULL, "generator": STR_OR_NULL,
        "seed_offset": INT_OR_NULL, "rng_fingerprint": STR_OR_NULL, "summary": SUMMARY,
    }, required=("name",)), nullable=True),
    "draws": ListOf(Fields({**_DRAW, "target": STR_OR_NULL, "name": STR_OR_NULL}), nullable=True),
    "generators": ANY,
    "tied": MapOf(STR_OR_NULL, nullable=True),
})

_LAYER: dict[str, Schema] = {
    "type": ANY, "params": COUNT_OR_NULL, "grad_params": COUNT_OR_NULL,
    **{key: NUM_OR_NULL for key in ("weight_norm", "grad_norm", "grad_min", "grad_max", "grad_max_abs",
                                    "grad_zero_share")}}
HEALTH = Fields({
    "layers": MapOf(Fields(_LAYER), nullable=True), "total": Fields(_LAYER, nullable=True),
    "activations": ListOf(Fields({
        "module": STR, "call": INT_OR_NULL, "type": ANY, "kind": STR_OR_NULL, "numel": COUNT_OR_NULL,
        "units": COUNT_OR_NULL, "dead_units": COUNT_OR_NULL,
        **{key: NUM_OR_NULL for key in ("min", "max", "mean", "std", "saturated_share", "dead_share")},
    }, required=("module",)), nullable=True),
    "memory": Fields({key: NUM_OR_NULL for key in ("rss", "heap_in_use", "cuda_allocated", "cuda_reserved")},
                     nullable=True),
    "initial_loss": MapOf(Fields({"value": NUM_OR_NULL, "num_classes": Int(nullable=True, minimum=2),
                                  "expected": NUM_OR_NULL}, nullable=True), nullable=True),
    "notes": ListOf(ANY, nullable=True),
})

_NONFINITE = Fields({key: COUNT_OR_NULL for key in ("nan", "posinf", "neginf")}, nullable=True)
_ORIGIN = Fields({
    "node": STR, "forward_op": STR_OR_NULL, "module": STR_OR_NULL, "loss_term": STR_OR_NULL,
    "loss_weight": NUM_OR_NULL, "inputs_from": ListOf(STR, nullable=True),
    "saved_nonfinite": MapOf(_NONFINITE, nullable=True), "grad_in_nonfinite": COUNT_OR_NULL, "grad_out": ANY,
}, required=("node", "forward_op"))
_ATTRIBUTION = Fields({"weight": NUM_OR_NULL, "nonfinite": MapOf(COUNT_OR_NULL, nullable=True),
                       "nonzero": MapOf(COUNT_OR_NULL, nullable=True), "norm": MapOf(NUM_OR_NULL, nullable=True)},
                      nullable=True)
STEP = Fields({
    "step": Int(),
    "batch": Fields({"hash": STR_OR_NULL, "tensors": MapOf(SUMMARY, nullable=True),
                     "examples": ListOf(STR, nullable=True)}, nullable=True),
    # `repro-audit show` prints every term as f"{value:.6g} (x{weight:g})", and the total the same way.
    "loss_terms": MapOf(Fields({"weight": NUM, "value": NUM, "hash": STR_OR_NULL}, required=("weight", "value"))),
    "total_loss": NUM,
    "module_outputs": ListOf(Fields({"module": STR_OR_NULL, "call": INT_OR_NULL, "summary": SUMMARY}),
                             nullable=True),
    "random_draws": ListOf(Fields(_DRAW), nullable=True),
    "graph": Fields({"digest": STR_OR_NULL, "ops": COUNT_OR_NULL, "stored": BOOL_OR_NULL}, nullable=True),
    "gradients": MapOf(GRADIENT, nullable=True),
    "parameters": MapOf(SUMMARY, nullable=True),
    "buffers": MapOf(SUMMARY, nullable=True),
    "optimizer": Fields({"type": STR_OR_NULL, "param_groups": ListOf(MapOf(ANY), nullable=True),
                         "own_keys": ListOf(STR, nullable=True),
                         "state": MapOf(MapOf(ANY, nullable=True), nullable=True)}, nullable=True),
    "update": MapOf(ANY, nullable=True),
    "micro_batches": COUNT_OR_NULL,
    "nan_provenance": Fields({"origins": ListOf(_ORIGIN), "nonfinite_parameters": ListOf(STR),
                              "replayed": BOOL_OR_NULL, "replay_matches": BOOL_OR_NULL}, nullable=True),
    "term_attribution": MapOf(_ATTRIBUTION, nullable=True),
    "health": Fields({"described_outputs": ListOf(Int()), "activation_kinds": ListOf(MapOf(ANY))}, nullable=True),
    "values": STR_OR_NULL,
    "notes": ListOf(ANY, nullable=True),
}, required=("step",))

GRAPH = Fields({
    "step": INT_OR_NULL, "digest": STR_OR_NULL, "level": ANY,
    "ops": ListOf(Fields({
        "index": INT_OR_NULL, "op": STR_OR_NULL, "phase": STR_OR_NULL, "module": STR_OR_NULL,
        "loss_term": STR_OR_NULL, "input_shapes": ListOf(OPAQUE, nullable=True),
    }), nullable=True),
})


def validate(data: Any, schema: Schema, *, trace: Any, where: str) -> None:
    """Raise TraceError naming the trace, the file (and line) and the field where `data` breaks `schema`."""
    try:
        schema.check(data)
    except Invalid as invalid:
        raise TraceError(f"trace {trace} is corrupt: {where}: {invalid.describe()}") from None
