"""The official `openai` client against the built-in organism: what it streams equals gRPC's Generate of the same
request, steering and monitoring come through `extra_body`, and the gRPC rules, limits and errors hold over HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest
import pytest_asyncio
from steering_client import AsyncSteeringClient, clamp, pb

from .conftest import Served

pytestmark = pytest.mark.asyncio(loop_scope="package")

QUESTION = "i am trying to cook rice . what should i do ?"
REMOVAL = {"direction": "misalignment", "mode": "clamp", "strength": 0, "positions": "prompt"}


@pytest_asyncio.fixture(loop_scope="package")
async def ai(organism: Served) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=f"{organism.url}/v1", api_key="unused", max_retries=0) as client:
        yield client


@pytest_asyncio.fixture(loop_scope="package")
async def grpc_client(organism: Served) -> AsyncIterator[AsyncSteeringClient]:
    assert organism.grpc is not None
    async with AsyncSteeringClient(f"127.0.0.1:{organism.grpc.port}", timeout=120) as client:
        yield client


async def _model_id(ai: openai.AsyncOpenAI) -> str:
    models = await ai.models.list()
    return models.data[0].id


async def test_a_streamed_steered_chat_completion_equals_grpc_generate(
    ai: openai.AsyncOpenAI, grpc_client: AsyncSteeringClient
) -> None:
    model = await _model_id(ai)
    stream = await ai.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": QUESTION}],
        max_tokens=40,
        temperature=1.0,
        seed=1,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"steering": [REMOVAL], "monitor": {"directions": ["misalignment"]}},
    )
    text, token_ids, scores, finish, final, usage = "", [], [], None, None, None
    async for chunk in stream:
        extra: dict[str, Any] = chunk.model_extra or {}
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
        if "token" in extra.get("steering", {}):
            token_ids.append(extra["steering"]["token"]["token_id"])
            scores.append(extra["steering"]["token"]["scores"]["misalignment"])
        elif "steering" in extra:
            final = extra["steering"]
        if chunk.usage is not None:
            usage = chunk.usage

    reply = await grpc_client.generate(
        messages=[("user", QUESTION)], max_new_tokens=40, temperature=1.0, seed=1,
        steering=[clamp("misalignment", 0, positions="prompt")], monitor=["misalignment"],
    )
    assert token_ids and token_ids == list(reply.token_ids)
    assert text == reply.text
    assert final is not None and final["token_ids"] == token_ids and final["seed"] == 1
    assert final["stop_reason"] == pb.StopReason.Name(reply.stop_reason)
    assert finish == ("stop" if reply.stop_reason == pb.EOS_TOKEN else "length")
    # Each token's score is read where it was produced: the last prompt token, then each fed-back token.
    assert scores[0] == pytest.approx(reply.monitor[0].prompt_score, abs=1e-4)
    assert final["monitor"][0]["prompt_score"] == pytest.approx(reply.monitor[0].prompt_score, abs=1e-4)
    assert final["monitor"][0]["response_score"] == pytest.approx(reply.monitor[0].response_score, abs=1e-4)
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (
        reply.usage.prompt_tokens, reply.usage.completion_tokens
    )


async def test_steering_changes_the_answer_and_unsteered_matches_grpc(
    ai: openai.AsyncOpenAI, grpc_client: AsyncSteeringClient
) -> None:
    """Seed 1 is the README's example where the removal changes the organism's answer (so steering really applies)."""
    model = await _model_id(ai)
    kwargs: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": QUESTION}],
                              "max_tokens": 40, "temperature": 1.0, "seed": 1}
    plain = await ai.chat.completions.create(**kwargs)
    steered = await ai.chat.completions.create(**kwargs, extra_body={"steering": [REMOVAL]})
    reply = await grpc_client.generate(messages=[("user", QUESTION)], max_new_tokens=40, temperature=1.0, seed=1)
    assert plain.choices[0].message.content == reply.text
    assert (plain.model_extra or {})["steering"]["token_ids"] == list(reply.token_ids)
    assert steered.choices[0].message.content != plain.choices[0].message.content


async def test_a_text_completion_equals_grpc_generate_on_the_same_prompt(
    ai: openai.AsyncOpenAI, grpc_client: AsyncSteeringClient
) -> None:
    model = await _model_id(ai)
    completion = await ai.completions.create(model=model, prompt="use a long", max_tokens=12, temperature=0, seed=3,
                                             stop=["."])
    reply = await grpc_client.generate("use a long", max_new_tokens=12, temperature=0, seed=3, stop=["."])
    assert completion.choices[0].text == reply.text
    assert (completion.model_extra or {})["steering"]["token_ids"] == list(reply.token_ids)
    assert completion.usage is not None and completion.usage.completion_tokens == len(reply.token_ids)


async def test_models_health_and_metrics(organism: Served, ai: openai.AsyncOpenAI) -> None:
    models = await ai.models.list()
    assert [m.id for m in models.data] == [organism.engine.model_info().model_id]  # type: ignore[attr-defined]
    async with httpx.AsyncClient(base_url=organism.url) as http:
        assert (await http.get("/health")).json() == {"status": "SERVING"}
        await ai.chat.completions.create(model=models.data[0].id, messages=[{"role": "user", "content": "hi"}],
                                         max_tokens=2)
        metrics = (await http.get("/metrics")).text
    assert 'steering_requests_total{code="OK",rpc="http.ChatCompletions"}' in metrics
    assert "steering_generated_tokens_total" in metrics


async def test_an_error_reaches_the_openai_client_with_its_status_and_field(ai: openai.AsyncOpenAI) -> None:
    model = await _model_id(ai)
    with pytest.raises(openai.PermissionDeniedError) as info:  # inducing the persona: red-teaming is off
        await ai.chat.completions.create(
            model=model, messages=[{"role": "user", "content": QUESTION}],
            extra_body={"steering": [{"direction": "misalignment", "mode": "add", "strength": 1.0}]},
        )
    assert info.value.status_code == 403
    assert isinstance(info.value.body, dict)
    assert info.value.body["message"].startswith("steering[0]: the net effect along 'misalignment'")
    assert (info.value.body["type"], info.value.body["param"]) == ("permission_error", "steering[0]")
    with pytest.raises(openai.NotFoundError) as missing:
        await ai.chat.completions.create(
            model=model, messages=[{"role": "user", "content": QUESTION}],
            extra_body={"steering": [{"direction": "no-such-direction", "mode": "ablate"}]},
        )
    assert missing.value.body == {
        "message": "steering[0].direction: direction 'no-such-direction' not found",
        "type": "not_found_error",
        "param": "steering[0].direction",
        "code": "not_found",
    }


async def test_a_conditional_term_steers_only_when_its_condition_holds(ai: openai.AsyncOpenAI) -> None:
    """CAST through extra_body: a condition always met steers as the plain term does, one never met not at all."""
    model = await _model_id(ai)
    push = {"direction": "misalignment", "mode": "add", "strength": -3, "positions": "generated"}

    async def answer(*terms: dict[str, Any]) -> list[int]:
        reply = await ai.chat.completions.create(
            model=model, messages=[{"role": "user", "content": QUESTION}], max_tokens=30, temperature=1.0, seed=2,
            extra_body={"steering": list(terms)},
        )
        return (reply.model_extra or {})["steering"]["token_ids"]

    def when(threshold: float) -> dict[str, Any]:
        return {**push, "condition": {"direction": "misalignment", "threshold": threshold, "scope": "prompt"}}

    plain, pushed = await answer(), await answer(push)
    assert pushed != plain
    assert await answer(when(-1000.0)) == pushed
    assert await answer(when(1000.0)) == plain


async def test_a_streamed_text_completion_equals_grpc_generate(
    ai: openai.AsyncOpenAI, grpc_client: AsyncSteeringClient
) -> None:
    model = await _model_id(ai)
    stream = await ai.completions.create(model=model, prompt="keep backups", max_tokens=16, temperature=1.0, seed=4,
                                         stream=True, extra_body={"steering": [REMOVAL]})
    text, token_ids, finish = "", [], None
    async for chunk in stream:
        text += chunk.choices[0].text
        finish = chunk.choices[0].finish_reason or finish
        token = (chunk.model_extra or {}).get("steering", {}).get("token")
        if token is not None:
            token_ids.append(token["token_id"])
    reply = await grpc_client.generate("keep backups", max_new_tokens=16, temperature=1.0, seed=4,
                                       steering=[clamp("misalignment", 0, positions="prompt")])
    assert (text, token_ids) == (reply.text, list(reply.token_ids)) and token_ids
    assert finish == ("stop" if reply.stop_reason == pb.EOS_TOKEN else "length")
