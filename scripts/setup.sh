#!/usr/bin/env bash
# Install steering-server into ./.venv. Usage: bash scripts/setup.sh [dev]
# torch: kept as is when the Python already has one (a GPU machine's CUDA build); otherwise the CPU build
# when there is no NVIDIA GPU (an unpinned torch would pull gigabytes of CUDA wheels), else the default build.
# Each step is announced with its number and how long it took (pip itself runs quietly).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
STEPS=5
step=0
started=$SECONDS
say() { step=$((step + 1)); echo "[setup] ${step}/${STEPS} $* ($((SECONDS - started))s so far)"; }
pip() { .venv/bin/python -m pip "$@"; }
# Runs a step quietly, minus pip's harmless 'WARNING: Location' lines; a failing step stops the script with its
# exit status and its output shown (a swallowed pip error would only surface later as an ImportError).
quiet() {
  local out rc=0
  out=$("$@" 2>&1) || rc=$?
  if [ -n "$out" ]; then printf '%s\n' "$out" | grep -v 'WARNING: Location' >&2 || true; fi
  if [ "$rc" -ne 0 ]; then echo "[setup] failed (exit $rc): $*" >&2; exit "$rc"; fi
}

if [ ! -x .venv/bin/python ]; then
  if "$PY" -c 'import torch' 2>/dev/null; then
    say "creating .venv with $PY, reusing its torch (system site packages)"
    "$PY" -m venv --system-site-packages .venv   # reuse the machine's torch
  else
    say "creating .venv with $PY"
    "$PY" -m venv .venv
  fi
else
  say "reusing .venv ($(.venv/bin/python --version 2>&1))"
fi
say "upgrading pip"
quiet pip install -q --upgrade pip
if ! .venv/bin/python -c 'import torch' 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    say "installing torch for the NVIDIA GPU (the default CUDA build: a few GB, minutes)"
    quiet pip install -q torch
  else
    say "installing torch 2.13.0 (CPU build, no NVIDIA GPU found: about 200 MB)"
    quiet pip install -q torch==2.13.0
  fi
else
  say "keeping torch $(.venv/bin/python -c 'import torch; print(torch.__version__)')"
fi
extra=""
[ "${1:-}" = "dev" ] && extra="[dev]"
say "installing steering-server${extra} and steering-client (editable: transformers, grpc, ...)"
quiet pip install -q -e ".${extra}" -e ./clients/python
say "checking the install"
.venv/bin/python -c 'import torch, transformers, steering_server; print("steering-server ready: torch", torch.__version__, "transformers", transformers.__version__)'
echo "[setup] done in $((SECONDS - started))s: .venv/bin/steering-server serve, .venv/bin/steering-client --help"
