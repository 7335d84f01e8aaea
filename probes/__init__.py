"""Probes record one run into a trace. One folder per framework; `common` holds what both share.

Probes never compare: they write plain data through repro_audit.audit.trace.TraceWriter.
"""
