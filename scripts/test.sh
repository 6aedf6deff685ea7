#!/usr/bin/env bash
# Install (with the dev tools) and run every check: ruff, mypy, then the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev
# The TLS tests make their certificates with the openssl command (Debian package `openssl`).
if ! command -v openssl >/dev/null 2>&1; then
  apt-get update -qq && apt-get install -y -qq openssl >/dev/null
fi
.venv/bin/ruff check .
.venv/bin/mypy
.venv/bin/python -m pytest -q tests
