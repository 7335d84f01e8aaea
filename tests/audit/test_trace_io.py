"""Trace writing and reading: atomic, streamed, versioned, and refusing what it cannot read."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from repro_audit.audit.errors import TraceError
from repro_audit.audit.trace import Trace, TraceWriter, finalize_partial


def test_round_trip_with_values(tmp_path: Path) -> None:
    writer = TraceWriter(tmp_path / "a.trace", framework="torch", config={"seed": 0}, label="a")
    assert not (tmp_path / "a.trace").exists(), "the final path appears only when the trace is finished"
    writer.write_json("environment.json", {"python": {"version": "3.11"}})
    writer.append_step({"step": 1, "loss_terms": {"ce": {"weight": 1.0, "value": float("nan")}}})
    writer.write_values(1, {"gradients/w": np.arange(6, dtype=np.float32).reshape(2, 3)})
    writer.finish(complete=True)
    trace = Trace(tmp_path / "a.trace")
    assert trace.complete and trace.label == "a" and trace.framework == "torch"
    assert np.isnan(trace.steps[0]["loss_terms"]["ce"]["value"])
    values = trace.values(1)
    assert values is not None and values.keys() == ["gradients/w"]
    assert values.get("gradients/w").tolist() == [[0, 1, 2], [3, 4, 5]]


def test_crash_keeps_earlier_steps(tmp_path: Path) -> None:
    # A real process that dies mid-line: its lock on the staging folder dies with it.
    script = ("import os, sys\n"
              "from repro_audit.audit.trace import TraceWriter\n"
              "writer = TraceWriter(sys.argv[1], framework='torch', config={}, label='b')\n"
              "writer.append_step({'step': 1})\n"
              "writer.append_step({'step': 2})\n"
              "with open(writer.staging / 'steps.jsonl', 'a') as handle:\n"
              "    handle.write('{\"step\": 3, \"grad')\n"
              "os._exit(1)\n")
    subprocess.run([sys.executable, "-c", script, str(tmp_path / "b.trace")], check=False,
                   cwd=Path(__file__).parents[2])
    finalize_partial(tmp_path / "b.trace", error={"kind": "crash", "message": "killed", "step": 3})
    trace = Trace(tmp_path / "b.trace")
    assert not trace.complete and trace.error["kind"] == "crash"
    assert [s["step"] for s in trace.steps] == [1, 2]
    assert trace.manifest["steps_recorded"] == 2


def test_refuses_newer_schema_and_corruption(tmp_path: Path) -> None:
    writer = TraceWriter(tmp_path / "c.trace", framework="torch", config={}, label="c")
    writer.append_step({"step": 1})
    writer.finish(complete=True)
    manifest = tmp_path / "c.trace" / "manifest.json"
    data = json.loads(manifest.read_text())
    data["schema_version"] = 99
    manifest.write_text(json.dumps(data))
    with pytest.raises(TraceError, match="schema version 99.*upgrade repro-audit"):
        Trace(tmp_path / "c.trace")
    data["schema_version"] = 1
    manifest.write_text(json.dumps(data))
    (tmp_path / "c.trace" / "steps.jsonl").write_text('{"step": 1}\n{"step": 2, "gr\n')
    with pytest.raises(TraceError, match="corrupt: steps.jsonl line 2"):
        Trace(tmp_path / "c.trace").steps
    manifest.write_text("{not json")
    with pytest.raises(TraceError, match="corrupt: cannot read manifest.json"):
        Trace(tmp_path / "c.trace")
    with pytest.raises(TraceError, match="trace not found"):
        Trace(tmp_path / "missing.trace")
