"""The self-contained HTML divergence report: one file, no network, charts inline, names escaped.

`render_html` walks a Comparison (and reads both traces when given) and returns the document;
`write_html` writes it atomically. See docs/html-report.md for what each section shows.
"""

from __future__ import annotations

from repro_audit.reports.html.render import render_html, write_html

__all__ = ["render_html", "write_html"]
