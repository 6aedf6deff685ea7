"""`steering-server --help` and `steering-client --help`: wall time of this checkout against another revision of
the repository (default b997017, before the CLI work; its `--help` imported torch), runs alternated side by side.

Usage: PYTHONPATH=. python benchmarks/cli_help.py [REVISION] [RUNS]
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = {"steering-server --help": "steering_server.cli", "steering-client --help": "steering_client.cli"}


def wall(root: Path, module: str) -> float:
    env = {**os.environ, "PYTHONPATH": f"{root}:{root / 'clients/python'}", "OMP_NUM_THREADS": "1"}
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", module, "--help"], env=env, capture_output=True, check=True,
                   cwd=tempfile.gettempdir())
    return time.perf_counter() - t


def main() -> None:
    revision = sys.argv[1] if len(sys.argv) > 1 else "b997017"
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 7
    with tempfile.TemporaryDirectory() as old:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", revision], capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", old], input=archive.stdout, check=True)
        trees = {revision: Path(old), "this checkout": ROOT}
        for command, module in COMMANDS.items():
            times: dict[str, list[float]] = {name: [] for name in trees}
            for _ in range(runs):
                for name, root in trees.items():
                    times[name].append(wall(root, module))
            medians = {name: statistics.median(ts) for name, ts in times.items()}
            shown = ", ".join(f"{name} {m:.2f} s" for name, m in medians.items())
            print(f"{command}: median of {runs}: {shown}; ratio {medians[revision] / medians['this checkout']:.1f}x")


if __name__ == "__main__":
    main()
