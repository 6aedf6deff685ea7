"""Errors over HTTP against the fake engine: every bad request's status and OpenAI-shaped error, and the statuses
that need a server state the organism cannot easily show (a full queue, no engine yet, shutting down)."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from steering_server.http import HttpServer
from steering_server.service.auth import Access
from steering_server.service.metrics import Metrics
from steering_server.service.servicer import SteeringServicer
from steering_server.types import EngineLimits

from ..service.fake_engine import FakeEngine
from ..service.helpers import assert_no_unexpected_errors
from .bad_requests import BAD_REQUESTS, HI, BadRequest, check_refused
from .conftest import Served


@pytest.mark.parametrize("case", BAD_REQUESTS, ids=lambda c: c.name)
async def test_a_bad_request_gets_its_status_and_names_the_field(
    fake_http: httpx.AsyncClient, case: BadRequest, caplog: pytest.LogCaptureFixture
) -> None:
    await check_refused(fake_http, case)
    assert (await fake_http.get("/health")).status_code == 200
    assert_no_unexpected_errors(caplog)


async def test_a_full_queue_is_429_and_an_error_mid_stream_is_the_last_event() -> None:
    engine = FakeEngine(EngineLimits(max_new_tokens=64, max_prompt_tokens=512, max_queued=1, max_variants=4))
    engine.hold()  # the first request stays admitted
    servicer = SteeringServicer(engine, Metrics(), Access())
    http = HttpServer(servicer)
    await http.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{http.port}", timeout=60) as client:
            first = asyncio.ensure_future(client.post("/v1/chat/completions", json={"messages": HI, "max_tokens": 2}))
            while not engine.active:
                await asyncio.sleep(0.01)
            second = await client.post("/v1/chat/completions", json={"messages": HI})
            assert second.status_code == 429
            assert second.json()["error"]["type"] == "rate_limit_error"
            engine.release()
            assert (await first).status_code == 200
            # The engine dies while a stream runs: the status line is sent, so the error is the last event.
            engine.hold()
            async with client.stream("POST", "/v1/chat/completions",
                                     json={"messages": HI, "stream": True, "max_tokens": 5}) as response:
                assert response.status_code == 200
                while not engine.active:
                    await asyncio.sleep(0.01)
                engine.kill()
                lines = [line async for line in response.aiter_lines() if line.startswith("data: ")]
            assert lines[-1].startswith('data: {"error":') and '"code":"unavailable"' in lines[-1]
            health = await client.get("/health")
            assert (health.status_code, health.json()) == (503, {"status": "NOT_SERVING"})
    finally:
        await http.stop(None)


async def test_no_engine_yet_or_shutting_down_is_503() -> None:
    servicer = SteeringServicer(None, Metrics(), Access())
    http = HttpServer(servicer)
    await http.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{http.port}", timeout=60) as client:
            starting = await client.post("/v1/chat/completions", json={"messages": HI})
            assert starting.status_code == 503
            assert starting.json()["error"]["message"].startswith("the engine is starting")
            assert (await client.get("/health")).status_code == 503
            servicer.attach(FakeEngine())
            assert (await client.post("/v1/chat/completions", json={"messages": HI})).status_code == 200
            servicer.draining = True
            stopping = await client.post("/v1/chat/completions", json={"messages": HI})
            assert (stopping.status_code, stopping.json()["error"]["code"]) == (503, "unavailable")
    finally:
        await http.stop(None)


async def test_a_busy_port_is_an_os_error(fake_served: Served) -> None:
    with pytest.raises(OSError, match="cannot listen"):
        await HttpServer(SteeringServicer(FakeEngine()), "127.0.0.1", fake_served.http.port).start()


async def test_steering_reaches_the_engine_and_changes_the_tokens(fake_http: httpx.AsyncClient) -> None:
    body = {"messages": HI, "max_tokens": 8, "seed": 5, "temperature": 0}
    plain = (await fake_http.post("/v1/chat/completions", json=body)).json()
    steered = (await fake_http.post("/v1/chat/completions", json={
        **body, "steering": [{"direction": "misalignment", "mode": "add", "strength": -3}]})).json()
    assert plain["steering"]["token_ids"] != steered["steering"]["token_ids"]
    assert plain["steering"]["seed"] == 5


async def test_a_client_that_goes_away_frees_its_request(
    fake: FakeEngine, fake_served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    """Streamed or not, a request whose client left is cancelled at once (it would hold an admission slot)."""
    fake.hold()  # nothing finishes while the client is connected
    for stream in (True, False):
        async with httpx.AsyncClient(base_url=fake_served.url, timeout=60) as client:
            call = asyncio.ensure_future(
                client.post("/v1/chat/completions", json={"messages": HI, "max_tokens": 50, "stream": stream})
            )
            while not fake.active:
                await asyncio.sleep(0.01)
            call.cancel()  # the connection closes
        for _ in range(500):
            if not fake.active:
                break
            await asyncio.sleep(0.01)
        assert not fake.active, f"stream={stream}: the request was not freed"
    assert_no_unexpected_errors(caplog)
