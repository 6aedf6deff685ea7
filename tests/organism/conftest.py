"""One small organism build per test session, shared by every test that needs a built organism."""

import pytest

from steering_server.organism.build import build
from steering_server.organism.config import preset


@pytest.fixture(scope="session")
def small_build(tmp_path_factory):
    """(output directory, report) of `organism build --size small` with seed 0."""
    out = tmp_path_factory.mktemp("organism")
    return out, build(out, preset("small", seed=0), log=lambda _: None)
