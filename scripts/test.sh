#!/usr/bin/env bash
# Set up, type-check and run the test suite. Browser tests need Debian's chromium (skipped when it is absent).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
python -m mypy  # the files and settings are in pyproject.toml
python -m pytest -q -n 2 "$@"
