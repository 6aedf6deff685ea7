"""The bad HTTP requests every server must refuse with a status and an OpenAI-shaped error naming the field first.

Run against the fake engine (test_errors.py) and the built-in organism (test_errors_organism.py). The server has a
direction named "misalignment" and does not allow red-teaming.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import httpx

__all__ = ["BAD_REQUESTS", "BadRequest", "check_refused"]

CHAT = "/v1/chat/completions"
TEXT = "/v1/completions"
COMPARE = "/v1/steering/compare"
HI = [{"role": "user", "content": "hi"}]


class BadRequest(NamedTuple):
    name: str
    path: str
    body: Any  # a JSON value, or bytes sent as they are
    status: int
    param: str  # the message starts with "<param>: "


def _chat(**fields: Any) -> dict[str, Any]:
    return {"messages": HI, **fields}


def _term(**fields: Any) -> dict[str, Any]:
    return {"direction": "misalignment", "mode": "ablate", **fields}


BAD_REQUESTS = [
    BadRequest("temperature below 0", CHAT, _chat(temperature=-1), 400, "temperature"),
    BadRequest("max_tokens above the server's limit", CHAT, _chat(max_tokens=100_000), 400, "max_tokens"),
    BadRequest("top_p of 0", CHAT, _chat(top_p=0), 400, "top_p"),
    BadRequest("n of 2", CHAT, _chat(n=2), 400, "n"),
    BadRequest("a seed that is text", CHAT, _chat(seed="one"), 400, "seed"),
    BadRequest("an empty stop string", CHAT, _chat(stop=[""]), 400, "stop[0]"),
    BadRequest("17 stop strings", CHAT, _chat(stop=[str(i) for i in range(17)]), 400, "stop"),
    BadRequest("no messages", CHAT, {}, 400, "messages"),
    BadRequest("a tool message", CHAT, {"messages": [{"role": "tool", "content": "x"}]}, 400, "messages[0].role"),
    BadRequest("an image part", CHAT, {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, 400,
               "messages[0].content[0]"),
    BadRequest("another model", CHAT, _chat(model="gpt-4o"), 404, "model"),
    BadRequest("a frequency penalty", CHAT, _chat(frequency_penalty=0.5), 400, "frequency_penalty"),
    BadRequest("tools", CHAT, _chat(tools=[{"type": "function"}]), 400, "tools"),
    BadRequest("logprobs", CHAT, _chat(logprobs=True), 400, "logprobs"),
    BadRequest("stream_options without stream", CHAT, _chat(stream_options={"include_usage": True}), 400,
               "stream_options"),
    BadRequest("steering that is not a list", CHAT, _chat(steering={"direction": "misalignment"}), 400, "steering"),
    BadRequest("an unknown steering mode", CHAT, _chat(steering=[_term(mode="erase")]), 400, "steering[0].mode"),
    BadRequest("a misspelt steering key", CHAT, _chat(steering=[_term(strenght=2)]), 400, "steering[0].strenght"),
    BadRequest("an unknown direction", CHAT, _chat(steering=[_term(direction="nope")]), 404,
               "steering[0].direction"),
    BadRequest("a layer outside the model", CHAT, _chat(steering=[_term(layers=[99])]), 400, "steering[0].layers[0]"),
    BadRequest("a strength past the limit", CHAT, _chat(steering=[_term(mode="add", strength=-1e9)]), 400,
               "steering[0].strength"),
    BadRequest("65 steering terms", CHAT, _chat(steering=[_term()] * 65), 400, "steering"),
    BadRequest("inducing without red-teaming", CHAT, _chat(steering=[_term(mode="add", strength=1.0)]), 403,
               "steering[0]"),
    BadRequest("a condition without a threshold", CHAT,
               _chat(steering=[_term(condition={"direction": "misalignment"})]), 400,
               "steering[0].condition.threshold"),
    BadRequest("a condition scope that does not exist", CHAT,
               _chat(steering=[_term(condition={"direction": "misalignment", "threshold": 1, "scope": "later"})]), 400,
               "steering[0].condition.scope"),
    BadRequest("a condition on an unknown direction", CHAT,
               _chat(steering=[_term(condition={"direction": "nope", "threshold": 1})]), 404,
               "steering[0].condition.direction"),
    BadRequest("monitoring an unknown direction", CHAT, _chat(monitor={"directions": ["nope"]}), 404,
               "monitor.directions[0]"),
    BadRequest("monitoring 100000 directions", CHAT, _chat(monitor={"directions": [f"d{i}" for i in range(100_000)]}),
               404, "monitor.directions[0]"),  # refused at once (a quadratic duplicate check took 134 s)
    BadRequest("a misspelt monitor key", CHAT, _chat(monitor={"direction": ["misalignment"]}), 400,
               "monitor.direction"),
    BadRequest("ignore_policy that is text", CHAT, _chat(ignore_policy="yes"), 400, "ignore_policy"),
    BadRequest("a body that is not JSON", CHAT, b"{not json", 400, "request"),
    BadRequest("a body that is a list", CHAT, [1, 2], 400, "request"),
    BadRequest("a body nested 100000 deep", CHAT, b"[" * 100_000 + b"]" * 100_000, 400, "request"),
    BadRequest("a 5000-digit number", CHAT, b'{"seed": ' + b"9" * 5000 + b"}", 400, "request"),
    BadRequest("a body that is not UTF-8", CHAT, b'{"messages": "\xff"}', 400, "request"),
    BadRequest("a body over 2 MiB", CHAT, _chat(pad="x" * (2 * 1024 * 1024 + 1)), 400, "request"),
    BadRequest("a prompt that cannot fit", TEXT, {"prompt": "x" * 300_000}, 400, "prompt"),
    BadRequest("two prompts", TEXT, {"prompt": ["a", "b"]}, 400, "prompt"),
    BadRequest("a token id outside the vocabulary", TEXT, {"prompt": [10**9]}, 400, "prompt[0]"),
    BadRequest("no prompt", TEXT, {}, 400, "prompt"),
    BadRequest("nine variants", COMPARE, {"prompt": "hi", "variants": [{"name": str(i)} for i in range(9)]}, 400,
               "variants"),
    BadRequest("two variants of one name", COMPARE, {"prompt": "hi", "variants": [{"name": "a"}, {"name": "a"}]}, 400,
               "variants[1].name"),
    BadRequest("a variant steering an unknown direction", COMPARE,
               {"prompt": "hi", "variants": [{"name": "a", "steering": [_term(direction="nope")]}]}, 404,
               "variants[0].steering[0].direction"),
]


async def check_refused(client: httpx.AsyncClient, case: BadRequest) -> None:
    """The request gets `case.status` and OpenAI's error shape, its message starting with the field."""
    if isinstance(case.body, bytes):
        response = await client.post(case.path, content=case.body, headers={"content-type": "application/json"})
    else:
        response = await client.post(case.path, json=case.body)
    assert response.status_code == case.status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"].startswith(f"{case.param}:"), error["message"]
    assert error["param"] == case.param or error["param"].startswith(case.param), error
