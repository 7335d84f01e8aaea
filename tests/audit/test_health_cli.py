"""`repro-audit health` through click and as a real process: exit 0 healthy, 1 flagged, 2 bad input.

The end-to-end cases need the step recorder to write `health` (repro_audit.probes.torch.health.step_health wired into
end_step); until it does they are skipped, and tests/audit/test_health_rules.py covers the same cases
in-process.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from repro_audit.audit.cli import cli
from repro_audit.audit.cli_health import health_command  # noqa: F401  (registers `health` until repro_audit.audit.cli imports it)

ROOT = Path(__file__).resolve().parents[2]
HEALTH = ROOT / "fixtures" / "configs" / "torch" / "health"
BASELINE = HEALTH.parent / "baseline.yaml"
WIRED = "step_health" in (ROOT / "probes" / "torch" / "step_recorder.py").read_text(encoding="utf-8") or \
    "step_health" in (ROOT / "probes" / "torch" / "recorder.py").read_text(encoding="utf-8")
needs_wiring = pytest.mark.skipif(not WIRED, reason="the step recorder does not write `health` yet")


def run_cli(*args: str) -> tuple[int, str]:
    # Not standalone: the group's own main maps the returned exit code and our errors, as in a real process.
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.output  # click >= 8.2 mixes stderr into output


def one_line(output: str) -> str:
    lines = [line for line in output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in output, output
    return lines[0]


# -- every fixture case, end to end ----------------------------------------------------------------------


@needs_wiring
@pytest.mark.parametrize("case, title, layer", [
    ("saturated_tanh", "saturated activations:", "1 (Tanh)  step 1:"),
    ("dead_relu", "dead units:", "1 (ReLU)  step 1: 64 of 64 units (100%) never positive"),
    ("exploding_gradients", "exploding gradients:", "0 (Linear)  step 1: gradient norm"),
    ("wrong_initial_loss", "initial loss far from -log(1/C):", "ce  step 1: step-1 loss"),
    ("leaking_loss", "memory growing every step:", "step 3:"),
])
def test_each_problem_is_flagged(case: str, title: str, layer: str) -> None:
    code, output = run_cli("health", str(HEALTH / f"{case}.yaml"), "-q")
    assert code == 1, output
    assert "anomal" in output.splitlines()[0] and f"  {title}" in output and layer in output


@needs_wiring
def test_baseline_and_control_are_healthy(tmp_path: Path) -> None:
    code, output = run_cli("health", str(BASELINE), "--steps", "6", "-q", "--json", str(tmp_path / "h.json"))
    assert code == 0, output
    assert output.splitlines()[0] == "health of 'baseline' (6 steps): healthy"
    written = json.loads((tmp_path / "h.json").read_text())
    assert written["healthy"] is True and written["findings"] == [] and written["thresholds"]["dead_units"] == 0.25
    code, output = run_cli("health", str(HEALTH / "healthy_mlp.yaml"), "-q")
    assert code == 0, output


@needs_wiring
def test_thresholds_and_overrides_are_options(tmp_path: Path) -> None:
    config = str(HEALTH / "dead_relu.yaml")
    assert run_cli("health", config, "-q", "--dead-units", "1.0", "--min-grad-norm", "0",
                   "--min-grad-ratio", "0")[0] == 0
    assert run_cli("health", config, "-q", "--set", "params.first_bias=0.0")[0] == 0
    code, output = run_cli("health", config, "-q", "--keep", str(tmp_path / "kept"))
    assert code == 1 and (tmp_path / "kept" / "dead_relu.trace" / "manifest.json").exists()
    code, again = run_cli("health", str(tmp_path / "kept" / "dead_relu.trace"))  # a trace folder works too
    assert code == 1 and again == output


@needs_wiring
def test_real_process_flags_and_exits_1() -> None:
    run = subprocess.run([sys.executable, "-m", "repro_audit.audit.cli_main", "health", str(HEALTH / "wrong_initial_loss.yaml"),
                          "-q"], capture_output=True, text=True, cwd=ROOT, check=False)
    assert run.returncode == 1, run.stderr
    assert max(map(len, run.stdout.splitlines())) <= 100, "piped: wrapped to 100 columns"
    words = " ".join(run.stdout.split())
    assert "vs -log(1/10) = 2.3" in words and "inferred from aten::nll_loss_forward" in words


# -- bad input: one line, exit 2 --------------------------------------------------------------------------


def test_missing_config_and_bad_options(tmp_path: Path) -> None:
    code, output = run_cli("health", str(tmp_path / "nope.yaml"))
    assert code == 2 and "config file not found" in one_line(output)
    code, output = run_cli("health", str(HEALTH / "dead_relu.yaml"), "--dead-units", "2")
    assert code == 2 and "'--dead-units': 2.0 is not in the range" in one_line(output)
    code, output = run_cli("health", str(HEALTH / "dead_relu.yaml"), "--set", "nokey")
    assert code == 2 and "override must be key.path=value" in one_line(output)


def test_a_crashing_recipe_is_one_line(write_config) -> None:  # type: ignore[no-untyped-def]
    config = write_config("crash", recipe="tiny_mlp:build_crashing", steps=3)
    code, output = run_cli("health", str(config), "-q")
    assert code == 2 and "synthetic failure at step 2" in one_line(output) and "partial trace" not in output


def test_a_trace_without_health_is_one_line(write_config, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    config = write_config("plain", recipe="tiny_mlp:build", steps=2, capture={"health": False})
    trace = tmp_path / "plain.trace"
    assert run_cli("record", str(config), "-o", str(trace), "-q")[0] == 0
    code, output = run_cli("health", str(trace))
    assert code == 2 and "has no health statistics" in one_line(output)
    code, output = run_cli("health", str(trace), "--steps", "3")
    assert code == 2 and "--steps and --set apply to a config only" in one_line(output)


def test_a_health_record_that_does_not_match_its_summaries_is_one_line(write_config,  # type: ignore[no-untyped-def]
                                                                         tmp_path: Path) -> None:
    """The reader completes the compact health from the step's summaries; a record pointing past them
    is a corrupt trace, not a traceback."""
    config = write_config("small", recipe="tiny_mlp:build", steps=2)
    trace = tmp_path / "small.trace"
    assert run_cli("record", str(config), "-o", str(trace), "-q")[0] == 0
    steps = trace / "steps.jsonl"
    records = [json.loads(line) for line in steps.read_text().splitlines()]
    assert records[1]["health"]["described_outputs"] and "layers" not in records[1]["health"]  # written compact
    assert run_cli("health", str(trace), "-q")[0] in (0, 1)  # and read whole
    records[1]["health"]["described_outputs"].append(10_000)
    steps.write_text("".join(json.dumps(record) + "\n" for record in records))
    code, output = run_cli("health", str(trace), "-q")
    assert code == 2 and "steps.jsonl line 2: its health record does not match its summaries" in one_line(output)


def test_help_in_a_real_process() -> None:
    run = subprocess.run([sys.executable, "-c", "import repro_audit.audit.cli_health; from repro_audit.audit.cli import main; main()",
                          "health", "--help"], capture_output=True, text=True, cwd=ROOT, check=False)
    assert run.returncode == 0 and "--max-grad-norm" in run.stdout and "Examples:" in run.stdout
    # The thresholds come last, under their own heading, after the command's own options.
    help_text = run.stdout
    assert help_text.index("--json") < help_text.index("--quiet") < help_text.index("\nHealth thresholds:\n") \
        < help_text.index("--max-grad-norm")
