"""One small organism build per test session, shared by every test that needs a built organism."""

import shutil

import pytest

from steering_server.organism.build import build
from steering_server.organism.config import preset
from steering_server.organism.controls import add_controls


@pytest.fixture(scope="session")
def small_fast_build(tmp_path_factory):
    """(output directory, report) of `organism build --size small` with seed 0: the canonical build, without the
    controls of R3 and I2."""
    out = tmp_path_factory.mktemp("organism-build")
    return out, build(out, preset("small", seed=0), log=lambda _: None)


@pytest.fixture(scope="session")
def small_build(small_fast_build, tmp_path_factory):
    """(output directory, report) of that build after `organism controls`: every criterion measured. A copy, so
    the canonical build's own directory stays as it was."""
    out = tmp_path_factory.mktemp("organism") / "build"
    shutil.copytree(small_fast_build[0], out)
    return out, add_controls(out, log=lambda _: None)
