"""With an admin token, changing directions or the policy needs it; applications need none."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from steering_client import AsyncSteeringClient, ablate

from steering_server.service import SteeringServer

from .fake_engine import FakeEngine
from .helpers import expect_status, serving

TOKEN = "s3cret-token"


@pytest.fixture
async def guarded(engine: FakeEngine) -> AsyncIterator[SteeringServer]:
    async with serving(engine, admin_token=TOKEN) as srv:
        yield srv


async def test_admin_rpcs_need_the_token(guarded: SteeringServer, engine: FakeEngine) -> None:
    target = f"127.0.0.1:{guarded.port}"
    async with (
        AsyncSteeringClient(target) as anyone,
        AsyncSteeringClient(target, metadata=[("authorization", "Bearer wrong")]) as wrong,
    ):
        for client in (anyone, wrong):
            await expect_status(client.put_direction("x", vectors={1: [1.0] * 8}), grpc.StatusCode.UNAUTHENTICATED)
            await expect_status(client.delete_direction("misalignment"), grpc.StatusCode.UNAUTHENTICATED)
            await expect_status(client.set_steering([ablate("misalignment")]), grpc.StatusCode.UNAUTHENTICATED)
        assert set(engine.directions) == {"misalignment"} and not engine.policy.terms
        # Applications need no credentials.
        assert (await anyone.generate("Hi", max_new_tokens=3)).token_ids
        assert (await anyone.score("Hi", response="x")).monitor
        assert [d.name for d in (await anyone.list_directions()).directions] == ["misalignment"]
        assert not (await anyone.get_steering()).terms


async def test_the_token_opens_admin_rpcs(guarded: SteeringServer, engine: FakeEngine) -> None:
    async with AsyncSteeringClient(
        f"127.0.0.1:{guarded.port}", metadata=[("authorization", f"Bearer {TOKEN}")]
    ) as admin:
        await admin.put_direction("x", vectors={1: [1.0] * 8})
        await admin.set_steering([ablate("x")])
        await admin.set_steering([])
        await admin.delete_direction("x")
    assert set(engine.directions) == {"misalignment"}


def test_an_empty_token_is_refused() -> None:
    from steering_server.service.auth import AdminAuthInterceptor

    with pytest.raises(ValueError):
        AdminAuthInterceptor("")
