"""Generate and GenerateStream over gRPC against the fake engine."""

from __future__ import annotations

from steering_client import AsyncSteeringClient, ablate, pb

from .fake_engine import FakeEngine


async def test_generate_returns_text_tokens_usage_and_monitor(client: AsyncSteeringClient) -> None:
    reply = await client.generate("Hello there", max_new_tokens=12, seed=5, token_scores=True)
    assert reply.text
    assert 1 <= len(reply.token_ids) <= 12
    assert reply.usage.prompt_tokens == len(b"Hello there")
    assert reply.usage.completion_tokens == len(reply.token_ids)
    assert reply.stop_reason in (pb.MAX_TOKENS, pb.EOS_TOKEN)
    assert reply.seed == 5
    (scores,) = reply.monitor
    assert scores.direction == "misalignment" and scores.layer == 2 and scores.calibrated
    # One score per fed-back generated token: the last token is never fed back.
    assert len(scores.token_scores) == len(reply.token_ids) - 1
    if scores.token_scores:
        assert scores.response_score == sum(scores.token_scores) / len(scores.token_scores)
        assert scores.max_score == max(scores.token_scores)
    assert reply.text_tail == ""


async def test_token_scores_only_when_asked(client: AsyncSteeringClient) -> None:
    reply = await client.generate("Hello", max_new_tokens=8, seed=1)
    assert reply.monitor and not reply.monitor[0].token_scores


async def test_monitor_can_be_disabled(client: AsyncSteeringClient) -> None:
    request = pb.GenerateRequest(prompt="Hello", monitor=pb.MonitorOptions(disabled=True))
    reply = await client._stub.Generate(request)
    assert not reply.monitor


async def test_unset_seed_is_picked_by_the_server_and_reported(client: AsyncSteeringClient) -> None:
    first = await client.generate("Hello", max_new_tokens=10, temperature=1.0)
    again = await client.generate("Hello", max_new_tokens=10, temperature=1.0, seed=first.seed)
    assert again.token_ids == first.token_ids


async def test_stream_deltas_concatenate_to_the_unary_text(client: AsyncSteeringClient) -> None:
    for stop in ((), ("a",), ("zz", " ,")):
        options = {
            "max_new_tokens": 40,
            "temperature": 0.7,
            "seed": 11,
            "stop": stop,
            "steering": [ablate("misalignment")],
        }
        unary = await client.generate("Tell me a story", **options)  # type: ignore[arg-type]
        messages = [m async for m in client.generate_stream("Tell me a story", **options)]  # type: ignore[arg-type]
        *tokens, final = messages
        assert all(m.HasField("token") for m in tokens) and final.HasField("final")
        assert [m.token.index for m in tokens] == list(range(len(tokens)))
        assert [m.token.token_id for m in tokens] == list(final.final.token_ids) == list(unary.token_ids)
        assert "".join(m.token.text_delta for m in tokens) + final.final.text_tail == final.final.text == unary.text
        assert final.final.stop_reason == unary.stop_reason


async def test_stream_scores_belong_to_input_positions(client: AsyncSteeringClient) -> None:
    messages = [m async for m in client.generate_stream("Hi", max_new_tokens=10, seed=3, token_scores=True)]
    *tokens, final = messages
    (scores,) = final.final.monitor
    # Token 0 was produced at the last prompt token; token k at generated token k - 1.
    assert tokens[0].token.scores["misalignment"] == scores.prompt_score
    assert [m.token.scores["misalignment"] for m in tokens[1:]] == list(scores.token_scores)


async def test_stop_sequence_is_trimmed(client: AsyncSteeringClient) -> None:
    for seed in range(100):  # a sampled text long enough to stop inside
        plain = await client.generate("Tell me a story", max_new_tokens=40, temperature=1.0, seed=seed)
        if len(plain.text) >= 8:
            break
    stop = plain.text[5:7]
    stopped = await client.generate("Tell me a story", max_new_tokens=40, temperature=1.0, seed=seed, stop=[stop])
    assert stopped.stop_reason == pb.STOP_SEQUENCE
    assert stopped.text == plain.text[: plain.text.index(stop)]


async def test_chat_messages_and_token_ids_are_inputs(client: AsyncSteeringClient, engine: FakeEngine) -> None:
    chat = await client.generate(
        messages=[("system", "Be brief."), {"role": "user", "content": "Hi"}], max_new_tokens=5
    )
    rendered = engine.tokenize("<|system|>Be brief.\n<|user|>Hi\n<|assistant|>")
    by_ids = await client.generate(prompt_token_ids=rendered, max_new_tokens=5)
    assert chat.token_ids == by_ids.token_ids and chat.usage.prompt_tokens == len(rendered)


async def test_steering_changes_the_output(client: AsyncSteeringClient) -> None:
    plain = await client.generate("Tell me a story", max_new_tokens=20, seed=4)
    steered = await client.generate("Tell me a story", max_new_tokens=20, seed=4, steering=[ablate("misalignment")])
    assert plain.token_ids != steered.token_ids


async def test_model_info_and_tokenize(client: AsyncSteeringClient, engine: FakeEngine) -> None:
    info = await client.model_info()
    assert (info.model_id, info.num_layers, info.hidden_size, info.vocab_size) == ("fake/bytes", 4, 8, 260)
    assert info.limits.max_new_tokens == engine.limits.max_new_tokens
    assert info.limits.max_variants == engine.limits.max_variants
    assert info.server_version
    tokens = await client.tokenize("héllo")
    assert list(tokens.token_ids) == list("héllo".encode())
    assert len(tokens.tokens) == len(tokens.token_ids)
