"""Explanation rules: small functions that name a cause from the divergences and the evidence they hold.

Rules run in causal order and each divergence is claimed by at most one cause, so a NaN gradient caused by a
zero-weighted term is not also listed as a consequence of a learning-rate change. Adding a cause means
adding one function to RULES.
"""

from __future__ import annotations

from collections.abc import Callable

from repro_audit.audit.diff.context import CompareContext
from repro_audit.audit.divergence import Divergence
from repro_audit.audit.explain.data import data_change
from repro_audit.audit.explain.decay import decay_through_zero_gradient
from repro_audit.audit.explain.finding import Claims, Finding
from repro_audit.audit.explain.inputs import code_change, config_change, environment_change
from repro_audit.audit.explain.lr_control import lr_control_change
from repro_audit.audit.explain.nondeterminism import fp_reordering, nondeterminism
from repro_audit.audit.explain.returnn_seeds import returnn_seed_shift, returnn_session_restart
from repro_audit.audit.explain.structure import build_stream_shift, graph_change, seed_offset_shift
from repro_audit.audit.explain.training import hyperparameter_change, nan_through_term, random_stream_shift

Rule = Callable[[list[Divergence], CompareContext, Claims], list[Finding]]

RULES: tuple[Rule, ...] = (
    environment_change,
    code_change,
    config_change,
    nondeterminism,
    data_change,
    graph_change,
    returnn_seed_shift,  # before the general rule: RETURNN's seeds are no offsets into a stream
    seed_offset_shift,
    returnn_session_restart,
    build_stream_shift,  # before the training-time rule: build-time draws shift even the draws before it
    random_stream_shift,
    nan_through_term,
    decay_through_zero_gradient,
    lr_control_change,  # before the generic rule: RETURNN's learning-rate control state
    hyperparameter_change,
    fp_reordering,
)


def explain(divergences: list[Divergence], context: CompareContext) -> list[Finding]:
    """Findings of every rule, in rule order; each divergence is claimed at most once."""
    claims = Claims()
    findings: list[Finding] = []
    for rule in RULES:
        for finding in rule(divergences, context, claims):
            findings.append(claims.take(finding))
    return findings


__all__ = ["RULES", "Finding", "explain"]
