"""Turn what the ops probe wrote (ops.json) into the `ops` report: one entry per op and site, and advice.

The probe lists each disagreement as it happened (an op that differs at every step appears every step);
the report folds them into one finding per op, phase, module and source line, with the steps it differed
at and its worst distance, so the user reads each culprit once. Advice is rules on those facts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from repro_audit.audit.errors import RunFailed

OPS_FORMAT = "repro-audit-ops"
OPS_SCHEMA_VERSION = 1


@dataclass
class OpFinding:
    """One op at one site whose two executions differed, at one or more steps."""

    op: str
    phase: str
    module: str | None
    source: dict[str, Any] | None
    dtype: str
    shape: list[int]
    steps: list[int] = field(default_factory=list)
    calls: int = 0
    distance: dict[str, Any] = field(default_factory=dict)
    loss_terms: list[str] = field(default_factory=list)
    backward_node: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"op": self.op, "phase": self.phase, "module": self.module, "source": self.source,
                "dtype": self.dtype, "shape": self.shape, "steps": self.steps, "calls": self.calls,
                "distance": self.distance, "loss_terms": self.loss_terms, "backward_node": self.backward_node}


@dataclass
class OpsReport:
    """The whole answer of `repro-audit ops CONFIG`."""

    label: str
    framework: str
    device: str
    steps: int
    ops_checked: int
    findings: list[OpFinding]
    known: list[dict[str, Any]]
    advice: list[str]
    settings: dict[str, Any]

    @property
    def clean(self) -> bool:
        """Nothing differed, and no op known to be nondeterministic ran with its nondeterministic kernel
        (an op whose deterministic kernel `use_deterministic_algorithms(True)` selected is fine)."""
        return not self.findings and not any(_still_nondeterministic(known) for known in self.known)

    def to_dict(self) -> dict[str, Any]:
        return {"format": OPS_FORMAT, "schema_version": OPS_SCHEMA_VERSION, "label": self.label,
                "framework": self.framework, "device": self.device, "steps": self.steps,
                "ops_checked": self.ops_checked, "nondeterministic": [f.to_dict() for f in self.findings],
                "known_nondeterministic": self.known, "advice": self.advice, "settings": self.settings}


def _still_nondeterministic(known: Mapping[str, Any]) -> bool:
    return not (known.get("alternative") and known.get("deterministic_algorithms"))


def ops_report(record: Mapping[str, Any], *, label: str) -> OpsReport:
    """The report from one ops.json; a record that is not one is a failed run, said in one line."""
    if not isinstance(record, Mapping) or "disagreements" not in record:
        raise RunFailed(f"run {label!r}: the ops run wrote no ops.json it could be read from")
    findings = _fold(record.get("disagreements") or [])
    known = sorted(record.get("known") or [], key=lambda k: (str(k.get("op")), str(k.get("module")),
                                                             str(k.get("phase"))))
    framework = str(record.get("framework", "torch"))
    settings = {key: record.get(key) for key in ("deterministic_algorithms", "cudnn", "tf_deterministic_ops",
                                                 "op_determinism", "torch_version", "tf_version", "execution_mode",
                                                 "ops_skipped_stateful")
                if key in record}
    report = OpsReport(label=label, framework=framework, device=str(record.get("device", "cpu")),
                       steps=int(record.get("steps", 0)), ops_checked=int(record.get("ops_checked", 0)),
                       findings=findings, known=known, advice=[], settings=settings)
    report.advice = advice_for(report)
    return report


def _fold(disagreements: list[Mapping[str, Any]]) -> list[OpFinding]:
    folded: dict[tuple[Any, ...], OpFinding] = {}
    for item in disagreements:
        source = item.get("source") or {}
        key = (item.get("op"), item.get("phase"), item.get("module"), source.get("file"), source.get("line"))
        finding = folded.get(key)
        if finding is None:
            finding = folded[key] = OpFinding(op=str(item.get("op")), phase=str(item.get("phase")),
                                              module=item.get("module"), source=item.get("source"),
                                              dtype=str(item.get("dtype")), shape=list(item.get("shape") or []),
                                              backward_node=item.get("backward_node"))
        finding.calls += 1
        step = int(item.get("step", 0))
        if step not in finding.steps:
            finding.steps.append(step)
        finding.loss_terms = sorted(set(finding.loss_terms) | set(item.get("loss_terms") or []))
        finding.distance = _worse(finding.distance, dict(item.get("distance") or {}))
    return list(folded.values())


def _worse(kept: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """The larger of two distances: the most elements differing, then the largest gap."""
    if not kept:
        return new
    rank = lambda d: (d.get("differing") or 0, d.get("max_abs") or 0.0)
    return new if rank(new) > rank(kept) else kept


def advice_for(report: OpsReport) -> list[str]:
    """What to change, from the findings: each line a rule on facts the report shows."""
    if report.framework == "tensorflow":
        from repro_audit.audit.ops.tf_advice import tf_advice

        return tf_advice(report)
    advice = []
    switchable = sorted({k["op"] for k in report.known if k.get("alternative")})
    without = sorted({k["op"] for k in report.known if not k.get("alternative")})
    if switchable and not report.settings.get("deterministic_algorithms"):
        advice.append(f"torch.use_deterministic_algorithms(True) switches {', '.join(switchable)} to "
                      f"deterministic kernels (slower); on CUDA also set CUBLAS_WORKSPACE_CONFIG=:4096:8")
    if without:
        advice.append(f"no deterministic kernel for {', '.join(without)} on {report.device}: "
                      f"torch.use_deterministic_algorithms(True) would raise there; run it on CPU or replace it")
    cudnn = report.settings.get("cudnn") or {}
    if cudnn.get("enabled") and not cudnn.get("deterministic") and any(
            k["op"].startswith("aten::convolution") for k in report.known):
        advice.append("set torch.backends.cudnn.deterministic = True and torch.backends.cudnn.benchmark = False")
    custom = sorted({f.op for f in report.findings if not f.op.startswith(("aten::", "prims::"))})
    if custom:
        advice.append(f"{', '.join(custom)}: not a torch op; its result depends on something other than its "
                      f"inputs (state kept between calls, threads, atomics): fix or seed it at its source line")
    return advice
