#!/usr/bin/env bash
# Install steering-server into ./.venv. Usage: bash scripts/setup.sh [dev]
# torch: kept as is when the Python already has one (a GPU machine's CUDA build); otherwise the CPU build
# when there is no NVIDIA GPU (an unpinned torch would pull gigabytes of CUDA wheels), else the default build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  if "$PY" -c 'import torch' 2>/dev/null; then
    "$PY" -m venv --system-site-packages .venv   # reuse the machine's torch
  else
    "$PY" -m venv .venv
  fi
fi
pip() { .venv/bin/python -m pip "$@"; }
pip install -q --upgrade pip 2>&1 | grep -v 'WARNING: Location' || true
if ! .venv/bin/python -c 'import torch' 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    pip install -q torch 2>&1 | grep -v 'WARNING: Location' || true
  else
    pip install -q torch==2.13.0 2>&1 | grep -v 'WARNING: Location' || true
  fi
fi
extra=""
[ "${1:-}" = "dev" ] && extra="[dev]"
pip install -q -e ".${extra}" -e ./clients/python 2>&1 | grep -v 'WARNING: Location' || true
.venv/bin/python -c 'import torch, transformers, steering_server; print("steering-server ready: torch", torch.__version__, "transformers", transformers.__version__)'
