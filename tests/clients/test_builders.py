"""Request builders: Python values in, the messages the server expects out."""

from __future__ import annotations

import pytest
from steering_client import ablate, add, clamp, parse_steering, pb
from steering_client.builders import compare_request, generate_request, put_direction_request, score_request


def test_generate_request_sets_only_what_was_given() -> None:
    request = generate_request("Hi", max_new_tokens=5, stop=["\n"], monitor=["m"], token_scores=True)
    assert request.prompt == "Hi" and request.sampling.max_new_tokens == 5 and list(request.sampling.stop) == ["\n"]
    assert not request.sampling.HasField("seed") and not request.sampling.HasField("top_p")
    assert list(request.monitor.directions) == ["m"] and request.monitor.token_scores
    assert not generate_request("Hi").sampling.HasField("max_new_tokens")  # the server's default applies


def test_messages_accept_pairs_mappings_and_messages() -> None:
    request = generate_request(
        messages=[("system", "s"), {"role": "user", "content": "u"}, pb.ChatMessage(role="assistant", content="a")]
    )
    assert [(m.role, m.content) for m in request.messages] == [("system", "s"), ("user", "u"), ("assistant", "a")]
    assert not request.prompt


def test_steering_helpers() -> None:
    assert ablate("m") == pb.SteeringTerm(direction="m", mode=pb.ABLATE, strength=1.0)
    assert add("m", -2.0, [3]) == pb.SteeringTerm(direction="m", mode=pb.ADD, strength=-2.0, layers=[3])
    assert clamp("m", 0.5) == pb.SteeringTerm(direction="m", mode=pb.CLAMP, strength=0.5)
    assert clamp("m", 0, positions="prompt").positions == pb.PROMPT_POSITIONS
    assert add("m", 1, positions="last_prompt").positions == pb.LAST_PROMPT_POSITION
    with pytest.raises(ValueError, match="positions"):
        ablate("m", positions="everywhere")


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("m", pb.SteeringTerm(direction="m", mode=pb.ABLATE)),
        ("m:add:-2", pb.SteeringTerm(direction="m", mode=pb.ADD, strength=-2.0)),
        ("m:clamp:0:4,5", pb.SteeringTerm(direction="m", mode=pb.CLAMP, strength=0.0, layers=[4, 5])),
        ("m::0.5", pb.SteeringTerm(direction="m", mode=pb.ABLATE, strength=0.5)),
        ("m:clamp:0::prompt", pb.SteeringTerm(direction="m", mode=pb.CLAMP, strength=0.0,
                                              positions=pb.PROMPT_POSITIONS)),
    ],
)
def test_parse_steering(spec: str, expected: pb.SteeringTerm) -> None:
    assert parse_steering(spec) == expected


@pytest.mark.parametrize("spec", ["", ":add", "m:shift", "m:add:x", "m:add:1:a", "m:add:1::somewhere", "m:a:1:2:3:4"])
def test_parse_steering_refuses_bad_specs(spec: str) -> None:
    with pytest.raises(ValueError):
        parse_steering(spec)


def test_unset_strength_stays_unset_so_the_server_default_applies() -> None:
    assert not parse_steering("m").HasField("strength")


def test_compare_and_score_requests() -> None:
    request = compare_request("Hi", seed=3, variants={"plain": [], "ablated": [ablate("m")]})
    assert [v.name for v in request.variants] == ["plain", "ablated"] and request.sampling.seed == 3
    score = score_request("Hi", response_token_ids=[1, 2])
    assert list(score.response_token_ids) == [1, 2] and not score.HasField("monitor")
    assert score_request("Hi", monitor=["m"]).HasField("monitor")


def test_put_direction_request() -> None:
    request = put_direction_request("d", vectors={0: [1.0, 2.0]}, monitor_layer=0)
    assert request.vectors[0].layer == 0 and list(request.vectors[0].values) == [1.0, 2.0]
    assert request.HasField("monitor_layer") and not request.safetensors
