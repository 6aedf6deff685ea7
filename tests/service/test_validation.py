"""Bad input gets INVALID_ARGUMENT / NOT_FOUND / RESOURCE_EXHAUSTED naming the field; the server keeps serving."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from steering_client import AsyncSteeringClient, ablate, pb, pb_grpc

from .fake_engine import HIDDEN
from .helpers import assert_no_unexpected_errors, expect_status

INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
DENIED = grpc.StatusCode.PERMISSION_DENIED


def gen(**fields: Any) -> pb.GenerateRequest:
    fields.setdefault("prompt", "Hello")
    return pb.GenerateRequest(**fields)


def term(**fields: Any) -> pb.SteeringTerm:
    fields.setdefault("direction", "misalignment")
    fields.setdefault("mode", pb.ABLATE)
    return pb.SteeringTerm(**fields)


def sampling(**fields: Any) -> pb.GenerateRequest:
    return gen(sampling=pb.SamplingParams(**fields))


def put(**fields: Any) -> pb.PutDirectionRequest:
    fields.setdefault("name", "probe")
    return pb.PutDirectionRequest(**fields)


def vec(layer: int | None = 1, values: list[float] | None = None) -> pb.LayerVector:
    lv = pb.LayerVector(values=[0.5] * HIDDEN if values is None else values)
    if layer is not None:
        lv.layer = layer
    return lv


# (rpc name, request, expected code, field the message must start with)
CASES: list[tuple[str, str, Any, grpc.StatusCode, str]] = [
    ("empty prompt", "Generate", pb.GenerateRequest(), INVALID, "prompt"),
    ("two inputs", "Generate", gen(prompt_token_ids=[1, 2]), INVALID, "prompt_token_ids"),
    (
        "bad chat role",
        "Generate",
        pb.GenerateRequest(messages=[pb.ChatMessage(role="robot", content="x")]),
        INVALID,
        "messages[0].role",
    ),
    (
        "token id outside vocab",
        "Generate",
        pb.GenerateRequest(prompt_token_ids=[1, 9999]),
        INVALID,
        "prompt_token_ids[1]",
    ),
    (
        "oversized token prompt",
        "Generate",
        pb.GenerateRequest(prompt_token_ids=[65] * 513),
        EXHAUSTED,
        "prompt_token_ids",
    ),
    ("oversized text prompt", "Generate", gen(prompt="x" * 600), INVALID, "prompt"),
    ("huge text prompt", "Generate", gen(prompt="x" * 600_000), EXHAUSTED, "prompt"),
    ("max_new_tokens 0", "Generate", sampling(max_new_tokens=0), INVALID, "sampling.max_new_tokens"),
    ("max_new_tokens over limit", "Generate", sampling(max_new_tokens=65), INVALID, "sampling.max_new_tokens"),
    ("negative temperature", "Generate", sampling(temperature=-0.5), INVALID, "sampling.temperature"),
    ("NaN temperature", "Generate", sampling(temperature=math.nan), INVALID, "sampling.temperature"),
    ("infinite temperature", "Generate", sampling(temperature=math.inf), INVALID, "sampling.temperature"),
    ("top_p 0", "Generate", sampling(top_p=0.0), INVALID, "sampling.top_p"),
    ("top_p above 1", "Generate", sampling(top_p=1.5), INVALID, "sampling.top_p"),
    ("NaN top_p", "Generate", sampling(top_p=math.nan), INVALID, "sampling.top_p"),
    ("seed beyond int64", "Generate", sampling(seed=2**64 - 1), INVALID, "sampling.seed"),
    ("empty stop", "Generate", sampling(stop=[""]), INVALID, "sampling.stop[0]"),
    ("too many stops", "Generate", sampling(stop=["x"] * 17), INVALID, "sampling.stop"),
    ("unknown direction", "Generate", gen(steering=[term(direction="nope")]), NOT_FOUND, "direction 'nope'"),
    ("empty direction name", "Generate", gen(steering=[term(direction="")]), INVALID, "steering[0].direction"),
    ("unsafe direction name", "Generate", gen(steering=[term(direction="../x")]), INVALID, "steering[0].direction"),
    (
        "unspecified mode",
        "Generate",
        gen(steering=[term(mode=pb.STEERING_MODE_UNSPECIFIED)]),
        INVALID,
        "steering[0].mode",
    ),
    ("unknown mode", "Generate", gen(steering=[term(mode=9)]), INVALID, "steering[0].mode"),
    ("NaN strength", "Generate", gen(steering=[term(strength=math.nan)]), INVALID, "steering[0].strength"),
    ("infinite strength", "Generate", gen(steering=[term(strength=-math.inf)]), INVALID, "steering[0].strength"),
    ("huge strength", "Generate", gen(steering=[term(strength=1e9)]), INVALID, "steering[0].strength"),
    ("layer out of range", "Generate", gen(steering=[term(layers=[4])]), INVALID, "steering[0].layers[0]"),
    ("negative layer", "Generate", gen(steering=[term(layers=[-1])]), INVALID, "steering[0].layers[0]"),
    ("repeated layer", "Generate", gen(steering=[term(layers=[2, 2])]), INVALID, "steering[0].layers[1]"),
    ("inducing without red team", "Generate", gen(steering=[term(mode=pb.ADD, strength=2)]), DENIED, "steering[0]"),
    (
        "unknown monitored direction",
        "Generate",
        gen(monitor=pb.MonitorOptions(directions=["nope"])),
        NOT_FOUND,
        "direction 'nope'",
    ),
    (
        "unsafe monitored name",
        "Generate",
        gen(monitor=pb.MonitorOptions(directions=["a b"])),
        INVALID,
        "monitor.directions[0]",
    ),
    (
        "NaN threshold",
        "Generate",
        gen(monitor=pb.MonitorOptions(stop_threshold=math.nan)),
        INVALID,
        "monitor.stop_threshold",
    ),
    (
        "disabled with directions",
        "Generate",
        gen(monitor=pb.MonitorOptions(disabled=True, directions=["x"])),
        INVALID,
        "monitor.directions",
    ),
    (
        "stream: NaN strength",
        "GenerateStream",
        gen(steering=[term(strength=math.nan)]),
        INVALID,
        "steering[0].strength",
    ),
    ("stream: empty prompt", "GenerateStream", pb.GenerateRequest(), INVALID, "prompt"),
    (
        "too many variants",
        "Compare",
        pb.CompareRequest(prompt="Hi", variants=[pb.Variant(name=f"v{i}") for i in range(5)]),
        INVALID,
        "variants",
    ),
    (
        "duplicate variant",
        "Compare",
        pb.CompareRequest(prompt="Hi", variants=[pb.Variant(name="a"), pb.Variant(name="a")]),
        INVALID,
        "variants[1].name",
    ),
    (
        "empty variant name",
        "Compare",
        pb.CompareRequest(prompt="Hi", variants=[pb.Variant(name="")]),
        INVALID,
        "variants[0].name",
    ),
    (
        "variant bad strength",
        "Compare",
        pb.CompareRequest(prompt="Hi", variants=[pb.Variant(name="a", steering=[term(strength=math.inf)])]),
        INVALID,
        "variants[0].steering[0].strength",
    ),
    ("compare empty prompt", "Compare", pb.CompareRequest(), INVALID, "prompt"),
    (
        "score two responses",
        "Score",
        pb.ScoreRequest(prompt="Hi", response="x", response_token_ids=[1]),
        INVALID,
        "response",
    ),
    (
        "score token outside vocab",
        "Score",
        pb.ScoreRequest(prompt="Hi", response_token_ids=[5000]),
        INVALID,
        "response_token_ids[0]",
    ),
    (
        "score unknown direction",
        "Score",
        pb.ScoreRequest(prompt="Hi", steering=[term(direction="nope")]),
        NOT_FOUND,
        "direction 'nope'",
    ),
    ("put: no vector", "PutDirection", put(), INVALID, "vectors"),
    ("put: both sources", "PutDirection", put(vectors=[vec()], safetensors=b"x"), INVALID, "vectors"),
    ("put: empty name", "PutDirection", put(name="", vectors=[vec()]), INVALID, "name"),
    ("put: unsafe name", "PutDirection", put(name="../../etc/passwd", vectors=[vec()]), INVALID, "name"),
    ("put: long name", "PutDirection", put(name="x" * 65, vectors=[vec()]), INVALID, "name"),
    ("put: wrong size", "PutDirection", put(vectors=[vec(values=[1.0] * (HIDDEN + 1))]), INVALID, "vectors[0].values"),
    ("put: all zero", "PutDirection", put(vectors=[vec(values=[0.0] * HIDDEN)]), INVALID, "vectors[0].values"),
    (
        "put: NaN",
        "PutDirection",
        put(vectors=[vec(values=[math.nan] + [1.0] * (HIDDEN - 1))]),
        INVALID,
        "vectors[0].values",
    ),
    ("put: infinite", "PutDirection", put(vectors=[vec(values=[math.inf] * HIDDEN)]), INVALID, "vectors[0].values"),
    ("put: no layer", "PutDirection", put(vectors=[vec(layer=None)]), INVALID, "vectors[0].layer"),
    ("put: layer out of range", "PutDirection", put(vectors=[vec(layer=4)]), INVALID, "vectors[0].layer"),
    ("put: negative layer", "PutDirection", put(vectors=[vec(layer=-1)]), INVALID, "vectors[0].layer"),
    ("put: repeated layer", "PutDirection", put(vectors=[vec(1), vec(1)]), INVALID, "vectors[1].layer"),
    ("put: no monitor layer", "PutDirection", put(vectors=[vec(1), vec(2)]), INVALID, "monitor_layer"),
    (
        "put: monitor layer without vector",
        "PutDirection",
        put(vectors=[vec(1)], monitor_layer=3),
        INVALID,
        "monitor_layer",
    ),
    (
        "put: bad calibration",
        "PutDirection",
        put(vectors=[vec(1)], calibration={"token": pb.Calibration(mu=0, sigma=0)}),
        INVALID,
        "calibration['token']",
    ),
    (
        "put: unknown pooling",
        "PutDirection",
        put(vectors=[vec(1)], calibration={"p": pb.Calibration(mu=0, sigma=1)}),
        INVALID,
        "calibration['p']",
    ),
    (
        "put: garbage safetensors",
        "PutDirection",
        put(safetensors=b"\x10\x00\x00\x00\x00\x00\x00\x00{not json"),
        INVALID,
        "safetensors",
    ),
    ("put: truncated safetensors", "PutDirection", put(safetensors=b"\xff" * 12), INVALID, "safetensors"),
    ("get: unknown", "GetDirection", pb.GetDirectionRequest(name="nope"), NOT_FOUND, "direction 'nope'"),
    ("get: unsafe name", "GetDirection", pb.GetDirectionRequest(name="a/b"), INVALID, "name"),
    ("delete: unknown", "DeleteDirection", pb.DeleteDirectionRequest(name="nope"), NOT_FOUND, "direction 'nope'"),
    ("delete: empty name", "DeleteDirection", pb.DeleteDirectionRequest(name=""), INVALID, "name"),
    (
        "policy: NaN strength",
        "SetSteering",
        pb.SetSteeringRequest(policy=pb.SteeringPolicy(terms=[term(strength=math.nan)])),
        INVALID,
        "policy.terms[0].strength",
    ),
    (
        "policy: unknown direction",
        "SetSteering",
        pb.SetSteeringRequest(policy=pb.SteeringPolicy(terms=[term(direction="x")])),
        NOT_FOUND,
        "direction 'x'",
    ),
    ("tokenize: huge text", "Tokenize", pb.TokenizeRequest(text="x" * 600_000), EXHAUSTED, "text"),
]


async def _call(stub: pb_grpc.SteeringServiceStub, rpc: str, request: Any) -> Any:
    if rpc == "GenerateStream":
        return [m async for m in stub.GenerateStream(request)]
    method: Callable[[Any], Any] = getattr(stub, rpc)
    return await method(request)


@pytest.mark.parametrize(("rpc", "request_", "code", "field"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
async def test_bad_input_is_refused_naming_the_field(
    stub: pb_grpc.SteeringServiceStub,
    caplog: pytest.LogCaptureFixture,
    rpc: str,
    request_: Any,
    code: grpc.StatusCode,
    field: str,
) -> None:
    await expect_status(_call(stub, rpc, request_), code, field)
    # The server keeps serving, and logged no unexpected exception.
    reply = await stub.Generate(gen(sampling=pb.SamplingParams(max_new_tokens=3, seed=1)))
    assert reply.token_ids
    assert_no_unexpected_errors(caplog)


async def test_a_full_queue_is_resource_exhausted_then_recovers(client: AsyncSteeringClient, engine: Any) -> None:
    engine.limits = engine.limits.__class__(**{**engine.limits.__dict__, "max_queued": 2})
    engine.hold()
    streams = [client.generate_stream("Hi", max_new_tokens=10, seed=i) for i in range(2)]
    for s in streams:
        await anext(s)
    await expect_status(client.generate("Hi"), EXHAUSTED)
    engine.release()
    for s in streams:
        async for _ in s:
            pass
    assert (await client.generate("Hi", max_new_tokens=3, steering=[ablate("misalignment")])).token_ids


async def test_enforced_policy_cannot_be_ignored(client: AsyncSteeringClient) -> None:
    await client.set_steering([ablate("misalignment")], enforced=True)
    await expect_status(client.generate("Hi", ignore_policy=True), DENIED)
