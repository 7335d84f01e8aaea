"""The differ: two traces in, one causal divergence tree out (audit.divergence.Comparison)."""

from audit.diff.compare import compare_check, compare_traces

__all__ = ["compare_check", "compare_traces"]
