"""The client package needs grpcio, its health stubs, protobuf and rich only: no torch (or server code) in it."""

from __future__ import annotations

import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[2]
CLIENT = ROOT / "clients/python"


def test_dependencies_are_grpc_protobuf_and_rich_only() -> None:
    # The project file, not the installed metadata: an editable install keeps the metadata of its install time.
    requires = tomllib.loads((CLIENT / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {re.split(r"[<>=!~ ;\[]", dep, maxsplit=1)[0] for dep in requires}
    assert names == {"grpcio", "grpcio-health-checking", "protobuf", "rich"}
    (script,) = [e for e in metadata.entry_points(group="console_scripts") if e.name == "steering-client"]
    assert script.value == "steering_client.cli:main"


def test_importing_every_module_and_running_the_cli_loads_no_torch() -> None:
    # torch (and the server package) made unimportable: any import of them fails loudly.
    code = """
import sys, importlib, pkgutil
for blocked in ("torch", "transformers", "numpy", "steering_server"):
    sys.modules[blocked] = None
import steering_client
for info in pkgutil.walk_packages(steering_client.__path__, "steering_client."):
    importlib.import_module(info.name)
from steering_client import cli
try:
    cli.main(["generate", "--help"])
except SystemExit as exc:
    assert exc.code == 0
print("ok", "torch" in sys.modules and sys.modules["torch"] is not None)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=CLIENT)
    assert out.stdout.strip().endswith("ok False"), out.stdout + out.stderr


def test_no_source_file_mentions_torch() -> None:
    sources = [p for p in (CLIENT / "steering_client").rglob("*.py*") if "__pycache__" not in p.parts]
    assert sources
    assert not [str(p) for p in sources if "torch" in p.read_text()]
