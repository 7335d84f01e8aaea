"""Prove a verdict: re-run run B with each named mechanism neutralised and see whether it then matches run A."""

from repro_audit.audit.verify.result import Verification
from repro_audit.audit.verify.run import needs_values, verify

__all__ = ["Verification", "needs_values", "verify"]
