#!/usr/bin/env bash
# Install (with the dev tools) and run every check: ruff, mypy, then the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev
.venv/bin/ruff check .
.venv/bin/mypy
.venv/bin/python -m pytest -q tests
