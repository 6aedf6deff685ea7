"""The Dockerfile installs with the README's command, and that command (scripts/setup.sh) says what it does.
(Docker itself cannot run on the test machines: the image build is not exercised here.)"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_dockerfile_installs_with_the_readme_command() -> None:
    readme_start = (ROOT / "README.md").read_text().split("## Start", 1)[1].split("```bash", 1)[1].split("```")[0]
    (install,) = [c.strip() for c in readme_start.split("&&") if "setup.sh" in c]
    runs = re.findall(r"^RUN (.+)$", (ROOT / "Dockerfile").read_text(), flags=re.MULTILINE)
    assert runs == [install] == ["bash scripts/setup.sh"]
    copied = " ".join(re.findall(r"^COPY (.+)$", (ROOT / "Dockerfile").read_text(), flags=re.MULTILINE))
    for needed in ("pyproject.toml", "scripts", "clients", "steering_server"):  # what setup.sh installs from
        assert needed in copied


def test_setup_announces_each_step(tmp_path: Path) -> None:
    """setup.sh in a copy of the scripts, with a stand-in .venv python: pip calls succeed without installing
    anything, `-c` runs this interpreter (torch present: kept)."""
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    shutil.copy2(ROOT / "scripts/setup.sh", repo / "scripts/setup.sh")
    python = repo / ".venv/bin/python"
    python.parent.mkdir(parents=True)
    python.write_text(
        "#!/bin/sh\n"
        f'echo "$@" >> {tmp_path}/calls\n'
        'case "$1" in -m) exit 0;; --version) echo "Python 3"; exit 0;; esac\n'
        f'exec {sys.executable} "$@"\n'
    )
    python.chmod(python.stat().st_mode | stat.S_IEXEC)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(["bash", str(repo / "scripts/setup.sh"), "dev"], capture_output=True, text=True,
                         env=env, check=True, timeout=300).stdout
    steps = re.findall(r"^\[setup\] (\d)/5 (.+) \(\d+s so far\)$", out, flags=re.MULTILINE)
    assert [n for n, _ in steps] == ["1", "2", "3", "4", "5"], out
    assert steps[2][1].startswith("keeping torch") and "steering-server[dev]" in steps[3][1]
    assert "steering-server ready: torch" in out and out.rstrip().splitlines()[-1].startswith("[setup] done in")
    calls = (tmp_path / "calls").read_text()
    assert "-m pip install -q -e .[dev] -e ./clients/python" in calls


def test_setup_stops_at_a_failed_install_and_shows_pips_error(tmp_path: Path) -> None:
    """A pip step that fails ends the script there, non-zero, with pip's error (and not the 'WARNING: Location'
    noise): swallowed, it would only show up later as an ImportError."""
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    shutil.copy2(ROOT / "scripts/setup.sh", repo / "scripts/setup.sh")
    python = repo / ".venv/bin/python"
    python.parent.mkdir(parents=True)
    python.write_text(
        "#!/bin/sh\n"
        'case "$*" in *"-e ."*) echo "WARNING: Location noise" >&2; '
        'echo "ERROR: No matching distribution found for grpcio" >&2; exit 3;; esac\n'
        'case "$1" in -m) exit 0;; --version) echo "Python 3"; exit 0;; esac\n'
        f'exec {sys.executable} "$@"\n'
    )
    python.chmod(python.stat().st_mode | stat.S_IEXEC)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run(["bash", str(repo / "scripts/setup.sh")], capture_output=True, text=True, env=env,
                         timeout=300)
    assert run.returncode == 3, run
    assert "ERROR: No matching distribution found for grpcio" in run.stderr and "WARNING: Location" not in run.stderr
    assert "steering-server ready" not in run.stdout and "[setup] done" not in run.stdout
    assert "[setup] 4/5 installing steering-server" in run.stdout
