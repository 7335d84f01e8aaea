#!/usr/bin/env bash
# The main job, as far as it has landed: record two fixture configs in separate processes and summarise
# them (the zero-weighted entropy term's NaN, traced to its op, module and term). The differ and its HTML
# report come next (issue 3).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
mkdir -p out
repro-audit record fixtures/configs/torch/baseline.yaml -o out/baseline.trace
repro-audit record fixtures/configs/torch/zero_entropy_loss.yaml -o out/zero_entropy_loss.trace
