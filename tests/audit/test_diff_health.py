"""The differ attaches both runs' health, by the rules of `repro-audit health`, where the traces recorded it.

The traces are written through TraceWriter with step records as the health probe writes them (plain data,
docs/health.md); the real-run checks are in tests/reports/test_health_reports.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from repro_audit.audit.diff import compare_traces
from repro_audit.audit.health import check_trace
from repro_audit.audit.trace import Trace, TraceWriter


def layer_health(grad_norm: float) -> dict[str, Any]:
    stats = {"type": "Linear", "params": 10, "weight_norm": 1.0, "grad_norm": grad_norm, "grad_max_abs": grad_norm}
    return {"layers": {"fc": stats, "out": {**stats, "grad_norm": 0.5}}, "total": {"grad_norm": grad_norm},
            "activations": [], "initial_loss": {}, "memory": {"rss": 1 << 28}, "notes": []}


def write_trace(path: Path, *, label: str, grad_norm: float | None) -> Trace:
    """Three steps; `grad_norm` None: no health statistics recorded (capture.health off)."""
    writer = TraceWriter(path, framework="torch", config={"recipe": "model.py", "seed": 0, "steps": 3}, label=label)
    for step in (1, 2, 3):
        record: dict[str, Any] = {"step": step, "loss_terms": {"mse": {"weight": 1.0, "value": 1.0}},
                                  "total_loss": 1.0, "gradients": {}, "notes": []}
        if grad_norm is not None:
            record["health"] = layer_health(grad_norm)
        writer.append_step(record)
    writer.finish(complete=True)
    return Trace(path)


def test_health_of_both_runs_is_attached(tmp_path: Path) -> None:
    healthy = write_trace(tmp_path / "a.trace", label="a", grad_norm=0.4)
    exploding = write_trace(tmp_path / "b.trace", label="b", grad_norm=5e4)
    comparison = compare_traces(healthy, exploding)
    assert comparison.health == {"a": check_trace(healthy).as_dict(), "b": check_trace(exploding).as_dict()}
    assert comparison.health["a"]["healthy"] is True
    assert [(f["rule"], f["layer"], f["steps"]) for f in comparison.health["b"]["findings"]] == [
        ("exploding_gradients", "fc", [1, 2, 3])]
    assert comparison.to_dict()["health"] == comparison.health


def test_a_run_without_health_is_none_and_neither_is_no_health(tmp_path: Path) -> None:
    recorded = write_trace(tmp_path / "a.trace", label="a", grad_norm=0.4)
    plain = write_trace(tmp_path / "b.trace", label="b", grad_norm=None)
    health = compare_traces(recorded, plain).health
    assert health is not None and health["b"] is None and health["a"]["label"] == "a"
    assert compare_traces(plain, recorded).health == {"a": None, "b": health["a"]}
    neither = compare_traces(plain, plain)
    assert neither.health is None and "health" not in neither.to_dict()


def test_compare_takes_the_health_thresholds_of_repro_audit_health(tmp_path: Path) -> None:
    import json

    from click.testing import CliRunner

    from repro_audit.audit.cli import cli

    write_trace(tmp_path / "a.trace", label="a", grad_norm=0.4)
    write_trace(tmp_path / "b.trace", label="b", grad_norm=5e4)
    verdicts = {}
    for name, options in (("default", []), ("raised", ["--max-grad-norm", "1e5"])):
        out = tmp_path / f"{name}.json"
        result = CliRunner().invoke(cli, ["compare", str(tmp_path / "a.trace"), str(tmp_path / "b.trace"), "-q",
                                          "--json", str(out), *options])
        assert result.exit_code == 0, result.output  # health is beside the verdict, not part of it
        health = json.loads(out.read_text())["health"]
        verdicts[name] = (health["b"]["healthy"], health["b"]["thresholds"]["max_grad_norm"])
    assert verdicts == {"default": (False, 1e3), "raised": (True, 1e5)}
