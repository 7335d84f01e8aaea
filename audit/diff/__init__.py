"""The differ: two traces in, one causal divergence tree out (repro_audit.audit.divergence.Comparison)."""

from repro_audit.audit.diff.compare import compare_check, compare_traces

__all__ = ["compare_check", "compare_traces"]
