"""The benchmarks users run to compare the engine with its alternatives still run, end to end, at a tiny size.

They are not timed here (timing belongs to the benchmarks themselves, on a quiet machine); this only keeps them
working as the engine and the API change: each must finish and print the ratio lines its docs quote."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--hidden", "64", "--layers", "2", "--vocab", "300"]


def _run(script: str, *args: str) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'clients/python'}"}
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *TINY, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_peers_prints_every_alternative_and_the_targets_ratios() -> None:
    out = _run("peers.py", "--prompt-tokens", "8", "--new-tokens", "4", "--concurrency", "1", "3", "--rounds", "2")
    for name in ("engine unsteered", "engine steered+monitored", "generate + hooks", "nnsight"):
        assert name in out, out
    assert out.count("engine steered+monitored vs generate + hooks:") == 2, out  # one per concurrency


def test_serving_runs_both_servers_over_grpc_and_prints_the_ratio() -> None:
    out = _run("serving.py", "--requests", "4", "--rate", "50", "--max-prompt", "24", "--max-new", "8", "--rounds", "1")
    assert "engine / generate + hooks: throughput" in out, out
