"""WatchMonitor end to end on the real engine (tiny seeded Llama, CPU): every request's summary reaches every
watcher with the scores its reply carried, and a watcher that never reads blocks nothing and stays bounded."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc.aio
import pytest
import pytest_asyncio
from steering_client import AsyncSteeringClient, ablate, pb, pb_grpc

from steering_server.engine import Engine
from steering_server.monitor_feed import MonitorFilter
from steering_server.service import SteeringServer
from steering_server.types import EngineLimits

from .helpers import serving, tiny_llama_engine, wait_until

pytestmark = pytest.mark.asyncio(loop_scope="module")

LIMITS = EngineLimits(max_new_tokens=64, max_prompt_tokens=256, max_queued=256, max_variants=4)
PROMPTS = [f"Request {i}: tell me about cats" for i in range(100)]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engine() -> AsyncIterator[Engine]:
    async with tiny_llama_engine(LIMITS, max_requests_per_batch=128) as eng:
        yield eng


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server(engine: Engine) -> AsyncIterator[SteeringServer]:
    async with serving(engine) as srv:
        yield srv


@pytest_asyncio.fixture(loop_scope="module")
async def client(server: SteeringServer) -> AsyncIterator[AsyncSteeringClient]:
    async with AsyncSteeringClient(f"127.0.0.1:{server.port}", timeout=120) as c:
        yield c


def _scores(monitor: object) -> list[tuple[object, ...]]:
    return [
        (s.direction, s.layer, s.prompt_score, s.response_score, s.max_score, s.calibrated, s.post_intervention)
        for s in monitor  # type: ignore[attr-defined]
    ]


async def _collect(events: AsyncIterator[pb.MonitorEvent], n: int, into: list[pb.MonitorEvent]) -> None:
    async for event in events:
        into.append(event)
        if len(into) == n:
            return


async def test_two_watchers_get_all_100_concurrent_requests_with_their_scores(
    client: AsyncSteeringClient, engine: Engine
) -> None:
    first: list[pb.MonitorEvent] = []
    second: list[pb.MonitorEvent] = []
    watchers = [
        asyncio.ensure_future(_collect(client.watch_monitor(buffer_size=200), len(PROMPTS), first)),
        asyncio.ensure_future(_collect(client.watch_monitor(buffer_size=200), len(PROMPTS), second)),
    ]
    await wait_until(lambda: engine.monitor_feed.watchers == 2, "both watchers subscribed")
    replies = await asyncio.gather(
        *(client.generate(p, max_new_tokens=6, seed=i, temperature=1.0) for i, p in enumerate(PROMPTS))
    )
    await asyncio.wait_for(asyncio.gather(*watchers), 120)
    by_id = {r.request_id: r for r in replies}
    assert len(by_id) == len(PROMPTS)
    for events in (first, second):
        assert sorted(e.request_id for e in events) == sorted(by_id)
        for e in events:
            reply = by_id[e.request_id]
            assert _scores(e.monitor) == _scores(reply.monitor)
            assert (e.rpc, e.front_end, e.dropped, e.stop_reason) == ("Generate", "grpc", 0, reply.stop_reason)
            assert e.usage.completion_tokens == len(reply.token_ids)
    # Different requests really had different scores (the test compares something).
    assert len({e.monitor[0].prompt_score for e in first}) > 50
    assert sum(e.monitor[0].HasField("max_score") for e in first) > 50  # and generated-token scores, mostly
    await wait_until(lambda: engine.monitor_feed.watchers == 0, "watchers unsubscribed")


async def test_a_watcher_that_never_reads_does_not_block_generation(
    client: AsyncSteeringClient, engine: Engine, server: SteeringServer
) -> None:
    stuck = engine.watch_monitor(MonitorFilter(buffer=8))
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    never_read = pb_grpc.SteeringServiceStub(channel).WatchMonitor(pb.WatchMonitorRequest(buffer_size=4))
    try:
        await wait_until(lambda: engine.monitor_feed.watchers == 2, "both stuck watchers subscribed")
        replies = await asyncio.wait_for(
            asyncio.gather(*(client.generate(p, max_new_tokens=6, seed=i) for i, p in enumerate(PROMPTS))), 120
        )
        assert all(r.token_ids for r in replies)
        await wait_until(lambda: stuck.dropped_total == len(PROMPTS) - 8, "drops counted")
        assert len(stuck) == 8
        assert all(len(sub) <= sub.capacity for sub in engine.monitor_feed._watchers)
        _, dropped = await asyncio.wait_for(stuck.next(), 5)
        assert dropped == len(PROMPTS) - 8
    finally:
        stuck.close()
        never_read.cancel()
        await channel.close()
    await wait_until(lambda: engine.monitor_feed.watchers == 0, "unsubscribed")


async def test_compare_score_and_policy_on_the_real_engine(client: AsyncSteeringClient, engine: Engine) -> None:
    got: list[pb.MonitorEvent] = []
    task = asyncio.ensure_future(_collect(client.watch_monitor(directions=["misalignment"]), 5, got))
    await wait_until(lambda: engine.monitor_feed.watchers == 1, "subscribed")
    compared = await client.compare("Tell me about cats", max_new_tokens=8, seed=3)
    generated = await client.generate("Tell me about cats", max_new_tokens=8, seed=3)
    scored = await client.score("Tell me about cats", response_token_ids=list(generated.token_ids))
    await client.set_steering([ablate("misalignment")])
    try:
        by_policy = await client.generate("Hello", max_new_tokens=4)
    finally:
        await client.set_steering([])
    await asyncio.wait_for(task, 60)
    # Compare: one event per variant, named, each with that variant's own scores and steering.
    assert [(e.rpc, e.variant) for e in got[:2]] == [("Compare", v.name) for v in compared.variants]
    for e, v in zip(got[:2], compared.variants, strict=True):
        assert e.request_id == v.result.request_id and _scores(e.monitor) == _scores(v.result.monitor)
    assert not got[0].steering and [t.mode for t in got[1].steering] == [pb.ABLATE]
    # Score's event carries the scores Score returned, which agree with Generate's for the same tokens.
    assert (got[2].rpc, got[2].request_id) == ("Generate", generated.request_id)
    assert got[3].rpc == "Score" and _scores(got[3].monitor) == _scores(scored.monitor)
    # Score's one prefill over prompt + response and Generate's prompt-only prefill agree to fp32 rounding (the
    # documented 1e-4 relative: matmuls over different sequence lengths round differently on some CPUs).
    assert got[3].monitor[0].prompt_score == pytest.approx(generated.monitor[0].prompt_score, rel=1e-4)
    assert got[3].usage.completion_tokens == len(generated.token_ids)
    # The policy's terms ran on a request that brought none: the event says so.
    assert got[4].request_id == by_policy.request_id
    assert got[4].policy_applied and not got[4].policy_enforced
    assert [(t.direction, t.mode) for t in got[4].steering] == [("misalignment", pb.ABLATE)]


async def test_alerts_of_the_policy_reach_the_feed(client: AsyncSteeringClient, engine: Engine) -> None:
    rule = pb.AlertRule(direction="misalignment", threshold=-1000.0, scope=pb.PROMPT_SCORE, action=pb.RECORD)
    await client.set_steering(alerts=[rule])
    try:
        events = client.watch_monitor(alerts_only=True)
        first = asyncio.ensure_future(events.__anext__())
        await wait_until(lambda: engine.monitor_feed.watchers == 1, "subscribed")
        reply = await client.generate("Tell me about cats", max_new_tokens=4)
        event = await asyncio.wait_for(first, 30)
        await events.aclose()
    finally:
        await client.set_steering()
    assert reply.alerts and event.request_id == reply.request_id
    assert list(event.alerts) == list(reply.alerts)
    assert event.alerts[0].score == reply.monitor[0].prompt_score
