#!/usr/bin/env bash
# The main job: record two fixture configs in separate processes, diff them, write the HTML report.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
mkdir -p out
set +e
repro-audit diff fixtures/configs/torch/baseline.yaml fixtures/configs/torch/zero_entropy_loss.yaml \
  --html out/report.html --json out/report.json --keep out/traces
status=$?
set -e
# diff exits 1 when the runs diverge, which is what this demo shows; 2 would be an error.
if [ "$status" -eq 2 ]; then exit 2; fi
echo "HTML report: out/report.html"
