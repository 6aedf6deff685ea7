"""The HTTP API over the fake engine (cheap, for errors and edges) and over the built-in organism (one engine for the
package, shared with a gRPC server, so HTTP answers can be compared with the gRPC ones)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
import pytest_asyncio
from prometheus_client import CollectorRegistry

from steering_server.config import EngineConfig
from steering_server.engine import Engine, start_engine
from steering_server.http import HttpServer
from steering_server.service import SteeringServer
from steering_server.service.auth import Access
from steering_server.service.metrics import Metrics
from steering_server.service.servicer import SteeringServicer

from ..service.fake_engine import FakeEngine
from ..service.helpers import serving


@dataclass
class Served:
    """An HTTP server (and, for the organism, the gRPC server) on one engine."""

    http: HttpServer
    grpc: SteeringServer | None
    engine: object
    registry: CollectorRegistry

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http.port}"


@pytest_asyncio.fixture(scope="package", loop_scope="package")
async def organism() -> AsyncIterator[Served]:
    engine: Engine = await start_engine(EngineConfig())  # the built-in model organism, red-teaming off
    registry = CollectorRegistry()
    try:
        async with serving(engine, metrics_registry=registry) as grpc_server:
            http = HttpServer(grpc_server.servicer, "127.0.0.1", 0, registry)
            await http.start()
            try:
                yield Served(http, grpc_server, engine, registry)
            finally:
                await http.stop(None)
    finally:
        await engine.shutdown()


@pytest.fixture
def fake() -> FakeEngine:
    return FakeEngine()


@pytest_asyncio.fixture
async def fake_served(fake: FakeEngine) -> AsyncIterator[Served]:
    registry = CollectorRegistry()
    servicer = SteeringServicer(fake, Metrics(registry), Access(open_admin=True))
    http = HttpServer(servicer, "127.0.0.1", 0, registry)
    await http.start()
    try:
        yield Served(http, None, fake, registry)
    finally:
        await http.stop(None)


@pytest_asyncio.fixture
async def fake_http(fake_served: Served) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=fake_served.url, timeout=60) as client:
        yield client
