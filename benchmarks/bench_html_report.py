"""Size and load time of the HTML report for a model with 1,000 parameters over 20 steps.

    python benchmarks/bench_html_report.py [--rounds 5]

Builds the report the browser tests use (tests/reports/test_html.py::build_case, real traces written
through TraceWriter), opens it in headless Chromium and reports the median time to the load event. The
issue's target: under 5 MB and under 2 s.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _load(name: str) -> object:
    path = ROOT / "tests" / "reports" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"_repro_audit_tests_reports_{name}", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    browser, cases = _load("browser"), _load("test_html")
    from repro_audit.reports.html import write_html

    folder = Path(tempfile.mkdtemp(prefix="bench-html-"))
    case = cases.build_case(folder, parameters=1000, steps=20)  # type: ignore[attr-defined]
    report = write_html(folder / "big.html", case["comparison"], trace_a=case["trace_a"], trace_b=case["trace_b"],
                        check=case["check"])
    times = []
    for _ in range(args.rounds):
        with browser.open_report(report) as opened:  # type: ignore[attr-defined]
            times.append(opened.load_ms)
    print(f"report: {report.stat().st_size / 1e6:.2f} MB; load event: median {statistics.median(times):.0f} ms "
          f"over {args.rounds} loads (min {min(times):.0f}, max {max(times):.0f})")


if __name__ == "__main__":
    main()
