"""Behaviour both engines must share, over gRPC (issue 8, findings 2, 8, 9): run by test_validation.py on the fake
engine and by test_real_engine.py on the real one. Each check leaves the policy as it found it (none)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import grpc
import torch
from steering_client import AsyncSteeringClient, ablate, add, pb

from steering_server.direction_files import direction_to_bytes
from steering_server.directions import Calibration, Direction

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


PROMPT = "Tell me about cats"
N = 16


async def _measured(client: AsyncSteeringClient) -> tuple[pb.GenerateResponse, float, int]:
    """An alert-free greedy run with its token scores, a threshold its scores reach three times, and the index j
    of the first token_scores[j] that reaches it."""
    plain = await client.generate(PROMPT, max_new_tokens=N, seed=3, token_scores=True, ignore_policy=True)
    scores = list(plain.monitor[0].token_scores)
    threshold = sorted(scores)[-3]
    return plain, threshold, next(j for j, v in enumerate(scores) if v >= threshold)


def _rule(action: int, threshold: float, scope: int = pb.RUNNING_SCORE, **fields: object) -> pb.AlertRule:
    return pb.AlertRule(direction="misalignment", threshold=threshold, scope=scope, action=action, **fields)


async def record_rule_leaves_tokens_and_records_the_alert(client: AsyncSteeringClient) -> None:
    plain, threshold, j = await _measured(client)
    await client.set_steering(alerts=[_rule(pb.RECORD, threshold)])
    try:
        assert list((await client.get_steering()).alerts) == [_rule(pb.RECORD, threshold)]
        # The rule reads its direction for every request: deleting it is refused while the rule stands.
        await expect_status(client.delete_direction("misalignment"), grpc.StatusCode.INVALID_ARGUMENT, "name")
        recorded = await client.generate(PROMPT, max_new_tokens=N, seed=3, token_scores=True)
        # Monitoring is off for this request, yet the rule reads its direction: the alert, and no scores.
        quiet = await client.generate(PROMPT, max_new_tokens=N, seed=3, ignore_policy=True, monitor_disabled=True)
    finally:
        await client.set_steering()
    for reply in (recorded, quiet):
        assert list(reply.token_ids) == list(plain.token_ids)
        (alert,) = reply.alerts
        assert (alert.direction, alert.action, alert.scope, alert.source) == (
            "misalignment", pb.RECORD, pb.RUNNING_SCORE, "policy")
        assert (alert.token_index, alert.threshold) == (j, threshold)
        assert abs(alert.score - plain.monitor[0].token_scores[j]) <= 1e-4 * max(1.0, abs(alert.score))
    assert not quiet.monitor


async def _stream(client: AsyncSteeringClient, **options: object) -> tuple[list[pb.TokenEvent], pb.GenerateResponse]:
    *events, final = [m async for m in client.generate_stream(PROMPT, max_new_tokens=N, seed=3, **options)]
    return [e.token for e in events], final.final


async def stop_holds_back_the_tokens_that_triggered_it(client: AsyncSteeringClient) -> None:
    plain, threshold, j = await _measured(client)
    # token_scores[j] is read where token j was fed back: j (whose state scored) and j + 1 (sampled from it) are held
    # back, so tokens 0..j-1 are all a client ever sees.
    kept = (await client.generate(PROMPT, max_new_tokens=j, seed=3)).text if j else ""
    by_request = await _stream(client, stop_threshold=threshold, ignore_policy=True)
    await client.set_steering(alerts=[_rule(pb.STOP, threshold)])
    try:
        by_rule = await _stream(client)
    finally:
        await client.set_steering()
    for (events, final), source in ((by_request, "request"), (by_rule, "policy")):
        assert final.stop_reason == pb.MONITOR_ALERT
        assert [e.token_id for e in events] == list(final.token_ids) == list(plain.token_ids[:j])
        assert "".join(e.text_delta for e in events) + final.text_tail == final.text == kept
        (alert,) = final.alerts
        assert (alert.action, alert.source, alert.token_index, alert.threshold) == (pb.STOP, source, j, threshold)
        assert abs(alert.score - plain.monitor[0].token_scores[j]) <= 1e-4 * max(1.0, abs(alert.score))
    # stop_threshold reads generated tokens only: below the prompt score and every token score, it stops at the
    # first generated token's reading (index 0), not at the prompt's.
    low = min(plain.monitor[0].prompt_score, *plain.monitor[0].token_scores) - 1.0
    events, final = await _stream(client, stop_threshold=low, ignore_policy=True)
    assert (events, list(final.token_ids), final.alerts[0].token_index) == ([], [], 0)
    # A PROMPT-scope STOP rule is the prompt alarm: token 0 (sampled from the alarming state) is held back.
    await client.set_steering(alerts=[_rule(pb.STOP, low, pb.PROMPT_SCORE)])
    try:
        events, final = await _stream(client)
    finally:
        await client.set_steering()
    assert (events, list(final.token_ids), final.stop_reason) == ([], [], pb.MONITOR_ALERT)
    assert not final.alerts[0].HasField("token_index") and final.alerts[0].scope == pb.PROMPT_SCORE


async def steer_rule_equals_the_conditional_term(client: AsyncSteeringClient) -> None:
    plain, _, _ = await _measured(client)
    low = plain.monitor[0].prompt_score - 0.5  # the prompt score reaches it
    push = add("misalignment", -8.0, positions="generated")
    conditional = pb.SteeringTerm()
    conditional.CopyFrom(push)
    conditional.condition.CopyFrom(pb.SteeringCondition(direction="misalignment", threshold=low, scope=pb.PROMPT_SCORE))
    expected = await client.generate(PROMPT, max_new_tokens=N, seed=3, steering=[conditional])
    assert list(expected.token_ids) != list(plain.token_ids)  # the condition fired and the push changed the text
    high = 1e6  # above any reading
    await client.set_steering(
        alerts=[_rule(pb.STEER, low, pb.PROMPT_SCORE, steering=[push]), _rule(pb.RECORD, high)]
    )
    try:
        steered = await client.generate(PROMPT, max_new_tokens=N, seed=3)
    finally:
        await client.set_steering()
    assert list(steered.token_ids) == list(expected.token_ids)
    (alert,) = steered.alerts  # the rule over every reading never fired
    assert (alert.action, alert.scope, alert.threshold) == (pb.STEER, pb.PROMPT_SCORE, low)


async def unset_threshold_is_the_calibrated_one(client: AsyncSteeringClient) -> None:
    info = await client.model_info()
    vectors = {layer: torch.ones(info.hidden_size) for layer in range(info.num_layers)}

    def probe(calibration: dict[str, Calibration]) -> bytes:
        return direction_to_bytes(Direction("probe", vectors, monitor_layer=1, calibration=calibration))

    # A calibrated threshold below any z-score: the rule fires at the first generated token's reading.
    calibrated = {"token": Calibration(mu=0.0, sigma=1.0, threshold=-1e6)}
    await client.put_direction("probe", safetensors=probe(calibrated))
    try:
        await client.set_steering(alerts=[pb.AlertRule(direction="probe", scope=pb.RUNNING_SCORE, action=pb.RECORD)])
        reply = await client.generate(PROMPT, max_new_tokens=4, seed=3, monitor=["misalignment"])
        (alert,) = reply.alerts
        assert (alert.direction, alert.threshold, alert.token_index) == ("probe", -1e6, 0)
        assert [m.direction for m in reply.monitor] == ["misalignment"]  # probe was read, not reported
        # A new version without that threshold would break the rule for every request: refused, as is deleting it.
        await expect_status(client.put_direction("probe", safetensors=probe({})), grpc.StatusCode.INVALID_ARGUMENT,
                            "calibration")
        await expect_status(client.delete_direction("probe"), grpc.StatusCode.INVALID_ARGUMENT, "name")
        assert (await client.generate(PROMPT, max_new_tokens=4, seed=3)).alerts  # still served, rule intact
    finally:
        await client.set_steering()
        await client.delete_direction("probe")


async def score_records_the_alert_rules(client: AsyncSteeringClient) -> None:
    """Score evaluates the policy's alert rules on the scores it returns; it only records (STOP and STEER rules keep
    their action in the alert, yet neither stops nor steers the scores)."""
    response = " The cat sat on the mat and looked at me"
    plain = await client.score(PROMPT, response=response, token_scores=True, ignore_policy=True)
    scores = list(plain.monitor[0].token_scores)
    j = next(j for j, v in enumerate(scores) if v >= sorted(scores)[-2])
    threshold = scores[j]
    low = plain.monitor[0].prompt_score - 0.5
    push = add("misalignment", -8.0, positions="generated")
    await client.set_steering(alerts=[
        _rule(pb.STOP, threshold), _rule(pb.STEER, low, pb.PROMPT_SCORE, steering=[push]), _rule(pb.RECORD, 1e6),
    ])
    try:
        scored = await client.score(PROMPT, response=response, token_scores=True, ignore_policy=True)
    finally:
        await client.set_steering()
    assert list(scored.monitor) == list(plain.monitor)  # nothing steered
    stop, steer = scored.alerts  # the RECORD rule over every reading never fired
    assert (stop.action, stop.scope, stop.token_index, stop.threshold, stop.source) == (
        pb.STOP, pb.RUNNING_SCORE, j, threshold, "policy")
    assert abs(stop.score - threshold) <= 1e-4 * max(1.0, abs(threshold))
    assert (steer.action, steer.scope, steer.HasField("token_index")) == (pb.STEER, pb.PROMPT_SCORE, False)
    assert abs(steer.score - plain.monitor[0].prompt_score) <= 1e-4 * max(1.0, abs(steer.score))


CONTRACT: list[Callable[[AsyncSteeringClient], Awaitable[None]]] = [
    repeated_ablation_acts_once,
    enforced_policy_composes_and_compare_says_so,
    record_rule_leaves_tokens_and_records_the_alert,
    stop_holds_back_the_tokens_that_triggered_it,
    steer_rule_equals_the_conditional_term,
    unset_threshold_is_the_calibrated_one,
    score_records_the_alert_rules,
]
