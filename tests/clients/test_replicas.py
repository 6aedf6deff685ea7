"""Several replicas behind client-side load balancing (deploy/README.md): round robin over every address, and a
replica whose health is not SERVING (loading, dead, draining) gets no calls."""

from __future__ import annotations

import asyncio

from grpc_health.v1 import health_pb2
from steering_client import SteeringClient
from steering_client.connect import Connection, open_channel

from steering_server.service import SERVICE_NAME

from ..service.fake_engine import FakeEngine
from ..service.helpers import serving


def _generate(target: str, n: int) -> None:
    channel = open_channel(Connection(target), balance=True)
    with SteeringClient(channel=channel, timeout=30) as client:
        for _ in range(n):
            client.generate("Hi", max_new_tokens=2)


async def test_round_robin_spreads_calls_and_skips_a_replica_that_is_not_serving() -> None:
    engines = [FakeEngine(), FakeEngine(), FakeEngine()]
    async with serving(engines[0]) as a, serving(engines[1]) as b, serving(engines[2]) as c:
        target = "ipv4:///" + ",".join(f"127.0.0.1:{s.port}" for s in (a, b, c))  # what dns:/// resolves to
        await asyncio.to_thread(_generate, target, 30)
        # Calls rotate over the replicas that are ready (the first ones go where a connection came up first).
        assert all(e.generated_tokens > 0 for e in engines) and sum(e.generated_tokens for e in engines) == 60

        await c.health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.NOT_SERVING)  # e.g. draining
        before = [e.generated_tokens for e in engines]
        await asyncio.to_thread(_generate, target, 30)
        added = [e.generated_tokens - x for e, x in zip(engines, before, strict=True)]
    assert added[2] == 0 and added[0] > 0 and added[1] > 0 and sum(added) == 60
