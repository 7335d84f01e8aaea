"""Causes 8 and 9: the same config gives different results, or the difference is only rounding of
reordered floating-point operations."""

from __future__ import annotations

from typing import Any

from repro_audit.audit.diff.compare_run import CONFIG_IGNORED
from repro_audit.audit.diff.context import CompareContext
from repro_audit.audit.divergence import Divergence
from repro_audit.audit.explain.finding import Claims, Finding
from repro_audit.audit.explain.inputs import _named

# Ops whose GPU kernels accumulate with atomics (torch.use_deterministic_algorithms lists them; TF's
# enable_op_determinism the same kernels). On CPU they are deterministic; we name them when they were in use.
KNOWN_NONDETERMINISTIC_OPS = frozenset({
    "aten::index_add_", "aten::index_add", "aten::scatter_add_", "aten::scatter_add", "aten::scatter_reduce",
    "aten::index_put_", "aten::_index_put_impl_", "aten::put_", "aten::embedding_dense_backward",
    "aten::embedding_bag", "aten::_embedding_bag_backward", "aten::ctc_loss", "aten::nll_loss2d_forward",
    "aten::adaptive_avg_pool2d_backward", "aten::adaptive_avg_pool3d_backward", "aten::max_pool3d_with_indices_backward",
    "aten::upsample_bilinear2d_backward", "aten::upsample_nearest2d_backward", "aten::grid_sampler_2d_backward",
    "aten::histc", "aten::bincount", "aten::kthvalue", "aten::median", "aten::cumsum",
    "aten::reflection_pad2d_backward", "aten::replication_pad2d_backward", "aten::_unsafe_index_put",
    "UnsortedSegmentSum", "SegmentSum", "BiasAddGrad", "SparseSoftmaxCrossEntropyWithLogits",
    "ResizeBilinearGrad", "ScatterNd", "TensorScatterAdd", "SparseTensorDenseMatMul", "CudnnRNN",
})
FEW_ULP = 16  # "floating-point reordering only" when the first differences stay within this many ULP
INPUT_CATEGORIES = ("environment", "code", "config")
VALUE_CATEGORIES = ("module_outputs", "loss_terms", "gradients", "parameters", "buffers")


def fp_reordering(divergences: list[Divergence], context: CompareContext, claims: Claims) -> list[Finding]:
    graph_steps = sorted(d.step for d in divergences if d.category == "graph" and d.step is not None)
    structural = [d for d in divergences if d.category in ("random_draws", "nan_provenance", "data")
                  or (d.category == "initialisation" and d.kind != "moved")]
    if not graph_steps or structural:
        return []
    step = graph_steps[0]
    values = [d for d in claims.free(divergences) if d.category in VALUE_CATEGORIES and d.step == step
              and d.kind == "changed"]
    measured = [d for d in values if isinstance(d.evidence.get("max_ulp"), int)]
    if not measured or max(d.evidence["max_ulp"] for d in measured) > FEW_ULP:
        return []
    first = min(values, key=lambda d: d.sort_key())
    largest = max(d.evidence["max_ulp"] for d in measured)
    max_abs = max(float(d.evidence.get("max_abs_error") or 0.0) for d in measured)
    first.cause = "fp_reordering"
    first.explanation = (
        f"Floating-point reordering only: at step {step}, where the op sequence differs, values first differ in "
        f"{first.category} {first.name} and stay within {largest} ULP (max abs error {max_abs:.3g}) over "
        f"{len(measured)} compared tensors; the same math in another order rounds differently "
        f"(identical at atol={max_abs:.3g}).")
    first.evidence.update(max_ulp_step=largest, graph_step=step, passes_at_atol=max_abs, changes_shared=True)
    return [Finding(first, [d for d in values if d is not first])]


def nondeterminism(divergences: list[Divergence], context: CompareContext, claims: Claims) -> list[Finding]:
    """Claimed only where both runs ran the same program on the same inputs: same config and code, and no
    difference of structure or settings (another graph, loss term, parameter set, hyper-parameter, clip
    norm), which would be the cause instead."""
    if not divergences or any(d.category in INPUT_CATEGORIES for d in divergences) or not _same_config(context):
        return []
    gradient_steps = {d.step for d in divergences if d.category == "gradients"}
    if any(is_structural(d) and not (d.evidence.get("measured") and d.step in gradient_steps) for d in divergences):
        return []  # a measured update factor follows from gradients that already differ
    first = min(divergences, key=lambda d: d.sort_key())
    if first.cause is not None or not claims.is_free(first):
        return []
    environment = context.trace_b.environment or {}
    settings = {**(environment.get("determinism") or {}),
                **{k: v for k, v in (environment.get("env_vars") or {}).items() if v is not None}}
    ops = sorted(_nondeterministic_ops(context))
    devices = [d.get("type") for d in (environment.get("framework") or {}).get("devices") or []]
    where = f"at step {first.step}" if first.step is not None else "before training"
    on_gpu = any(device not in (None, "cpu") for device in devices)
    in_use = ""
    if ops:
        in_use = (f"; ops with nondeterministic GPU kernels in use: {_named(ops)}" if on_gpu else
                  f"; {_named(ops)} would be nondeterministic on GPU but ran on CPU")
    first.cause = "nondeterminism"
    first.explanation = (
        f"Same config, different results: the runs first differ {where} in {first.category} {first.name}"
        f"{in_use}. {_suggestion(first, environment)}")
    first.evidence.update(determinism_settings=settings, nondeterministic_ops=ops, devices=devices,
                          changes_shared=True)
    return [Finding(first, [])]


STRUCTURAL_KINDS = ("added", "removed", "renamed")
TERM_SETTINGS = ("weight",)


def is_structural(divergence: Divergence) -> bool:
    """A difference in what the runs compute, not in the numbers it gave: never nondeterminism."""
    if divergence.category == "graph":
        return True
    if divergence.kind in STRUCTURAL_KINDS and divergence.category != "random_draws":
        return True
    if divergence.category == "loss_terms" and isinstance(divergence.evidence.get("weight"), dict):
        return True  # another weight
    if divergence.category == "initialisation" and "tied" in divergence.evidence:
        return True
    return divergence.category == "optimizer" and (
        divergence.name == "optimizer type" or any(key in divergence.evidence for key in
                                                   ("hyperparameter", "scheduler_setting", "measured")))


def _same_config(context: CompareContext) -> bool:
    """Read from the traces, not from the divergences: `--ignore config` hides a config change, it does not
    make two configs the same."""
    def relevant(config: dict[str, Any]) -> dict[str, Any]:
        return {key: value for key, value in config.items() if key not in CONFIG_IGNORED}

    return relevant(context.trace_a.config or {}) == relevant(context.trace_b.config or {})


def _suggestion(first: Divergence, environment: dict[str, Any]) -> str:
    framework = (environment.get("framework") or {}).get("name")
    if first.category == "data":
        return ("The batches differ: seed the data order (a seeded torch.Generator for DataLoader, or a seeded "
                "numpy Generator for shuffles) or record it.")
    if first.category in ("random_draws", "initialisation"):
        return ("Random draws come from another generator state: seed every generator (torch.manual_seed, "
                "random.seed, numpy) before building the model and the data, and do not draw from them elsewhere.")
    if framework == "tensorflow":
        return ("Inputs are equal but results are not: call tf.config.experimental.enable_op_determinism() and "
                "tf.keras.utils.set_random_seed(seed), and set TF_DETERMINISTIC_OPS=1.")
    return ("Inputs are equal but results are not: call torch.use_deterministic_algorithms(True), set "
            "CUBLAS_WORKSPACE_CONFIG=:4096:8 and torch.backends.cudnn.benchmark = False, and keep thread counts "
            "fixed.")


def _nondeterministic_ops(context: CompareContext) -> set[str]:
    found: set[str] = set()
    for trace in (context.trace_a, context.trace_b):
        for op in (trace.graph(1) or {}).get("ops") or []:
            name = str(op.get("op"))
            if name in KNOWN_NONDETERMINISTIC_OPS:
                found.add(name)
    return found
