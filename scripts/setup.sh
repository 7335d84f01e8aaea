#!/usr/bin/env bash
# Create .venv and install repro-audit with both frameworks, scipy, Ray and the test tools.
# torch is installed first and pinned: an unpinned torch pulls gigabytes of CUDA packages.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
python -m pip install --quiet "torch==2.13.0"
python -m pip install --quiet -e ".[all,test]"
# Optional extras: their tests are skipped, with the reason, where they cannot be installed.
python -m pip install --quiet -e ".[ray]" || echo "setup: ray could not be installed; the Ray executor's tests will be skipped" >&2
python -m pip install --quiet -e ".[trainers]" || echo "setup: the trainers extra could not be installed; the Trainer and Lightning callback tests will be skipped" >&2
# RETURNN is optional: where it cannot be installed, setup goes on and tests/returnn skip, saying why.
python -m pip install --quiet -e ".[returnn]" || echo "setup: RETURNN could not be installed; tests/returnn will be skipped" >&2
