"""`GET /v1/steering/monitor`: the live monitor feed over server-sent events, for observers (the gRPC WatchMonitor's
semantics, roles and filter rules), with requests from either front end."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio
from prometheus_client import CollectorRegistry

from steering_server.http import HttpServer
from steering_server.service.auth import Access
from steering_server.service.metrics import Metrics
from steering_server.service.servicer import SteeringServicer

from ..service.fake_engine import FakeEngine
from ..service.helpers import wait_until
from .bad_requests import HI

OBSERVER, ADMIN = "observer-token", "admin-token"


@pytest_asyncio.fixture
async def secured(fake: FakeEngine) -> AsyncIterator[str]:
    servicer = SteeringServicer(fake, Metrics(CollectorRegistry()), Access(ADMIN, OBSERVER))
    http = HttpServer(servicer)
    await http.start()
    try:
        yield f"http://127.0.0.1:{http.port}"
    finally:
        await http.stop(None)


async def _events(client: httpx.AsyncClient, n: int, into: list[dict[str, Any]], **params: Any) -> None:
    headers = {"Authorization": f"Bearer {OBSERVER}"}
    async with client.stream("GET", "/v1/steering/monitor", params=params, headers=headers) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                into.append(json.loads(line[6:]))
                if len(into) == n:
                    return


@pytest.mark.parametrize("token", [None, "wrong", ADMIN + "x"])
async def test_watching_needs_observer_credentials(secured: str, token: str | None) -> None:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient(base_url=secured) as client:
        refused = await client.get("/v1/steering/monitor", headers=headers)
    assert refused.status_code == 401
    assert refused.json()["error"]["type"] == "authentication_error"


async def test_an_observer_sees_every_request_with_its_scores_and_front_end(secured: str, fake: FakeEngine) -> None:
    events: list[dict[str, Any]] = []
    async with httpx.AsyncClient(base_url=secured, timeout=60) as client:
        watcher = asyncio.ensure_future(_events(client, 3, events))
        await wait_until(lambda: fake.monitor_feed.watchers == 1, "the watcher subscribed")
        replies = [
            (await client.post("/v1/chat/completions", json={"messages": HI, "max_tokens": 4, "seed": i})).json()
            for i in range(2)
        ]
        compare = await client.post("/v1/steering/compare", json={"prompt": "hi", "max_tokens": 3,
                                                                   "variants": [{"name": "plain"}]})
        assert compare.status_code == 200
        await asyncio.wait_for(watcher, 60)
    by_id = {e["request_id"]: e for e in events}
    for reply in replies:
        event = by_id[reply["steering"]["request_id"]]
        assert (event["front_end"], event["rpc"]) == ("http", "ChatCompletions")
        assert event["usage"]["completion_tokens"] == 4
        assert event["monitor"][0]["prompt_score"] == reply["steering"]["monitor"][0]["prompt_score"]
        assert event["dropped"] == 0
    assert [(e["rpc"], e["variant"]) for e in events if e["rpc"] == "Compare"] == [("Compare", "plain")]
    await wait_until(lambda: fake.monitor_feed.watchers == 0, "the watcher unsubscribed when its client left")


async def test_a_bad_filter_is_400_naming_the_parameter(secured: str) -> None:
    headers = {"Authorization": f"Bearer {OBSERVER}"}
    async with httpx.AsyncClient(base_url=secured) as client:
        for params, field in (({"buffer_size": "0"}, "buffer_size"), ({"min_score": "x"}, "min_score"),
                              ({"alerts_only": "maybe"}, "alerts_only"), ({"direction": "a"}, "direction")):
            refused = await client.get("/v1/steering/monitor", params=params, headers=headers)
            assert refused.status_code == 400, params
            assert refused.json()["error"]["message"].startswith(f"{field}:"), refused.json()


async def test_a_stopping_server_ends_its_watchers(fake: FakeEngine) -> None:
    """A watcher would otherwise hold the stop for the whole grace period (the feed runs until its client leaves)."""
    servicer = SteeringServicer(fake, Metrics(), Access(open_admin=True))
    http = HttpServer(servicer)
    await http.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{http.port}", timeout=60) as client:
            async with client.stream("GET", "/v1/steering/monitor") as response:
                assert response.status_code == 200
                await wait_until(lambda: fake.monitor_feed.watchers == 1, "the watcher subscribed")
                servicer.draining = True
                lines = await asyncio.wait_for(_lines(response), 10)
            assert lines == [": watching"]
        assert fake.monitor_feed.watchers == 0
    finally:
        await http.stop(None)


async def _lines(response: httpx.Response) -> list[str]:
    return [line async for line in response.aiter_lines() if line]
