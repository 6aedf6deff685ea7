"""WatchMonitor over gRPC on the fake engine (issue 10, item 3): every finished request reaches every watcher, a
stuck watcher neither slows generation nor grows memory, filters, the observer role, and unsubscribing."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator

import grpc
import grpc.aio
import pytest
from steering_client import AsyncSteeringClient, ablate, pb, pb_grpc

from steering_server.monitor_feed import MonitorFilter, request_event
from steering_server.service import SteeringServer
from steering_server.types import Alert, AlertAction, ConditionScope, DirectionScores, GenerationResult, StopReason

from .fake_engine import FakeEngine, make_direction
from .helpers import expect_status, serving, wait_until

PROMPTS = [f"prompt number {i} about cats" for i in range(100)]


async def _collect(events: AsyncIterator[pb.MonitorEvent], n: int, into: list[pb.MonitorEvent]) -> None:
    async for event in events:
        into.append(event)
        if len(into) == n:
            return


def _scores(monitor: object) -> list[tuple[object, ...]]:
    return [
        (s.direction, s.layer, s.prompt_score, s.response_score, s.max_score, s.calibrated, s.post_intervention)
        for s in monitor  # type: ignore[attr-defined]
    ]


async def test_two_watchers_get_every_request_with_its_own_scores(
    client: AsyncSteeringClient, engine: FakeEngine
) -> None:
    first: list[pb.MonitorEvent] = []
    second: list[pb.MonitorEvent] = []
    watchers = [
        asyncio.ensure_future(_collect(client.watch_monitor(), len(PROMPTS), first)),
        asyncio.ensure_future(_collect(client.watch_monitor(buffer_size=1000), len(PROMPTS), second)),
    ]
    await wait_until(lambda: engine.monitor_feed.watchers == 2, "both watchers subscribed")
    replies = await asyncio.gather(*(client.generate(p, max_new_tokens=12, seed=i) for i, p in enumerate(PROMPTS)))
    await asyncio.wait_for(asyncio.gather(*watchers), 60)
    by_id = {r.request_id: r for r in replies}
    assert len(by_id) == len(PROMPTS)
    for events in (first, second):
        assert {e.request_id for e in events} == set(by_id)
        for e in events:
            reply = by_id[e.request_id]
            assert _scores(e.monitor) == _scores(reply.monitor) and e.monitor[0].HasField("response_score")
            assert (e.rpc, e.front_end, e.variant, e.dropped) == ("Generate", "grpc", "", 0)
            assert e.stop_reason == reply.stop_reason
            assert (e.usage.prompt_tokens, e.usage.completion_tokens) == (
                reply.usage.prompt_tokens,
                reply.usage.completion_tokens,
            )
            assert not e.steering and not e.policy_applied and e.time > 0
    await wait_until(lambda: engine.monitor_feed.watchers == 0, "watchers unsubscribed once their calls ended")


async def test_a_watcher_that_never_reads_blocks_nothing_and_stays_bounded(
    client: AsyncSteeringClient, engine: FakeEngine, server: SteeringServer
) -> None:
    # In process: a subscription nobody reads. Over gRPC: a call whose client never reads its messages.
    stuck = engine.watch_monitor(MonitorFilter(buffer=8))
    published: list[str] = []
    engine.monitor_feed.add_sink(lambda e: published.append(e.request_id))
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    never_read = pb_grpc.SteeringServiceStub(channel).WatchMonitor(pb.WatchMonitorRequest(buffer_size=4))
    try:
        await wait_until(lambda: engine.monitor_feed.watchers == 2, "both stuck watchers subscribed")
        replies = await asyncio.wait_for(
            asyncio.gather(*(client.generate(p, max_new_tokens=12, seed=i) for i, p in enumerate(PROMPTS))), 60
        )
        assert len(replies) == len(PROMPTS)
        await wait_until(lambda: stuck.dropped_total == len(PROMPTS) - 8, "the stuck watcher's drops counted")
        assert len(stuck) == 8  # the bound: the 8 newest events, nothing more is held
        for sub in engine.monitor_feed._watchers:
            assert len(sub) <= sub.capacity
        # The drops are reported with the next event it reads; the events it kept are the newest.
        kept = [await asyncio.wait_for(stuck.next(), 5) for _ in range(8)]
        assert [d for _, d in kept] == [len(PROMPTS) - 8] + [0] * 7
        assert [e.request_id for e, _ in kept] == published[-8:]
    finally:
        stuck.close()
        never_read.cancel()
        await channel.close()
    await wait_until(lambda: engine.monitor_feed.watchers == 0, "both unsubscribed")


async def test_drops_are_reported_to_a_grpc_watcher_that_falls_behind(
    client: AsyncSteeringClient, engine: FakeEngine
) -> None:
    events = client.watch_monitor(buffer_size=3)
    first = asyncio.ensure_future(events.__anext__())
    await wait_until(lambda: engine.monitor_feed.watchers == 1, "subscribed")
    reply = await client.generate("one", max_new_tokens=2)
    assert (await asyncio.wait_for(first, 10)).request_id == reply.request_id
    # A burst published in one go (the event loop does not get to the watcher's writer in between): the buffer
    # keeps the newest 3, and the first of them says how many were lost before it.
    for i in range(50):
        engine.monitor_feed.publish(request_event(None, rpc="Score", request_id=f"burst{i}"))
    got = [await asyncio.wait_for(events.__anext__(), 10) for _ in range(3)]
    assert [(e.request_id, e.dropped) for e in got] == [("burst47", 47), ("burst48", 0), ("burst49", 0)]
    reply = await client.generate("after", max_new_tokens=2)
    after = await asyncio.wait_for(events.__anext__(), 10)
    assert (after.request_id, after.dropped) == (reply.request_id, 0)
    await events.aclose()
    await wait_until(lambda: engine.monitor_feed.watchers == 0, "unsubscribed")


async def test_filters_directions_min_score_and_alerts(client: AsyncSteeringClient, engine: FakeEngine) -> None:
    engine.registry.put(make_direction("other", seed=5))
    streams = {
        "all": client.watch_monitor(),
        "other": client.watch_monitor(directions=["other"]),
        "absent": client.watch_monitor(directions=["not-registered-yet"]),
        "high": client.watch_monitor(min_score=1.5),
        "alerts": client.watch_monitor(alerts_only=True),
        "other-alerts": client.watch_monitor(directions=["other"], alerts_only=True),
    }
    got: dict[str, list[pb.MonitorEvent]] = {k: [] for k in streams}
    tasks = [asyncio.ensure_future(_collect(s, 10_000, got[k])) for k, s in streams.items()]
    try:
        await wait_until(lambda: engine.monitor_feed.watchers == len(streams), "all subscribed")
        replies = [await client.generate(p, max_new_tokens=6, monitor=["misalignment"]) for p in PROMPTS[:10]]
        replies += [await client.generate(p, max_new_tokens=6, monitor=["other"]) for p in PROMPTS[10:20]]
        # An event with an alert on misalignment, published as the engine would (the fake raises none itself).
        alert = Alert("misalignment", ConditionScope.RUNNING, 3.0, 2.5, AlertAction.RECORD, token_index=2)
        scores = DirectionScores("misalignment", 2, 0.1, 0.2, (), True, False, max_score=3.0)
        result = GenerationResult("x", (1, 2, 3), StopReason.MAX_TOKENS, 4, (scores,), "synthetic", alerts=(alert,))
        engine.monitor_feed.publish(request_event(result, rpc="Generate"))
        await wait_until(lambda: len(got["all"]) == 21 and len(got["alerts"]) == 1, "every event delivered")
        await asyncio.sleep(0.2)  # anything wrongly delivered to the filtered watchers would have arrived by now
    finally:
        for t in tasks:
            t.cancel()
    ids = lambda name: [e.request_id for e in got[name]]  # noqa: E731
    assert ids("other") == [r.request_id for r in replies[10:]]
    assert ids("absent") == []
    high = [r.request_id for r in replies if any(_above(s, 1.5) for s in r.monitor)] + ["synthetic"]
    assert 0 < len(high) < 21 and ids("high") == high
    assert ids("alerts") == ["synthetic"] and ids("other-alerts") == []
    (a,) = got["alerts"][0].alerts
    assert (a.direction, a.scope, a.score, a.threshold, a.action, a.token_index) == (
        "misalignment", pb.RUNNING_SCORE, 3.0, 2.5, pb.RECORD, 2,
    )


def _above(s: pb.DirectionScores, floor: float) -> bool:
    values = [s.prompt_score] + [getattr(s, f) for f in ("response_score", "max_score") if s.HasField(f)]
    return any(v >= floor for v in values)


async def test_compare_score_stream_and_policy_are_reported(client: AsyncSteeringClient, engine: FakeEngine) -> None:
    got: list[pb.MonitorEvent] = []
    task = asyncio.ensure_future(_collect(client.watch_monitor(), 5, got))
    await wait_until(lambda: engine.monitor_feed.watchers == 1, "subscribed")
    compared = await client.compare("Tell me about cats", max_new_tokens=6)
    scored = await client.score("Tell me about cats", response="they purr")
    async for _ in client.generate_stream("Hi", max_new_tokens=3):
        pass
    await client.set_steering([ablate("misalignment")], enforced=True)
    try:
        enforced = await client.generate("Hi", max_new_tokens=3)
    finally:
        await client.set_steering([])
    await asyncio.wait_for(task, 10)
    compare_events, score_event, stream_event, policy_event = got[:2], got[2], got[3], got[4]
    assert [(e.rpc, e.variant) for e in compare_events] == [("Compare", v.name) for v in compared.variants]
    assert [e.request_id for e in compare_events] == [v.result.request_id for v in compared.variants]
    assert _scores(compare_events[1].monitor) == _scores(compared.variants[1].result.monitor)
    assert [t.mode for t in compare_events[1].steering] == [pb.ABLATE] and not compare_events[0].steering
    assert score_event.rpc == "Score" and _scores(score_event.monitor) == _scores(scored.monitor)
    assert score_event.stop_reason == pb.STOP_REASON_UNSPECIFIED
    assert (score_event.usage.prompt_tokens, score_event.usage.completion_tokens) == (18, 9)
    assert not any(s.token_scores for s in score_event.monitor)  # a summary: per-token scores stay in the reply
    assert stream_event.rpc == "GenerateStream"
    assert policy_event.request_id == enforced.request_id
    assert policy_event.policy_applied and policy_event.policy_enforced
    assert [(t.direction, t.mode, t.strength) for t in policy_event.steering] == [("misalignment", pb.ABLATE, 1.0)]


async def test_watch_needs_observer_credentials_on_a_server_with_tokens(engine: FakeEngine) -> None:
    async with serving(engine, admin_token="admin-secret", observer_token="observer-secret") as srv:
        target = f"127.0.0.1:{srv.port}"
        for metadata in ((), (("authorization", "Bearer wrong"),)):
            async with AsyncSteeringClient(target, metadata=metadata) as anyone:
                first = asyncio.wait_for(anyone.watch_monitor().__anext__(), 10)  # fails, not hangs, if let in
                details = await expect_status(first, grpc.StatusCode.UNAUTHENTICATED)
                assert "observer" in details
        assert engine.monitor_feed.watchers == 0
        for token in ("observer-secret", "admin-secret"):
            async with AsyncSteeringClient(target, metadata=[("authorization", f"Bearer {token}")]) as observer:
                events = observer.watch_monitor()
                first = asyncio.ensure_future(events.__anext__())
                await wait_until(lambda: engine.monitor_feed.watchers == 1, "observer subscribed")
                reply = await observer.generate("Hi", max_new_tokens=3)
                assert (await asyncio.wait_for(first, 10)).request_id == reply.request_id
                await events.aclose()
                await wait_until(lambda: engine.monitor_feed.watchers == 0, "unsubscribed")


async def test_a_disconnecting_watcher_frees_its_subscription(server: SteeringServer, engine: FakeEngine) -> None:
    for _ in range(3):
        client = AsyncSteeringClient(f"127.0.0.1:{server.port}")
        task = asyncio.ensure_future(_collect(client.watch_monitor(), 1, []))
        await wait_until(lambda: engine.monitor_feed.watchers == 1, "subscribed")
        await client.close()  # the channel goes away without cancelling the call first
        await wait_until(lambda: engine.monitor_feed.watchers == 0, "the server dropped the subscription")
        task.cancel()
    # And a client that cancels its call.
    async with AsyncSteeringClient(f"127.0.0.1:{server.port}") as client:
        task = asyncio.ensure_future(_collect(client.watch_monitor(), 1, []))
        await wait_until(lambda: engine.monitor_feed.watchers == 1, "subscribed")
        task.cancel()
        await wait_until(lambda: engine.monitor_feed.watchers == 0, "the server dropped the subscription")
        assert (await client.generate("still serving", max_new_tokens=2)).token_ids


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"min_score": math.nan}, "min_score"),
        ({"min_score": math.inf}, "min_score"),
        ({"buffer_size": 0}, "buffer_size"),
        ({"buffer_size": 4097}, "buffer_size"),
        ({"directions": ["bad name!"]}, "directions[0]"),
        ({"directions": ["ok"] * 65}, "directions"),
    ],
)
async def test_a_bad_filter_is_invalid_argument(
    client: AsyncSteeringClient, engine: FakeEngine, options: dict[str, object], field: str
) -> None:
    await expect_status(
        client.watch_monitor(**options).__anext__(),  # type: ignore[arg-type]
        grpc.StatusCode.INVALID_ARGUMENT,
        field,
    )
    assert engine.monitor_feed.watchers == 0
    assert (await client.generate("Hi", max_new_tokens=2)).token_ids  # nothing else broke


async def test_too_many_watchers_is_resource_exhausted(client: AsyncSteeringClient, engine: FakeEngine) -> None:
    engine.monitor_feed.max_watchers = 2
    streams = [client.watch_monitor(), client.watch_monitor()]
    tasks = [asyncio.ensure_future(s.__anext__()) for s in streams]
    await wait_until(lambda: engine.monitor_feed.watchers == 2, "two subscribed")
    await expect_status(client.watch_monitor().__anext__(), grpc.StatusCode.RESOURCE_EXHAUSTED)
    for t in tasks:
        t.cancel()
    await wait_until(lambda: engine.monitor_feed.watchers == 0, "unsubscribed")


async def test_grpc_flow_control_holds_back_a_client_that_never_reads(
    server: SteeringServer, engine: FakeEngine
) -> None:
    # The server's writer for this call takes events from the buffer only as fast as grpc accepts them; once the
    # client's HTTP/2 window (a few MB here) is full it takes none, so the feed drops instead of grpc buffering.
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    call = pb_grpc.SteeringServiceStub(channel).WatchMonitor(pb.WatchMonitorRequest(buffer_size=16))
    try:
        await wait_until(lambda: engine.monitor_feed.watchers == 1, "subscribed")
        (sub,) = engine.monitor_feed._watchers
        scores = tuple(
            DirectionScores(f"direction-{k}-" + "x" * 50, 1, 0.5, 0.25, (), False, False, max_score=1.0)
            for k in range(8)
        )  # about 700 bytes per encoded event
        event = request_event(GenerationResult("t", (1,), StopReason.MAX_TOKENS, 3, scores, "r"), rpc="Generate")
        published = 0
        taken = []
        for _ in range(2):
            for _ in range(800):
                for _ in range(50):
                    engine.monitor_feed.publish(event)
                    published += 1
                await asyncio.sleep(0.001)  # the writer gets to run between bursts
            taken.append(published - sub.dropped_total - len(sub))
            assert len(sub) <= 16
        assert taken[0] < published / 4  # grpc stopped accepting long before the end
        assert taken[1] - taken[0] < published / 20  # and the second half went almost entirely to drops
    finally:
        call.cancel()
        await channel.close()
    await wait_until(lambda: engine.monitor_feed.watchers == 0, "unsubscribed")


async def test_stopping_the_server_ends_the_watches_at_once(engine: FakeEngine) -> None:
    # A watch never ends by itself: the graceful stop must not wait its whole grace period for one.
    srv = SteeringServer("127.0.0.1", 0, open_admin=True)
    await srv.start()
    await srv.attach(engine)
    async with AsyncSteeringClient(f"127.0.0.1:{srv.port}") as client:
        got: list[pb.MonitorEvent] = []
        watching = asyncio.ensure_future(_collect(client.watch_monitor(), 10, got))
        await wait_until(lambda: engine.monitor_feed.watchers == 1, "subscribed")
        engine.hold()  # a generation still running when the stop begins
        running = asyncio.ensure_future(client.generate("still finishing", max_new_tokens=3))
        await wait_until(lambda: bool(engine.active), "the generation is running")
        loop = asyncio.get_running_loop()
        started = loop.time()
        stopping = asyncio.ensure_future(srv.stop(30.0))
        await asyncio.sleep(0.3)
        engine.release()
        await stopping
        assert loop.time() - started < 10
        await asyncio.wait_for(watching, 10)  # the stream ended cleanly (OK), it was not cut off
        assert engine.monitor_feed.watchers == 0
        reply = await running
        assert [e.request_id for e in got] == [reply.request_id]  # what finished while stopping was still sent
