"""Behaviour both engines must share, over gRPC (issue 8, findings 2, 8, 9): run by test_validation.py on the fake
engine and by test_real_engine.py on the real one. Each check leaves the policy as it found it (none)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import grpc
from steering_client import AsyncSteeringClient, ablate, add

from .helpers import expect_status

__all__ = ["CONTRACT"]


async def repeated_ablation_acts_once(client: AsyncSteeringClient) -> None:
    once = await client.generate("Tell me about cats", max_new_tokens=8, seed=3, steering=[ablate("misalignment")])
    four = await client.generate(
        "Tell me about cats", max_new_tokens=8, seed=3, steering=[ablate("misalignment")] * 4
    )
    assert list(four.token_ids) == list(once.token_ids)


async def enforced_policy_composes_and_compare_says_so(client: AsyncSteeringClient) -> None:
    plain = await client.generate("Tell me about cats", max_new_tokens=8, seed=3, ignore_policy=True)
    ablated = await client.generate("Tell me about cats", max_new_tokens=8, seed=3, steering=[ablate("misalignment")])
    await client.set_steering([ablate("misalignment")], enforced=True)
    try:
        # A request's own ABLATE 1 under an enforced ABLATE 1 is ablation, not a reflection.
        both = await client.generate("Tell me about cats", max_new_tokens=8, seed=3, steering=[ablate("misalignment")])
        assert list(both.token_ids) == list(ablated.token_ids)
        reply = await client.compare("Tell me about cats", max_new_tokens=8, seed=3)
        assert [v.name for v in reply.variants] == ["policy", "policy+ablate-misalignment"]
        assert all(list(v.result.token_ids) == list(ablated.token_ids) for v in reply.variants)
        await expect_status(client.generate("Hi", ignore_policy=True), grpc.StatusCode.PERMISSION_DENIED)
        # Undoing the enforced removal is inducing.
        await expect_status(
            client.generate("Hi", steering=[add("misalignment", 1.0)]), grpc.StatusCode.PERMISSION_DENIED
        )
    finally:
        await client.set_steering([])
    reply = await client.compare("Tell me about cats", max_new_tokens=8, seed=3)
    assert [v.name for v in reply.variants] == ["unsteered", "ablate-misalignment"]
    assert list(reply.variants[0].result.token_ids) == list(plain.token_ids)


CONTRACT: list[Callable[[AsyncSteeringClient], Awaitable[None]]] = [
    repeated_ablation_acts_once,
    enforced_policy_composes_and_compare_says_so,
]
