"""Compare (variants with shared noise) and Score (the scores Generate would give)."""

from __future__ import annotations

from steering_client import AsyncSteeringClient, ablate, pb


async def test_default_variants_are_unsteered_and_ablate(client: AsyncSteeringClient) -> None:
    reply = await client.compare("Tell me a story", max_new_tokens=20, seed=3)
    assert [v.name for v in reply.variants] == ["unsteered", "ablate-misalignment"]
    assert reply.seed == 3
    assert not reply.variants[0].HasField("diverges_at")


async def test_unsteered_variant_equals_plain_generate(client: AsyncSteeringClient) -> None:
    for seed, temperature in ((1, 0.0), (2, 0.8), (3, 1.5)):
        compared = await client.compare("Tell me a story", max_new_tokens=24, temperature=temperature, seed=seed)
        plain = await client.generate("Tell me a story", max_new_tokens=24, temperature=temperature, seed=seed)
        unsteered = compared.variants[0].result
        assert (unsteered.token_ids, unsteered.text) == (plain.token_ids, plain.text)
        assert [s.prompt_score for s in unsteered.monitor] == [s.prompt_score for s in plain.monitor]


async def test_divergence_is_the_first_differing_token(client: AsyncSteeringClient) -> None:
    variants = {"plain": [], "ablated": [ablate("misalignment")], "same": []}
    reply = await client.compare("Tell me a story", max_new_tokens=24, seed=9, variants=variants)
    plain, ablated, same = (v.result.token_ids for v in reply.variants)
    assert [v.name for v in reply.variants] == ["plain", "ablated", "same"]
    k = reply.variants[1].diverges_at
    assert reply.variants[1].HasField("diverges_at")
    assert list(plain[:k]) == list(ablated[:k]) and (k == min(len(plain), len(ablated)) or plain[k] != ablated[k])
    assert same == plain and not reply.variants[2].HasField("diverges_at")


async def test_each_variant_equals_its_own_generate(client: AsyncSteeringClient) -> None:
    reply = await client.compare(
        "Tell me a story",
        max_new_tokens=16,
        temperature=1.0,
        seed=5,
        variants={"a": [], "b": [ablate("misalignment")], "c": [ablate("misalignment", 0.5, [2, 3])]},
    )
    for variant, steering in zip(
        reply.variants, ([], [ablate("misalignment")], [ablate("misalignment", 0.5, [2, 3])]), strict=True
    ):
        solo = await client.generate(
            "Tell me a story", max_new_tokens=16, temperature=1.0, seed=5, steering=steering, ignore_policy=True
        )
        assert variant.result.token_ids == solo.token_ids


async def test_score_agrees_with_generate(client: AsyncSteeringClient) -> None:
    for steering in ([], [ablate("misalignment", 1.0, [0, 1, 2, 3])]):
        reply = await client.generate(
            "Tell me a story", max_new_tokens=20, seed=7, steering=steering, token_scores=True
        )
        scored = await client.score("Tell me a story", response_token_ids=list(reply.token_ids), steering=steering)
        assert list(scored.response_token_ids) == list(reply.token_ids)
        assert scored.usage.prompt_tokens == reply.usage.prompt_tokens
        assert scored.usage.completion_tokens == len(reply.token_ids)
        for got, want in zip(scored.monitor, reply.monitor, strict=True):
            assert (got.direction, got.layer, got.calibrated) == (want.direction, want.layer, want.calibrated)
            assert got.post_intervention == want.post_intervention == bool(steering)
            assert got.prompt_score == want.prompt_score
            assert list(got.token_scores) == list(want.token_scores)
            assert got.response_score == want.response_score


async def test_score_of_text_and_prompt_only(client: AsyncSteeringClient) -> None:
    scored = await client.score("Hello", response="abc")
    assert list(scored.response_token_ids) == list(b"abc")
    assert len(scored.monitor[0].token_scores) == 2  # the last response token is never fed back
    prompt_only = await client.score("Hello")
    (s,) = prompt_only.monitor
    assert not s.HasField("response_score") and not s.token_scores
    assert s.prompt_score == scored.monitor[0].prompt_score


async def test_score_monitor_options_select_directions(client: AsyncSteeringClient) -> None:
    await client.put_direction("other", vectors={1: [1.0] * 8})
    scored = await client.score("Hello", response="abc", monitor=["other"])
    assert [s.direction for s in scored.monitor] == ["other"]
    assert not scored.monitor[0].token_scores  # monitor given without token_scores
    assert isinstance(scored, pb.ScoreResponse)
