"""End to end over real gRPC against the real engine on a tiny seeded Llama (CPU, no download).

One engine and server for the module (starting the engine runs its canary); each test leaves the registry and
policy as it found them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import grpc.aio
import pytest
import pytest_asyncio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from steering_client import AsyncSteeringClient, ablate, add, clamp, pb, pb_grpc

from steering_server.engine import Engine
from steering_server.service import SERVICE_NAME, SteeringServer
from steering_server.types import EngineLimits

from .bad_inputs import BadInput, bad_inputs
from .contract import CONTRACT
from .helpers import assert_no_unexpected_errors, expect_status, serving, tiny_llama_engine, wait_until
from .test_validation import call_rpc

pytestmark = pytest.mark.asyncio(loop_scope="module")

LIMITS = EngineLimits(max_new_tokens=1024, max_prompt_tokens=512, max_queued=256, max_variants=4)
PROMPTS = ["Hello there", "The weather today", "Tell me about cats", "Once upon a time"]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engine() -> AsyncIterator[Engine]:
    # Batch rows for 200 requests at once, so all of them are generating when they are cancelled.
    async with tiny_llama_engine(LIMITS, max_requests_per_batch=256) as eng:
        yield eng


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server(engine: Engine) -> AsyncIterator[SteeringServer]:
    async with serving(engine) as srv:
        yield srv


@pytest_asyncio.fixture(loop_scope="module")
async def client(server: SteeringServer) -> AsyncIterator[AsyncSteeringClient]:
    async with AsyncSteeringClient(f"127.0.0.1:{server.port}", timeout=120) as c:
        yield c


async def test_health_is_serving_after_the_canary(server: SteeringServer, engine: Engine) -> None:
    assert engine.healthy
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_model_info_and_tokenize(client: AsyncSteeringClient) -> None:
    info = await client.model_info()
    assert (info.model_id, info.architecture, info.num_layers, info.hidden_size) == ("tiny-llama", "llama", 4, 64)
    assert info.limits.max_new_tokens == LIMITS.max_new_tokens
    tokens = await client.tokenize("héllo")
    assert len(tokens.token_ids) == len("héllo".encode())  # one token per byte


async def test_stream_deltas_concatenate_to_the_unary_text(client: AsyncSteeringClient) -> None:
    for i, prompt in enumerate(PROMPTS):
        options: dict[str, Any] = {"max_new_tokens": 24, "temperature": 0.9 * (i % 2), "seed": i}
        unary = await client.generate(prompt, **options)
        if i >= 2:  # with stop sequences taken from the text, so some are held back and one matches
            options["stop"] = [unary.text[6:8] or "zz", "qqq"]
            unary = await client.generate(prompt, **options)
        *tokens, final = [m async for m in client.generate_stream(prompt, **options)]
        deltas = "".join(m.token.text_delta for m in tokens)
        assert deltas + final.final.text_tail == final.final.text == unary.text
        assert list(final.final.token_ids) == list(unary.token_ids) == [m.token.token_id for m in tokens]
        assert final.final.stop_reason == unary.stop_reason


async def test_streamed_scores_belong_to_the_input_position_of_each_token(client: AsyncSteeringClient) -> None:
    *tokens, final = [m async for m in client.generate_stream("Hello there", max_new_tokens=10, token_scores=True)]
    (scores,) = final.final.monitor
    assert len(scores.token_scores) == len(tokens) - 1
    assert tokens[0].token.scores["misalignment"] == scores.prompt_score
    assert [m.token.scores["misalignment"] for m in tokens[1:]] == list(scores.token_scores)


async def test_compare_unsteered_variant_equals_plain_generate(client: AsyncSteeringClient) -> None:
    for seed, temperature in ((1, 0.0), (2, 1.0)):
        options: dict[str, Any] = {"max_new_tokens": 16, "temperature": temperature, "seed": seed}
        compared = await client.compare("Tell me about cats", **options)
        plain = await client.generate("Tell me about cats", **options)
        assert [v.name for v in compared.variants] == ["unsteered", "ablate-misalignment"]
        unsteered = compared.variants[0].result
        assert (list(unsteered.token_ids), unsteered.text) == (list(plain.token_ids), plain.text)
        # Every variant equals a Generate with its steering and the same seed.
        ablated = await client.generate("Tell me about cats", steering=[ablate("misalignment")], **options)
        assert list(compared.variants[1].result.token_ids) == list(ablated.token_ids)


async def test_compare_reports_where_steering_diverges(client: AsyncSteeringClient) -> None:
    variants = {"plain": [], "pushed": [add("misalignment", -8.0)]}
    reply = await client.compare("Once upon a time", max_new_tokens=16, seed=3, variants=variants)
    plain, pushed = (list(v.result.token_ids) for v in reply.variants)
    assert plain != pushed, "steering had no effect: the test would prove nothing"
    k = reply.variants[1].diverges_at
    assert plain[:k] == pushed[:k] and plain[k] != pushed[k]


async def test_score_agrees_with_generate(client: AsyncSteeringClient) -> None:
    # Unsteered, steered at and above the monitor layer, and steered below it (post-intervention scores).
    for steering, below in (([], False), ([ablate("misalignment")], False), ([add("misalignment", -4.0, [0])], True)):
        reply = await client.generate("Hello there", max_new_tokens=12, seed=5, steering=steering, token_scores=True)
        scored = await client.score("Hello there", response_token_ids=list(reply.token_ids), steering=steering)
        assert scored.usage.prompt_tokens == reply.usage.prompt_tokens
        (got,), (want,) = scored.monitor, reply.monitor
        assert (got.direction, got.layer, got.post_intervention) == (want.direction, want.layer, below)
        assert want.post_intervention == below
        # Prefill and one-token decode take different fp32 kernels: equal up to rounding.
        assert got.prompt_score == pytest.approx(want.prompt_score, rel=1e-4, abs=1e-4)
        assert list(got.token_scores) == pytest.approx(list(want.token_scores), rel=1e-4, abs=1e-4)
        assert len(got.token_scores) == len(reply.token_ids) - 1
        assert got.response_score == pytest.approx(want.response_score, rel=1e-4, abs=1e-4)


def _mixed(i: int) -> dict[str, Any]:
    steering = [[], [ablate("misalignment")], [add("misalignment", -6.0)], [clamp("misalignment", -2.0, [1, 2])]][i % 4]
    return {"max_new_tokens": 20, "temperature": 0.8 * (i % 2), "seed": 100 + i, "steering": steering}


async def test_sixteen_concurrent_mixed_steering_calls_each_equal_their_solo_run(client: AsyncSteeringClient) -> None:
    solo = [await client.generate(PROMPTS[i % 4], **_mixed(i)) for i in range(16)]
    together = await asyncio.gather(*(client.generate(PROMPTS[i % 4], **_mixed(i)) for i in range(16)))
    for i, (a, b) in enumerate(zip(solo, together, strict=True)):
        assert list(a.token_ids) == list(b.token_ids), f"call {i} changed when batched with the others"
        assert a.text == b.text
    # Steering took effect, so equality above is not trivial: same prompt and sampling, different steering.
    unsteered_0 = await client.generate(PROMPTS[0], **{**_mixed(0), "steering": []})
    pushed_0 = await client.generate(PROMPTS[0], **{**_mixed(0), "steering": [add("misalignment", -6.0)]})
    assert list(unsteered_0.token_ids) != list(pushed_0.token_ids)


async def test_two_hundred_cancelled_streams_leave_nothing_running(server: SteeringServer, engine: Engine) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.SteeringServiceStub(channel)
        # Greedy on this prompt runs 1000 tokens without EOS (steered or not), so no stream ends on its own.
        calls = [
            stub.GenerateStream(
                pb.GenerateRequest(
                    prompt="Once upon a time",
                    sampling=pb.SamplingParams(max_new_tokens=1000),
                    steering=[ablate("misalignment")] if i % 2 else [],
                )
            )
            for i in range(200)
        ]
        for call in calls:  # every request is generating
            assert (await call.read()).HasField("token")
        stats = engine.stats()
        assert (stats.queued, stats.running) == (200, 200)
        for call in calls:
            call.cancel()
        await wait_until(
            lambda: (engine.stats().running, engine.stats().queued) == (0, 0), "every cancelled request freed"
        )
        assert {await call.code() for call in calls} == {grpc.StatusCode.CANCELLED}
    async with AsyncSteeringClient(f"127.0.0.1:{server.port}") as fresh:
        assert (await fresh.generate("Hi", max_new_tokens=3)).token_ids


BAD = bad_inputs(64, 4, 262, LIMITS)


@pytest.mark.parametrize("case", BAD, ids=[c.name for c in BAD])
async def test_bad_input_is_refused_naming_the_field(
    server: SteeringServer, caplog: pytest.LogCaptureFixture, case: BadInput
) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.SteeringServiceStub(channel)
        await expect_status(call_rpc(stub, case.rpc, case.request), case.code, case.field)
        reply = await stub.Generate(pb.GenerateRequest(prompt="Hi", sampling=pb.SamplingParams(max_new_tokens=2)))
        assert reply.token_ids
    assert_no_unexpected_errors(caplog)


@pytest.mark.parametrize("check", CONTRACT, ids=[c.__name__ for c in CONTRACT])
async def test_contract(client: AsyncSteeringClient, check: Callable[[AsyncSteeringClient], Any]) -> None:
    await check(client)
