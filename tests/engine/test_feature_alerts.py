"""A calibrated SAE feature is watched in the z units it is reported in: stop_threshold and alert rules compare
with the calibrated activation, and an Alert's score is the z the monitor reported at that token."""

from __future__ import annotations

from dataclasses import replace

import torch

from steering_server.directions import Calibration, Direction, Feature
from steering_server.types import (
    AlertAction,
    AlertRule,
    ConditionScope,
    GenerationRequest,
    MonitorOptions,
    Prompt,
    SamplingParams,
    SteeringPolicy,
    StopReason,
)

from .conftest import loaded_model, running_engine


async def test_a_calibrated_feature_alerts_in_the_z_units_it_reports() -> None:
    loaded = loaded_model()
    h = loaded.hidden_size
    g = torch.Generator().manual_seed(3)
    feature = Feature(encoder=torch.randn(h, generator=g), bias=5.0, threshold=0.0, activation="relu")
    d = Direction("f", {1: torch.randn(h, generator=g)}, 1, feature=feature)
    watch = MonitorOptions(directions=("f",), token_scores=True)
    req = GenerationRequest(Prompt(text="Hello there"), SamplingParams(max_new_tokens=12), monitor=watch)
    async with running_engine(loaded) as engine:
        engine.put_direction(d)
        acts = list((await engine.generate(req)).monitor[0].token_scores)
        mu = sum(acts) / len(acts)
        sd = (sum((a - mu) ** 2 for a in acts) / len(acts)) ** 0.5
        assert sd > 1.0  # the raw activations and their z-scores differ a lot
        engine.put_direction(replace(d, calibration={"token": Calibration(mu, sd, 2.0, 0.05, 100)}))
        z = list((await engine.generate(req)).monitor[0].token_scores)
        top = max(range(len(z) - 1), key=lambda i: z[i])  # the last score is read after the last stop decision

        above = await engine.generate(replace(req, monitor=replace(watch, stop_threshold=z[top] + 0.01)))
        assert above.stop_reason == StopReason.MAX_TOKENS and above.alerts == ()

        stopped = await engine.generate(replace(req, monitor=replace(watch, stop_threshold=z[top] - 0.01)))
        assert stopped.stop_reason == StopReason.MONITOR_ALERT
        (alert,) = stopped.alerts
        first = next(i for i, v in enumerate(z) if v >= z[top] - 0.01)
        assert alert.token_index == first
        assert abs(alert.score - z[first]) < 1e-3  # z, not the raw activation

        rule = AlertRule("f", AlertAction.RECORD, z[top] + 0.01, ConditionScope.RUNNING)
        engine.set_policy(SteeringPolicy(alerts=(rule,)))
        assert (await engine.generate(req)).alerts == ()
        engine.set_policy(SteeringPolicy(alerts=(replace(rule, threshold=z[top] - 0.01),)))
        (recorded,) = (await engine.generate(req)).alerts
        assert recorded.token_index == first and abs(recorded.score - z[first]) < 1e-3
