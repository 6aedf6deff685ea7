"""The live monitor feed from the clients: SteeringClient.watch_monitor, AsyncSteeringClient.watch_monitor's filter
arguments, and `steering-client watch` (text and --json, with a token file on a server with tokens)."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path

import pytest
from steering_client import AsyncSteeringClient, SteeringClient, pb
from steering_client.cli import main

from steering_server.service import SteeringServer

from ..service.fake_engine import FakeEngine, make_direction
from ..service.helpers import serving, wait_until


async def test_sync_client_watches(server: SteeringServer, engine: FakeEngine) -> None:
    got: list[pb.MonitorEvent] = []

    def watch() -> None:
        with SteeringClient(f"127.0.0.1:{server.port}", timeout=30) as client:
            for event in client.watch_monitor(directions=["misalignment"], buffer_size=10):
                got.append(event)
                if len(got) == 3:
                    break  # leaving the loop cancels the call

    thread = threading.Thread(target=watch)
    thread.start()
    await wait_until(lambda: engine.monitor_feed.watchers == 1, "subscribed")
    async with AsyncSteeringClient(f"127.0.0.1:{server.port}") as client:
        replies = [await client.generate(f"hello {i}", max_new_tokens=4) for i in range(3)]
    await asyncio.to_thread(thread.join, 30)
    assert [e.request_id for e in got] == [r.request_id for r in replies]
    await wait_until(lambda: engine.monitor_feed.watchers == 0, "the sync client's break cancelled the call")


async def test_async_client_passes_the_filter(client: AsyncSteeringClient, engine: FakeEngine) -> None:
    engine.registry.put(make_direction("other", seed=3))
    events = client.watch_monitor(directions=["other"], min_score=-100.0, buffer_size=5)
    first = asyncio.ensure_future(events.__anext__())
    await wait_until(lambda: engine.monitor_feed.watchers == 1, "subscribed")
    (sub,) = engine.monitor_feed._watchers
    assert (sub.filter.directions, sub.filter.min_score, sub.filter.alerts_only, sub.capacity) == (
        ("other",), -100.0, False, 5
    )
    await client.generate("skipped", max_new_tokens=2, monitor=["misalignment"])
    wanted = await client.generate("kept", max_new_tokens=2, monitor=["other"])
    assert (await asyncio.wait_for(first, 10)).request_id == wanted.request_id
    await events.aclose()


def _cli(port: int, *args: str) -> int:
    return main(["--target", f"127.0.0.1:{port}", *args])


async def test_cli_watch_prints_events(
    server: SteeringServer, engine: FakeEngine, capsys: pytest.CaptureFixture[str]
) -> None:
    port = server.port
    for extra in ((), ("--json",)):
        watching = asyncio.ensure_future(asyncio.to_thread(_cli, port, *extra, "watch", "--count", "2"))
        await wait_until(lambda: engine.monitor_feed.watchers == 1, "the CLI subscribed")
        async with AsyncSteeringClient(f"127.0.0.1:{port}") as client:
            replies = [await client.generate(f"hi {i}", max_new_tokens=3) for i in range(2)]
        assert await asyncio.wait_for(watching, 30) == 0
        out = capsys.readouterr().out.splitlines()
        assert len(out) == 2
        if extra:
            assert [json.loads(line)["request_id"] for line in out] == [r.request_id for r in replies]
        else:
            for line, reply in zip(out, replies, strict=True):
                assert f" {reply.request_id} Generate " in line and "misalignment: prompt " in line
        await wait_until(lambda: engine.monitor_feed.watchers == 0, "the CLI unsubscribed")


async def test_cli_watch_needs_and_sends_a_token(
    engine: FakeEngine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    token_file = tmp_path / "observer.token"
    token_file.write_text("watch-me\n")
    async with serving(engine, admin_token="admin-only", observer_token="watch-me") as srv:
        assert await asyncio.to_thread(_cli, srv.port, "watch", "--count", "1") == 1
        assert "UNAUTHENTICATED" in capsys.readouterr().err
        watching = asyncio.ensure_future(
            asyncio.to_thread(_cli, srv.port, "watch", "--count", "1", "--token-file", str(token_file))
        )
        await wait_until(lambda: engine.monitor_feed.watchers == 1, "the CLI subscribed with the token")
        async with AsyncSteeringClient(f"127.0.0.1:{srv.port}") as client:
            reply = await client.generate("hi", max_new_tokens=3)
        assert await asyncio.wait_for(watching, 30) == 0
        assert reply.request_id in capsys.readouterr().out
