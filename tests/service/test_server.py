"""Server assembly: health follows the engine, reflection lists the service, death and stop are clean."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client import CollectorRegistry, generate_latest
from steering_client import AsyncSteeringClient, pb

from steering_server.service import SERVICE_NAME, SteeringServer

from .fake_engine import FakeEngine
from .helpers import expect_status, wait_until

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def _health(channel: grpc.aio.Channel, service: str = "") -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    return (await stub.Check(health_pb2.HealthCheckRequest(service=service))).status


async def test_health_is_serving_for_the_server_and_the_service(channel: grpc.aio.Channel) -> None:
    assert await _health(channel) == SERVING
    assert await _health(channel, SERVICE_NAME) == SERVING


async def test_reflection_lists_the_service(channel: grpc.aio.Channel) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    responses = [r async for r in stub.ServerReflectionInfo(iter([request]))]
    names = {s.name for s in responses[0].list_services_response.service}
    assert SERVICE_NAME == "steering.v1.SteeringService" and SERVICE_NAME in names
    assert "grpc.health.v1.Health" in names
    # The service's file descriptor is served too (grpcurl describe needs it).
    file_request = reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE_NAME)
    (file_response,) = [r async for r in stub.ServerReflectionInfo(iter([file_request]))]
    assert file_response.file_descriptor_response.file_descriptor_proto


@pytest.fixture
async def bare_server() -> AsyncIterator[SteeringServer]:
    srv = SteeringServer("127.0.0.1", 0)
    await srv.start()
    try:
        yield srv
    finally:
        await srv.stop(None)


async def test_not_serving_and_unavailable_until_the_engine_is_attached(bare_server: SteeringServer) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{bare_server.port}") as channel:
        client = AsyncSteeringClient(channel=channel)
        assert await _health(channel) == NOT_SERVING
        assert await _health(channel, SERVICE_NAME) == NOT_SERVING
        await expect_status(client.generate("Hi"), grpc.StatusCode.UNAVAILABLE)
        await expect_status(client.model_info(), grpc.StatusCode.UNAVAILABLE)
        await bare_server.attach(FakeEngine())
        assert await _health(channel) == SERVING
        assert (await client.generate("Hi", max_new_tokens=3)).token_ids


async def test_an_unhealthy_engine_is_not_served_as_healthy(bare_server: SteeringServer) -> None:
    engine = FakeEngine()
    engine.kill()
    await bare_server.attach(engine)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{bare_server.port}") as channel:
        assert await _health(channel, SERVICE_NAME) == NOT_SERVING


async def test_engine_death_turns_health_off_and_fails_calls_unavailable(
    engine: FakeEngine, channel: grpc.aio.Channel, client: AsyncSteeringClient
) -> None:
    engine.hold()
    stream = client.generate_stream("Tell me a story", max_new_tokens=30, seed=1)
    first = await anext(stream)
    assert first.HasField("token")
    engine.kill()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await anext(stream)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "engine stopped" in (info.value.details() or "")
    assert not engine.healthy
    for _ in range(6000):  # the death callback hops through call_soon_threadsafe, then a task
        if await _health(channel) == NOT_SERVING:
            break
        await asyncio.sleep(0.01)
    assert await _health(channel) == NOT_SERVING
    assert await _health(channel, SERVICE_NAME) == NOT_SERVING
    await expect_status(client.generate("Hi"), grpc.StatusCode.UNAVAILABLE)
    await expect_status(client.score("Hi", response="x"), grpc.StatusCode.UNAVAILABLE)
    await expect_status(client.compare("Hi"), grpc.StatusCode.UNAVAILABLE)


async def test_graceful_stop_lets_running_calls_finish(engine: FakeEngine, server: SteeringServer) -> None:
    async with AsyncSteeringClient(f"127.0.0.1:{server.port}") as client:
        engine.hold()
        call = asyncio.ensure_future(client.generate("Tell me a story", max_new_tokens=20, seed=1))
        await wait_until(lambda: len(engine.active) == 1, "request admitted")
        stopping = asyncio.ensure_future(server.stop(grace=30))
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            # Issue 8 finding 10: during the grace period health answers NOT_SERVING (it used to be unreachable).
            health = health_pb2_grpc.HealthStub(channel)
            await wait_until(lambda: server.servicer.draining, "draining")
            reply = await health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME))
            assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
        async with AsyncSteeringClient(f"127.0.0.1:{server.port}") as other:
            for _ in range(6000):  # until the server refuses new calls: it is stopping
                try:
                    await other.model_info()
                except grpc.aio.AioRpcError as exc:  # refused, or cancelled if it raced the shutdown
                    assert exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
                    break
                await asyncio.sleep(0.01)
            else:
                raise AssertionError("the server kept accepting calls while stopping")
        assert not call.done()
        engine.release()
        reply = await call
        await stopping
        assert reply.stop_reason in (pb.MAX_TOKENS, pb.EOS_TOKEN)


async def test_metrics_count_requests_by_rpc_and_code(client: AsyncSteeringClient, registry: CollectorRegistry) -> None:
    await client.generate("Hi", max_new_tokens=4, seed=1)
    await expect_status(client.generate(""), grpc.StatusCode.INVALID_ARGUMENT)
    text = generate_latest(registry).decode()
    assert 'steering_requests_total{code="OK",rpc="Generate"} 1.0' in text
    assert 'steering_requests_total{code="INVALID_ARGUMENT",rpc="Generate"} 1.0' in text
    assert "steering_generated_tokens_total" in text
    assert "steering_engine_healthy 1.0" in text
    assert "steering_queued_requests 0.0" in text
