"""The update part of the recipe protocol (micro-batches, GradScaler, clipping, before_optimizer_step),
recorded and compared like the rest; torch.compile refused with one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from repro_audit.audit.config import load_config
from repro_audit.audit.diff import compare_traces
from repro_audit.audit.executors.local import record_all
from repro_audit.audit.trace import Trace


def test_update_settings_are_recorded_and_a_changed_one_is_a_hyperparameter_change(write_config, tmp_path: Path) -> None:
    configs = {
        "plain": write_config("plain", recipe="update_recipes:build", steps=2),
        "again": write_config("again", recipe="update_recipes:build", steps=2),
        "scaled": write_config("scaled", recipe="update_recipes:build", steps=2, params={"hook_scale": 0.5}),
        "single": write_config("single", recipe="update_recipes:build", steps=2, params={"micro_batches": 1}),
    }
    jobs = [(load_config(path), tmp_path / f"{name}.trace") for name, path in configs.items()]
    results = record_all(jobs)
    assert all(result.ok for result in results), [result.failure_line() for result in results]
    plain, again, scaled, single = (Trace(path) for _, path in jobs)

    record = plain.steps[0]
    assert record["micro_batches"] == 2 and len(record["loss_terms"]["ce"]["micro_values"]) == 2
    update = record["update"]
    assert update["micro_batches"] == 2 and update["clip_grad_norm"] == 0.5 and update["grad_scale"] == 256.0
    assert update["hook"] == {"gradient_multiplier": 1.0} and isinstance(update["grad_norm"], float)
    assert set(record["batch"]["tensors"]) == {"0.0", "0.1", "1.0", "1.1"}, "both micro-batches fingerprinted"
    assert compare_traces(plain, again).identical

    comparison = compare_traces(plain, scaled, ignore=["config"])
    changes = [d for d in comparison.walk() if d.cause == "hyperparameter_change"]
    assert changes and changes[0].step == 1 and "hook" in changes[0].explanation
    assert not [d for d in comparison.walk() if d.cause == "nondeterminism"]

    comparison = compare_traces(plain, single, ignore=["config"])
    named = [d for d in comparison.walk() if d.cause == "hyperparameter_change"]
    assert named and "micro_batches" in named[0].explanation


def test_a_compiled_model_is_refused_in_one_line(write_config) -> None:
    config = write_config("compiled", recipe="update_recipes:compiled", steps=1)
    completed = subprocess.run([sys.executable, "-m", "repro_audit.audit.cli_main", "record", str(config), "-o",
                                str(config.with_suffix(".trace")), "-q"], capture_output=True, text=True)
    assert completed.returncode == 2
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1 and "torch.compile" in lines[0] and "not supported" in lines[0], completed.stderr
