#!/usr/bin/env bash
# Set up, type-check and run the test suite. Browser tests need Debian's chromium (skipped when it is absent).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
python -m mypy  # the files and settings are in pyproject.toml
# --dist loadscope: a module's tests share one worker, so its module-scoped recordings are made once.
python -m pytest -q -n 2 --dist loadscope "$@"
