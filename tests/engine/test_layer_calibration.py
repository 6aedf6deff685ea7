"""CLAMP at layers other than the monitor's: a z-score target is a level of one layer, so a calibrated direction
clamps each layer to that layer's own benign level (Direction.layer_calibration) and refuses a layer it has none
for. Before, every layer was clamped to the monitor layer's level, which at another layer is an arbitrary push (the
organism's persona reads +15 at layer 0's last prompt token and -39 at layer 4's)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from steering_server.containment import check_calibration
from steering_server.directions import Calibration, Removal
from steering_server.errors import InvalidArgumentError, PermissionDeniedError
from steering_server.types import (
    AlertAction,
    AlertRule,
    CompareRequest,
    ConditionScope,
    GenerationRequest,
    MonitorOptions,
    Prompt,
    SamplingParams,
    SteeringMode,
    SteeringPolicy,
    SteeringPositions,
    SteeringTerm,
)

from .conftest import TEST_LIMITS, loaded_model, random_direction, running_engine

CLAMP, PROMPT = SteeringMode.CLAMP, SteeringPositions.PROMPT
MONITOR = {"token": Calibration(mu=-5.0, sigma=2.0), "last_prompt": Calibration(mu=-3.0, sigma=1.0)}
LAYER_0 = {"token": Calibration(mu=0.5, sigma=0.25), "last_prompt": Calibration(mu=1.5, sigma=0.5)}
QUIET = MonitorOptions(enabled=False)


def _req(*terms: SteeringTerm) -> GenerationRequest:
    return GenerationRequest(Prompt(text="Tell me about cats"), SamplingParams(max_new_tokens=12), terms, QUIET)


async def test_clamp_targets_each_layers_own_benign_level() -> None:
    loaded = loaded_model()
    d = replace(random_direction("d", loaded, monitor_layer=1), calibration=MONITOR, layer_calibration={0: LAYER_0})
    raw = replace(d, name="raw", calibration={}, layer_calibration={})  # the same vectors, raw units
    async with running_engine(loaded) as engine:
        engine.put_direction(d)
        engine.put_direction(raw)

        async def tokens(*terms: SteeringTerm) -> tuple[int, ...]:
            return (await engine.generate(_req(*terms))).token_ids

        z = -1.0
        for positions, pooling in ((PROMPT, "last_prompt"), (SteeringPositions.ALL, "token")):
            here, there = LAYER_0[pooling], MONITOR[pooling]
            got = await tokens(SteeringTerm("d", CLAMP, z, (0, 1), positions))
            want = await tokens(SteeringTerm("raw", CLAMP, here.mu + z * here.sigma, (0,), positions),
                                SteeringTerm("raw", CLAMP, there.mu + z * there.sigma, (1,), positions))
            old = await tokens(SteeringTerm("raw", CLAMP, there.mu + z * there.sigma, (0, 1), positions))
            assert got == want, positions
            assert got != old, positions  # the monitor layer's level at layer 0 steers differently

        # The removal recipe may name its layers; Compare's default variant runs it as written.
        engine.put_direction(replace(d, removal=Removal(CLAMP, 0.0, PROMPT, (0, 1))))
        result = await engine.compare(CompareRequest(Prompt(text="Tell me about cats"),
                                                     SamplingParams(max_new_tokens=12), monitor=QUIET))
        variants = {v.name: v.result.token_ids for v in result.variants}
        assert variants["clamp-prompt-d"] == await tokens(SteeringTerm("d", CLAMP, 0.0, (0, 1), PROMPT))


async def test_clamp_at_a_layer_without_calibration_is_refused_and_the_engine_serves_on() -> None:
    loaded = loaded_model()
    d = replace(random_direction("d", loaded, monitor_layer=1), calibration=MONITOR, layer_calibration={0: LAYER_0})
    async with running_engine(loaded) as engine:
        engine.put_direction(d)
        with pytest.raises(InvalidArgumentError) as e:
            engine.generate_stream(_req(SteeringTerm("d", CLAMP, 0.0, (1, 2))))
        assert e.value.field == "steering[0].layers[1]"
        assert "layers [0, 1] only" in str(e.value)
        # ABLATE and ADD have no target: any layer with a vector.
        assert (await engine.generate(_req(SteeringTerm("d", SteeringMode.ABLATE, 1.0, (2,))))).token_ids
        assert (await engine.generate(_req(SteeringTerm("d", CLAMP, 0.0, (0,))))).token_ids


async def test_the_red_team_rule_judges_each_layer_against_its_own_benign_level() -> None:
    """CLAMP 0 at layer 0 sets the projection to layer 0's benign level: a removal, even where that level is far
    above the monitor layer's; CLAMP +1 there pushes above it. A near-copy clamped to its own layer-0 level is a
    removal too (judged with its layer-0 calibration, not its monitor layer's)."""
    loaded = loaded_model()
    high = {"token": Calibration(mu=30.0, sigma=2.0), "last_prompt": Calibration(mu=30.0, sigma=2.0)}
    d = replace(random_direction("d", loaded, monitor_layer=1), calibration=MONITOR, layer_calibration={0: high})
    near_high = {"token": Calibration(mu=40.0, sigma=2.0), "last_prompt": Calibration(mu=40.0, sigma=2.0)}
    near = replace(d, name="near", calibration={"token": Calibration(mu=0.0, sigma=1.0)},
                   layer_calibration={0: near_high})
    async with running_engine(loaded, limits=replace(TEST_LIMITS, allow_red_team=False)) as engine:
        engine.put_direction(d)
        engine.put_direction(near)
        assert (await engine.generate(_req(SteeringTerm("d", CLAMP, 0.0, (0,))))).token_ids
        assert (await engine.generate(_req(SteeringTerm("near", CLAMP, 0.0, (0,))))).token_ids
        for name in ("d", "near"):
            with pytest.raises(PermissionDeniedError, match="would induce"):
                engine.generate_stream(_req(SteeringTerm(name, CLAMP, 1.0, (0,))))


async def test_a_recipe_below_the_monitor_layer_runs_under_an_alert_rule_and_a_policy_keeps_its_levels() -> None:
    """An alert rule's STEER (the recipe, gated by a score read at the monitor layer) steers the recipe's layers
    from the monitor layer up; a new version of a direction the policy clamps at layer 0 must keep layer 0's
    level (else every request would fail on the policy), and is refused naming the term."""
    loaded = loaded_model()
    d = replace(random_direction("d", loaded, monitor_layer=1), calibration=MONITOR, layer_calibration={0: LAYER_0},
                removal=Removal(CLAMP, 0.0, PROMPT, (0, 1)))
    async with running_engine(loaded) as engine:
        engine.put_direction(d)
        engine.set_policy(SteeringPolicy(alerts=(AlertRule("d", AlertAction.STEER, 0.0, ConditionScope.PROMPT),)))
        assert (await engine.generate(_req())).token_ids
        engine.set_policy(SteeringPolicy((SteeringTerm("d", CLAMP, 0.0, (0, 1), PROMPT),), enforced=True))
        with pytest.raises(InvalidArgumentError, match=r"policy.terms\[0\] clamps 'd' at layer 0"):
            engine.put_direction(replace(d, layer_calibration={}, removal=Removal(CLAMP, 0.0, PROMPT)))
        assert engine.registry.get("d", "d").direction.layer_calibration  # the old version still serves
        assert (await engine.generate(_req())).token_ids


def test_refusals_at_registration() -> None:
    """A calibrated direction's removal recipe must have a level at every layer it clamps; a direction calibrated
    for prompt positions only clamps them in z units, so another layer without that calibration is refused too
    (never raw units at one layer and z at the next); a layer's calibration is bounded by that layer's norm."""
    loaded = loaded_model()
    d = replace(random_direction("d", loaded, monitor_layer=1), calibration=MONITOR, layer_calibration={0: LAYER_0})
    n, hidden = loaded.num_layers, loaded.hidden_size
    with pytest.raises(InvalidArgumentError, match="layer 2 has no benign level") as e:
        replace(d, removal=Removal(CLAMP, 0.0, PROMPT, (1, 2))).validate(n, hidden)
    assert e.value.field == "direction.removal.layers"
    prompt_only = replace(d, calibration={"last_prompt": Calibration(mu=-3.0, sigma=1.0)}, layer_calibration={})
    assert prompt_only.clamp_refusal(0, PROMPT) is not None and prompt_only.clamp_refusal(1, PROMPT) is None
    assert prompt_only.clamp_refusal(0, SteeringPositions.ALL) is None  # no token calibration: raw units anywhere
    huge = replace(d, layer_calibration={0: {"token": Calibration(mu=1e9, sigma=1.0)}})
    with pytest.raises(InvalidArgumentError) as e:
        check_calibration(huge, [1.0] * n)  # norms of 1: mu 1e9 is far beyond any
    assert e.value.field == "layer_calibration[0]['token']"
