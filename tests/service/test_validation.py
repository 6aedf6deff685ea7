"""Bad input gets INVALID_ARGUMENT / NOT_FOUND / RESOURCE_EXHAUSTED naming the field; the server keeps serving."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import grpc
import pytest
from steering_client import AsyncSteeringClient, ablate, pb, pb_grpc

from .bad_inputs import BadInput, bad_inputs
from .contract import CONTRACT
from .fake_engine import HIDDEN, LAYERS, VOCAB, FakeEngine
from .helpers import assert_no_unexpected_errors, expect_status

CASES = bad_inputs(HIDDEN, LAYERS, VOCAB, FakeEngine().limits)


async def call_rpc(stub: pb_grpc.SteeringServiceStub, rpc: str, request: Any) -> Any:
    if rpc == "GenerateStream":
        return [m async for m in stub.GenerateStream(request)]
    method: Callable[[Any], Any] = getattr(stub, rpc)
    return await method(request)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
async def test_bad_input_is_refused_naming_the_field(
    stub: pb_grpc.SteeringServiceStub, caplog: pytest.LogCaptureFixture, case: BadInput
) -> None:
    await expect_status(call_rpc(stub, case.rpc, case.request), case.code, case.field)
    # The server keeps serving, and logged no unexpected exception.
    reply = await stub.Generate(pb.GenerateRequest(prompt="Hi", sampling=pb.SamplingParams(max_new_tokens=3)))
    assert reply.token_ids
    assert_no_unexpected_errors(caplog)


async def test_a_full_queue_is_resource_exhausted_then_recovers(
    client: AsyncSteeringClient, engine: FakeEngine
) -> None:
    engine.limits = replace(engine.limits, max_queued=2)
    engine.hold()
    streams = [client.generate_stream("Hi", max_new_tokens=10, seed=i) for i in range(2)]
    for s in streams:
        await anext(s)
    await expect_status(client.generate("Hi"), grpc.StatusCode.RESOURCE_EXHAUSTED)
    engine.release()
    for s in streams:
        async for _ in s:
            pass
    assert (await client.generate("Hi", max_new_tokens=3, steering=[ablate("misalignment")])).token_ids


async def test_an_enforced_policy_cannot_be_ignored(client: AsyncSteeringClient) -> None:
    await client.set_steering([ablate("misalignment")], enforced=True)
    await expect_status(client.generate("Hi", ignore_policy=True), grpc.StatusCode.PERMISSION_DENIED)


@pytest.mark.parametrize("check", CONTRACT, ids=[c.__name__ for c in CONTRACT])
async def test_contract(client: AsyncSteeringClient, check: Callable[[AsyncSteeringClient], Any]) -> None:
    await check(client)
