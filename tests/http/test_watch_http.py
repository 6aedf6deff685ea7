"""The HTTP API's requests reach the live monitor feed like gRPC's (the engine publishes), labelled as HTTP calls."""

from __future__ import annotations

import httpx

from steering_server.monitor_feed import MonitorFilter

from ..service.fake_engine import FakeEngine

HI = [{"role": "user", "content": "Hi"}]


async def test_http_requests_are_in_the_feed(fake: FakeEngine, fake_http: httpx.AsyncClient) -> None:
    watcher = fake.watch_monitor(MonitorFilter())
    try:
        chat = (await fake_http.post("/v1/chat/completions", json={"messages": HI, "max_tokens": 4})).json()
        completion = (await fake_http.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 4})).json()
        compared = await fake_http.post("/v1/steering/compare", json={"prompt": "Hi", "max_tokens": 4})
        assert compared.status_code == 200
        events = [(await watcher.next()) for _ in range(4)]
    finally:
        watcher.close()
    labels = [(e.front_end, e.rpc, e.variant) for e, _ in events]
    assert labels[:2] == [("http", "ChatCompletions", ""), ("http", "Completions", "")]
    assert [label[:2] for label in labels[2:]] == [("http", "Compare")] * 2 and all(v for _, _, v in labels[2:])
    assert events[0][0].request_id in chat["id"] and events[1][0].request_id in completion["id"]
    assert events[0][0].completion_tokens == chat["usage"]["completion_tokens"]
