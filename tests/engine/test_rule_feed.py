"""The monitor feed and the `steered` flag report the steering that ran: a STEER alert rule's conditional terms are
listed with their condition, and count (policy_applied, steered) only when the rule fired."""

from __future__ import annotations

from steering_server.monitor_feed import MonitorFilter
from steering_server.types import (
    AlertAction,
    AlertRule,
    ConditionScope,
    GenerationRequest,
    Prompt,
    SamplingParams,
    SteeringCondition,
    SteeringMode,
    SteeringPolicy,
    SteeringPositions,
    SteeringTerm,
)

from .conftest import loaded_model, random_direction, running_engine


async def test_a_steer_rule_is_reported_as_the_steering_that_ran() -> None:
    loaded = loaded_model()
    push = SteeringTerm("d", SteeringMode.ADD, -4.0, positions=SteeringPositions.GENERATED)
    req = GenerationRequest(Prompt(text="Hello there"), SamplingParams(max_new_tokens=8))
    async with running_engine(loaded) as engine:
        engine.put_direction(random_direction("d", loaded, monitor_layer=1))
        sub = engine.watch_monitor(MonitorFilter())
        try:
            plain = await engine.generate(req)
            for threshold in (-1e9, 1e9):  # fires at the prompt's reading / never fires
                rule = AlertRule("d", AlertAction.STEER, threshold, ConditionScope.PROMPT, (push,))
                engine.set_policy(SteeringPolicy(alerts=(rule,)))
                result = await engine.generate(req)
                event = (await sub.next())[0]
                while event.request_id != result.request_id:
                    event = (await sub.next())[0]
                fired = threshold < 0
                cond = SteeringCondition("d", threshold, ConditionScope.PROMPT)
                assert event.steering == (SteeringTerm("d", SteeringMode.ADD, -4.0, positions=push.positions,
                                                       condition=cond),)
                assert [a.action for a in event.alerts] == ([AlertAction.STEER] if fired else [])
                assert (event.policy_applied, result.steered) == (fired, fired)
                assert (result.token_ids != plain.token_ids) == fired
        finally:
            sub.close()
            engine.set_policy(SteeringPolicy())
