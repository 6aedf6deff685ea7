"""CLAMP at layers other than the monitor's: a z-score target is a level of one layer, so a calibrated direction
clamps each layer to that layer's own benign level (Direction.layer_calibration) and refuses a layer it has none
for. Before, every layer was clamped to the monitor layer's level, which at another layer is an arbitrary push (the
organism's persona reads +15 at layer 0's last prompt token and -39 at layer 4's)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from steering_server.directions import Calibration, Removal
from steering_server.errors import InvalidArgumentError
from steering_server.types import (
    CompareRequest,
    GenerationRequest,
    MonitorOptions,
    Prompt,
    SamplingParams,
    SteeringMode,
    SteeringPositions,
    SteeringTerm,
)

from .conftest import loaded_model, random_direction, running_engine

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
