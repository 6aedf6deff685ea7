"""A SteeringServer on 127.0.0.1 (ephemeral port) over the fake engine, and clients for it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import grpc.aio
import pytest
from prometheus_client import CollectorRegistry
from steering_client import AsyncSteeringClient, pb_grpc

from steering_server.service import SteeringServer

from .fake_engine import FakeEngine
from .helpers import serving


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine()


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
async def server(engine: FakeEngine, registry: CollectorRegistry) -> AsyncIterator[SteeringServer]:
    async with serving(engine, metrics_registry=registry) as srv:
        yield srv


@pytest.fixture
async def channel(server: SteeringServer) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        yield ch


@pytest.fixture
def stub(channel: grpc.aio.Channel) -> pb_grpc.SteeringServiceStub:
    return pb_grpc.SteeringServiceStub(channel)


@pytest.fixture
async def client(server: SteeringServer) -> AsyncIterator[AsyncSteeringClient]:
    async with AsyncSteeringClient(f"127.0.0.1:{server.port}", timeout=30) as c:
        yield c
