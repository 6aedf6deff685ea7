#!/usr/bin/env bash
# Install (with the dev tools) and run every check: ruff, mypy, then the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev
# The TLS tests make their certificates with the openssl command (Debian package `openssl`).
# The web page's test drives Debian's chromium with Playwright (tests/http/test_page.py; never `playwright install`).
missing=""
command -v openssl >/dev/null 2>&1 || missing="$missing openssl"
[ -x /usr/bin/chromium ] || missing="$missing chromium"
if [ -n "$missing" ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
fi
# The metrics tests check the page, the alert rules and their unit tests with promtool (Debian package `prometheus`).
if ! command -v promtool >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
.venv/bin/ruff check .
.venv/bin/mypy
.venv/bin/python -m pytest -q tests
