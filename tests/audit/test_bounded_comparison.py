"""A comparison of runs that drift apart keeps the first divergences of each category whole and counts
the rest, so its size does not grow with tensors x steps."""

from __future__ import annotations

from pathlib import Path

from repro_audit.audit.config import load_config
from repro_audit.audit.diff import compare_traces, registry
from repro_audit.audit.executors.local import record_all
from repro_audit.audit.trace import Trace
from repro_audit.reports.json_report import render_json
from repro_audit.reports.text import render_text


def test_divergences_past_the_cap_are_counted_not_kept(write_config, tmp_path: Path, monkeypatch) -> None:
    jobs = [(load_config(write_config(name, recipe="tiny_mlp:build", steps=4, seed=seed)), tmp_path / f"{name}.trace")
            for name, seed in (("a", 0), ("b", 1))]
    assert all(result.ok for result in record_all(jobs))
    a, b = (Trace(path) for _, path in jobs)
    whole = compare_traces(a, b, ignore=["config"])
    monkeypatch.setattr(registry, "MAX_KEPT_PER_CATEGORY", 3)
    capped = compare_traces(a, b, ignore=["config"])

    for category in ("gradients", "parameters", "module_outputs"):
        counts, whole_counts = capped.category_counts[category], whole.category_counts[category]
        assert counts["diverged"] == whole_counts["diverged"] > 3, category
        assert counts["omitted"] == counts["diverged"] - 3
        assert len([d for d in capped.walk() if d.category == category]) == 3
        assert any(note.startswith(f"{category}: {counts['diverged']} divergences; the first 3") for note in capped.notes)
    assert capped.first_divergence.name == whole.first_divergence.name
    assert "counted, not spelled out" in render_text(capped) + render_json(capped)
