#!/usr/bin/env bash
# The main job: run the baseline and the zero-weighted-entropy fixture configs in two separate processes,
# compare them, explain the first divergence and its causes, and write the self-contained HTML report.
# Exit code 1 means "the runs diverged", which is what this demo shows; anything else is a failure.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
mkdir -p out
status=0
repro-audit diff fixtures/configs/torch/baseline.yaml fixtures/configs/torch/zero_entropy_loss.yaml \
    --html out/report.html --json out/report.json || status=$?
if [ "$status" -ne 1 ]; then
    echo "demo: expected the runs to diverge (exit 1), got exit $status" >&2
    exit 1
fi
echo "demo: open out/report.html"
