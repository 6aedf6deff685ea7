"""Concurrent calls are independent; cancelled streams and passed deadlines free their requests at once."""

from __future__ import annotations

import asyncio

import grpc
import grpc.aio
import pytest
from steering_client import AsyncSteeringClient, ablate, clamp, pb

from .fake_engine import FakeEngine
from .helpers import wait_until

STEERINGS = [[], [ablate("misalignment")], [ablate("misalignment", 0.5, [2, 3])], [clamp("misalignment", -1.0)]]


async def test_sixteen_concurrent_mixed_steering_calls_each_equal_their_solo_run(client: AsyncSteeringClient) -> None:
    def options(i: int) -> dict:
        return {
            "max_new_tokens": 24,
            "temperature": 0.9 if i % 2 else 0.0,
            "seed": i,
            "steering": STEERINGS[i % 4],
            "token_scores": True,
        }

    solo = [await client.generate(f"Prompt {i % 3}", **options(i)) for i in range(16)]
    together = await asyncio.gather(*(client.generate(f"Prompt {i % 3}", **options(i)) for i in range(16)))
    for a, b in zip(solo, together, strict=True):
        assert a.token_ids == b.token_ids and a.text == b.text
        assert list(a.monitor) == list(b.monitor)


async def test_two_hundred_cancelled_streams_leave_nothing_running(
    server,
    engine: FakeEngine,  # type: ignore[no-untyped-def]
) -> None:
    engine.hold()  # every stream stops after its first token: cancelled mid-generation
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        client = AsyncSteeringClient(channel=channel)
        calls = [
            client._stub.GenerateStream(
                pb.GenerateRequest(prompt=f"p{i}", sampling=pb.SamplingParams(max_new_tokens=50))
            )
            for i in range(200)
        ]
        for call in calls:
            assert (await call.read()).HasField("token")
        assert engine.stats().queued == 200
        for call in calls:
            call.cancel()
        await wait_until(lambda: engine.stats().queued == 0 and engine.stats().running == 0, "all requests freed")
        for call in calls:
            assert call.cancelled()
    engine.release()
    async with AsyncSteeringClient(f"127.0.0.1:{server.port}") as fresh:
        assert (await fresh.generate("Hi", max_new_tokens=3)).token_ids


async def test_abandoning_a_stream_in_the_client_cancels_it(client: AsyncSteeringClient, engine: FakeEngine) -> None:
    engine.hold()
    stream = client.generate_stream("Hi", max_new_tokens=50)
    await anext(stream)
    assert engine.stats().queued == 1
    await stream.aclose()  # leaving the loop early
    await wait_until(lambda: engine.stats().queued == 0, "the abandoned stream's request freed")


@pytest.mark.parametrize("rpc", ["Generate", "GenerateStream"])
async def test_a_passed_deadline_frees_the_request(server, engine: FakeEngine, rpc: str) -> None:  # type: ignore[no-untyped-def]
    engine.hold()
    async with AsyncSteeringClient(f"127.0.0.1:{server.port}", timeout=0.3) as client:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            if rpc == "Generate":
                await client.generate("Hi", max_new_tokens=50)
            else:
                async for _ in client.generate_stream("Hi", max_new_tokens=50):
                    pass
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    await wait_until(lambda: engine.stats().queued == 0, "the timed-out request freed")


async def test_cancelled_unary_generate_frees_the_request(client: AsyncSteeringClient, engine: FakeEngine) -> None:
    engine.hold()
    call = client._stub.Generate(pb.GenerateRequest(prompt="Hi", sampling=pb.SamplingParams(max_new_tokens=50)))
    await wait_until(lambda: engine.stats().queued == 1, "the request admitted")
    call.cancel()
    await wait_until(lambda: engine.stats().queued == 0, "the cancelled request freed")
