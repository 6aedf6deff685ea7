"""`steering-server serve --http-port`: the HTTP API beside gRPC in one process, on one engine and one metrics
registry, stopped by SIGTERM with the gRPC server."""

from __future__ import annotations

import asyncio
import os
import signal
import socket

import httpx
from steering_client import AsyncSteeringClient

from steering_server.cli import build_parser
from steering_server.config import EngineConfig
from steering_server.service import serve

from ..service.fake_engine import FakeEngine
from .bad_requests import HI


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_http_port_is_off_unless_asked_for() -> None:
    assert build_parser().parse_args(["serve"]).http_port is None
    assert build_parser().parse_args(["serve", "--http-port", "8080"]).http_port == 8080


async def test_serve_with_an_http_port_serves_both_apis_on_one_engine_until_sigterm() -> None:
    engine = FakeEngine()
    ports: list[int] = []
    http_port = _free_port()

    async def start_engine(config: EngineConfig) -> FakeEngine:
        return engine

    task = asyncio.ensure_future(
        serve(EngineConfig(), "127.0.0.1", 0, start_engine, on_serving=ports.append, http_port=http_port)
    )
    while not ports and not task.done():
        await asyncio.sleep(0.01)
    assert ports, task.result()
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{http_port}", timeout=60) as http:
        assert (await http.get("/health")).json() == {"status": "SERVING"}
        body = {"messages": HI, "max_tokens": 4, "seed": 7, "temperature": 0}
        over_http = (await http.post("/v1/chat/completions", json=body)).json()
        async with AsyncSteeringClient(f"127.0.0.1:{ports[0]}") as client:
            over_grpc = await client.generate(messages=[("user", "hi")], max_new_tokens=4, seed=7, temperature=0)
        assert over_http["steering"]["token_ids"] == list(over_grpc.token_ids)
        metrics = (await http.get("/metrics")).text  # one registry: both APIs' calls
        assert 'rpc="http.ChatCompletions"' in metrics and 'rpc="Generate"' in metrics
    os.kill(os.getpid(), signal.SIGTERM)
    await task
    assert engine.stopping
    with socket.socket() as s:  # the HTTP port is closed again
        assert s.connect_ex(("127.0.0.1", http_port)) != 0


async def test_sigterm_lets_a_running_http_stream_finish_and_refuses_new_calls() -> None:
    engine = FakeEngine()
    ports: list[int] = []
    http_port = _free_port()

    async def start_engine(config: EngineConfig) -> FakeEngine:
        return engine

    task = asyncio.ensure_future(
        serve(EngineConfig(), "127.0.0.1", 0, start_engine, grace=30, on_serving=ports.append, http_port=http_port)
    )
    while not ports and not task.done():
        await asyncio.sleep(0.01)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{http_port}", timeout=60) as http:
        engine.hold()
        body = {"messages": HI, "max_tokens": 4, "stream": True}
        async with http.stream("POST", "/v1/chat/completions", json=body) as response:
            while not engine.active:
                await asyncio.sleep(0.01)
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(500):  # wait for the drain to begin
                if (await http.get("/health")).status_code == 503:
                    break
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.5)  # the port stays open while the stream runs: new calls get 503, not a reset
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{http_port}", timeout=60) as other:
                refused = await other.post("/v1/chat/completions", json={"messages": HI})
            assert refused.status_code == 503
            assert refused.json()["error"]["message"] == "the server is shutting down"
            engine.release()
            lines = [line async for line in response.aiter_lines() if line.startswith("data: ")]
        assert lines[-1] == "data: [DONE]"
    await task
    assert engine.stopping
