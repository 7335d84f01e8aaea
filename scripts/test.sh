#!/usr/bin/env bash
# Set up and run the test suite. Browser tests need Debian's chromium (skipped when it is absent).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
python -m pytest -q -n 2 "$@"
