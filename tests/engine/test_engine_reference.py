"""The fast path against the independent nnsight oracle: same greedy tokens, same projections."""

from __future__ import annotations

import pytest

from steering_server.layers import SUPPORTED_ARCHITECTURES
from steering_server.tiny_models import byte_tokenizer, tiny_model
from steering_server.types import (
    GenerationRequest,
    MonitorOptions,
    Prompt,
    SamplingParams,
    SteeringMode,
    SteeringPositions,
    SteeringTerm,
)
from tests.nnsight_reference import RefMonitor, RefTerm, reference_generate

from .conftest import DEVICE, loaded_model, random_direction, running_engine

PROMPT = [1, 40, 77, 81, 95, 120, 33, 200, 17, 64, 101]
N = 10


async def _check(arch: str, terms: tuple[SteeringTerm, ...]) -> tuple[int, ...]:
    loaded = loaded_model(arch)
    d = random_direction("d", loaded, monitor_layer=1, seed=7, scale=0.5)
    e = random_direction("e", loaded, monitor_layer=2, seed=8, scale=0.5)
    async with running_engine(loaded) as engine:
        engine.put_direction(d)
        engine.put_direction(e)
        got = await engine.generate(
            GenerationRequest(
                Prompt(token_ids=tuple(PROMPT)),
                SamplingParams(max_new_tokens=N),
                terms,
                MonitorOptions(directions=("d", "e"), token_scores=True),
            )
        )
        unsteered = await engine.generate(
            GenerationRequest(Prompt(token_ids=tuple(PROMPT)), SamplingParams(max_new_tokens=N))
        )
    assert got.token_ids != unsteered.token_ids, "pick a steering that changes tokens"
    dirs = {"d": d, "e": e}
    ref_terms = []
    for t in terms:
        direction = dirs[t.direction]
        layers = t.layers or tuple(
            (direction.monitor_layer,)
            if t.mode == SteeringMode.CLAMP
            else [x for x in direction.layers if x >= direction.monitor_layer]
        )
        ref_terms += [RefTerm(layer, direction.vectors[layer], t.mode.name, t.strength, t.positions.name)
                      for layer in layers]
    monitors = [RefMonitor(1, d.vectors[1]), RefMonitor(2, e.vectors[2])]
    ref_tokens, ref_reads = reference_generate(
        tiny_model(arch).to(DEVICE), byte_tokenizer(), PROMPT, ref_terms, monitors, N
    )
    assert list(got.token_ids) == ref_tokens
    p0 = len(PROMPT)
    for scores, reads in zip(got.monitor, ref_reads, strict=True):
        assert scores.prompt_score == pytest.approx(reads[p0 - 1], rel=1e-4, abs=1e-5)
        expected = [reads[p0 + i] for i in range(N - 1)]
        assert list(scores.token_scores) == pytest.approx(expected, rel=1e-4, abs=1e-5)
    return tuple(got.token_ids)


@pytest.mark.parametrize("arch", SUPPORTED_ARCHITECTURES)
async def test_each_architecture_matches_reference(arch: str) -> None:
    await _check(arch, (SteeringTerm("d", SteeringMode.ABLATE, 1.0), SteeringTerm("e", SteeringMode.ADD, -1.5)))


async def test_all_modes_and_explicit_layers_match_reference() -> None:
    terms = (
        SteeringTerm("d", SteeringMode.CLAMP, -3.0, layers=(0, 2)),  # below the monitor layer: post-intervention
        SteeringTerm("e", SteeringMode.ABLATE, 0.5, layers=(2, 3)),
        SteeringTerm("e", SteeringMode.ADD, -2.0, layers=(3,)),
    )
    await _check("llama", terms)


@pytest.mark.parametrize("positions", [SteeringPositions.PROMPT, SteeringPositions.LAST_PROMPT,
                                       SteeringPositions.GENERATED])
async def test_steering_restricted_to_positions_matches_reference(positions: SteeringPositions) -> None:
    """Each position class steered alone, and beside a term on every position (two slots for one request)."""
    alone = await _check("llama", (SteeringTerm("d", SteeringMode.ADD, -3.0, positions=positions),))
    everywhere = await _check("llama", (SteeringTerm("d", SteeringMode.ADD, -3.0),))
    assert alone != everywhere, "the restriction must change what is generated"
    await _check("llama", (SteeringTerm("d", SteeringMode.ADD, -3.0, positions=positions),
                           SteeringTerm("e", SteeringMode.ABLATE, 1.0)))
