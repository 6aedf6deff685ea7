"""Assertions shared by the service tests."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import grpc
import grpc.aio
import pytest

from steering_server.engine_api import EngineClient
from steering_server.service import SteeringServer

__all__ = ["assert_no_unexpected_errors", "expect_status", "serving", "tiny_llama_engine", "wait_until"]


@asynccontextmanager
async def tiny_llama_engine(limits: Any, **config: Any) -> AsyncIterator[Any]:
    """The real engine on the tiny random Llama, with one uncalibrated random direction "misalignment" monitored at
    layer 1 (the service tests' real-engine setup). `config`: further EngineConfig fields."""
    import torch

    from steering_server.config import EngineConfig
    from steering_server.directions import Direction
    from steering_server.engine import start_engine
    from steering_server.models import wrap_model
    from steering_server.tiny_models import byte_tokenizer, tiny_model

    loaded = wrap_model(tiny_model("llama"), byte_tokenizer(), "tiny-llama")
    engine = await start_engine(EngineConfig(limits=limits, **config), loaded=loaded)
    gen = torch.Generator().manual_seed(0)
    vectors = {layer: torch.randn(engine.hidden_size, generator=gen) for layer in range(engine.num_layers)}
    engine.put_direction(Direction("misalignment", vectors, monitor_layer=1))
    try:
        yield engine
    finally:
        await engine.shutdown()


@asynccontextmanager
async def serving(engine: EngineClient, **options: Any) -> AsyncIterator[SteeringServer]:
    """A server on an ephemeral loopback port with `engine` attached, stopped on exit. Every role is open
    (--open-admin) unless `options` configure tokens."""
    if "admin_token" not in options and "observer_token" not in options:
        options.setdefault("open_admin", True)
    srv = SteeringServer("127.0.0.1", 0, **options)
    await srv.start()
    await srv.attach(engine)
    try:
        yield srv
    finally:
        await srv.stop(None)


async def expect_status(call: Awaitable[Any], code: grpc.StatusCode, field: str | None = None) -> str:
    """Await `call`, which must fail with `code`; the message must start with `field` when given."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    err = info.value
    assert err.code() == code, f"expected {code.name}, got {err.code().name}: {err.details()}"
    details = err.details() or ""
    if field is not None:
        assert details.startswith(field), f"message does not name {field!r}: {details}"
    return details


def assert_no_unexpected_errors(caplog: pytest.LogCaptureFixture) -> None:
    """The server logged no traceback and nothing at ERROR (bad input is not a server error)."""
    bad = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not bad, [r.getMessage() for r in bad]


async def wait_until(predicate: Callable[[], bool], what: str, attempts: int = 6000) -> None:
    """Yield to the event loop until `predicate()` holds; fail if it never does (after a minute: a loaded CI
    machine is slow, and this only bounds a hang)."""
    for _ in range(attempts):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never happened: {what}")
