"""Client tests run against the real service over the fake engine (see tests/service)."""

from ..service.conftest import client, engine, registry, server  # noqa: F401
