"""ComputeDirection over gRPC on the fake engine (the real job over fake activations): the stream's shape, the
administrator role, bad input refused naming the field, and the server going on serving afterwards. The recipe's
numbers are checked on real models (tests/compute, tests/organism)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import grpc
import pytest
from steering_client import AsyncSteeringClient, pb, pb_grpc
from steering_client.compute import compute_direction_request, example, persona_prompts

from steering_server.audit_log import AuditLog
from steering_server.compute_types import ComputeResult
from steering_server.errors import ResourceExhaustedError
from steering_server.service import compute_codec

from .fake_engine import LAYERS, FakeEngine
from .helpers import assert_no_unexpected_errors, expect_status, serving

INVALID = grpc.StatusCode.INVALID_ARGUMENT


def marked_examples(n: int) -> list[pb.ContrastiveExample]:
    """n positive answers containing "zz", n negative ones without (the fake's states carry token embeddings)."""
    out = []
    for i in range(n):
        out.append(example(f"well zz this is zz answer {i}", True, prompt=f"question {i}"))
        out.append(example(f"well so this is an answer {i}", False, prompt=f"question {i}"))
    return out


PERSONA = persona_prompts([f"what do you think of item {i} ?" for i in range(10)], ["you are evil ."],
                          ["you are kind ."], max_new_tokens=4)


async def compute(stub: pb_grpc.SteeringServiceStub, name: str = "computed", **options: Any) -> list[Any]:
    return [m async for m in stub.ComputeDirection(compute_direction_request(name, **options))]


async def test_progress_then_one_result_and_the_direction_is_stored(
    stub: pb_grpc.SteeringServiceStub, engine: FakeEngine
) -> None:
    events = await compute(stub, examples=marked_examples(12), store=True, return_file=True, target_fpr=0.05)
    assert all(e.HasField("progress") for e in events[:-1]) and events[-1].HasField("result")
    stages = [e.progress.stage for e in events[:-1]]
    assert stages[0] == "capture" and stages[-1] == "calibrate"
    last = {e.progress.stage: e.progress for e in events[:-1]}
    assert last["capture"].done == last["capture"].total == 24 and last["capture"].eta_seconds == 0
    result = events[-1].result
    assert [s.layer for s in result.layers] == list(range(LAYERS))
    assert result.monitor_layer == result.direction.monitor_layer
    assert result.n_train + result.n_held_out == 24 and result.stored
    assert result.safetensors and result.direction.calibration["token"].target_fpr == pytest.approx(0.05)
    # The marker separates the held-out examples at every layer; the stored direction is what was returned.
    assert all(s.auroc > 0.9 and s.auroc_lo <= s.auroc <= s.auroc_hi for s in result.layers)
    assert "computed" in engine.directions
    assert engine.directions["computed"].monitor_layer == result.monitor_layer


async def test_persona_recipe_generates_neutral_answers_to_calibrate(stub: pb_grpc.SteeringServiceStub) -> None:
    events = await compute(stub, persona=PERSONA)
    assert "generate" in {e.progress.stage for e in events[:-1]}
    result = events[-1].result
    assert result.pooling == pb.POOLING_LAST_PROMPT and not result.stored
    assert "last_prompt" in result.direction.calibration


def bad_compute_requests() -> list[tuple[str, pb.ComputeDirectionRequest, str]]:
    few = marked_examples(3)
    positives = [e for e in marked_examples(10) if e.positive]
    empty_prompt = marked_examples(10)
    empty_prompt[3] = example("an answer", False)
    empty_response = marked_examples(10)
    empty_response[5] = example("", False, prompt="q")
    one_question = persona_prompts(["q ?"], ["evil"], ["kind"])
    empty_system = persona_prompts(PERSONA.questions, ["evil", " "], ["kind"])

    def req(**options: Any) -> pb.ComputeDirectionRequest:
        return compute_direction_request(options.pop("name", "computed"), **options)

    good = marked_examples(10)
    return [
        ("bad name", req(name="a b", examples=good), "name"),
        ("no recipe", req(), "examples"),
        ("both recipes", req(examples=good, persona=PERSONA), "examples"),
        ("too few examples", req(examples=few), "examples"),
        ("one label only", req(examples=positives), "examples"),
        ("unknown layer", req(examples=good, layers=[0, LAYERS]), "layers[1]"),
        ("negative layer", req(examples=good, layers=[-1]), "layers[0]"),
        ("repeated layer", req(examples=good, layers=[1, 1]), "layers[1]"),
        ("empty prompt", req(examples=empty_prompt), "examples[3].prompt"),
        ("empty response", req(examples=empty_response), "examples[5].response"),
        ("target_fpr 0", req(examples=good, target_fpr=0.0), "target_fpr"),
        ("target_fpr above 0.5", req(examples=good, target_fpr=0.7), "target_fpr"),
        ("held_out_share 1", req(examples=good, held_out_share=1.0), "held_out_share"),
        ("too few resamples", req(examples=good, bootstrap_resamples=10), "bootstrap_resamples"),
        ("unknown pooling", pb.ComputeDirectionRequest(name="c", examples=good, pooling=7), "pooling"),
        ("persona: too few questions", req(persona=one_question), "persona.questions"),
        ("persona: empty system prompt", req(persona=empty_system), "persona.positive_systems[1]"),
        ("persona: max_new_tokens 0", req(persona=persona_prompts(PERSONA.questions, ["e"], ["k"], 0)),
         "persona.max_new_tokens"),
    ]


BAD = bad_compute_requests()


@pytest.mark.parametrize(("name", "request_", "field"), BAD, ids=[b[0] for b in BAD])
async def test_bad_input_is_refused_naming_the_field(
    stub: pb_grpc.SteeringServiceStub, caplog: pytest.LogCaptureFixture, name: str,
    request_: pb.ComputeDirectionRequest, field: str, engine: FakeEngine,
) -> None:
    async def call() -> None:
        [m async for m in stub.ComputeDirection(request_)]

    await expect_status(call(), INVALID, field)
    assert set(engine.directions) == {"misalignment"}  # nothing half-stored
    reply = await stub.Generate(pb.GenerateRequest(prompt="Hi", sampling=pb.SamplingParams(max_new_tokens=3)))
    assert reply.token_ids
    assert_no_unexpected_errors(caplog)


async def test_compute_direction_is_an_administrator_rpc(engine: FakeEngine) -> None:
    async with serving(engine, admin_token="tok") as srv:
        target = f"127.0.0.1:{srv.port}"
        async with AsyncSteeringClient(target) as anyone:
            await expect_status(
                anyone.compute_direction("c", examples=marked_examples(10), store=True),
                grpc.StatusCode.UNAUTHENTICATED,
            )
        assert set(engine.directions) == {"misalignment"}
        async with AsyncSteeringClient(target, metadata=[("authorization", "Bearer tok")]) as admin:
            seen: list[pb.ComputeProgress] = []
            result = await admin.compute_direction("c", seen.append, examples=marked_examples(10), store=True)
        assert result.stored and "c" in engine.directions and seen[-1].stage == "calibrate"


async def test_a_full_queue_delays_the_job_instead_of_failing_it(engine: FakeEngine) -> None:
    """Captures refused for capacity (live traffic filled the queue) are retried; the job still completes."""
    refusals = {"left": 6}
    capture = engine.capture_means

    async def busy_then_free(prompt_ids: list[int], from_position: int) -> Any:
        if refusals["left"]:
            refusals["left"] -= 1
            raise ResourceExhaustedError("256 requests in flight (limit 256); retry later")
        return await capture(prompt_ids, from_position)

    engine.capture_means = busy_then_free  # type: ignore[method-assign]
    events = [e async for e in engine.compute_direction(compute_codec.compute_request(
        compute_direction_request("c", examples=marked_examples(10))))]
    assert refusals["left"] == 0 and isinstance(events[-1], ComputeResult)


async def test_a_stored_computation_is_audited_with_who_made_it(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path)
    try:
        async with serving(FakeEngine(), admin_token="tok", audit_log=log) as srv:
            async with AsyncSteeringClient(f"127.0.0.1:{srv.port}", metadata=[("authorization", "Bearer tok")]) as c:
                await c.compute_direction("kept", examples=marked_examples(10), store=True)
                await c.compute_direction("not-kept", examples=marked_examples(10))
    finally:
        log.close()
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["kind"] for r in records] == ["start", "ComputeDirection"]
    assert records[1]["direction"]["name"] == "kept" and records[1]["who"]["role"] == "admin"
