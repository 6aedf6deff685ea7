"""Conditional steering (CAST) decided on the device, per request inside one batch.

Each request of a mixed batch must generate exactly what it generates alone *with* the term when its score
reaches the threshold, and alone *without* it when it does not. Thresholds are picked from measured scores so that
both cases occur in one batch.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import replace

import pytest

from steering_server.engine import Engine
from steering_server.errors import InvalidArgumentError, NotFoundError, PermissionDeniedError
from steering_server.types import (
    ConditionScope,
    GenerationRequest,
    MonitorOptions,
    Prompt,
    SamplingParams,
    SteeringCondition,
    SteeringMode,
    SteeringPositions,
    SteeringTerm,
)

from .conftest import TEST_LIMITS, loaded_model, random_direction, running_engine

N = 12
PUSH = SteeringTerm("d", SteeringMode.ADD, -1.0, positions=SteeringPositions.GENERATED)
WATCH = MonitorOptions(directions=("probe",), token_scores=True)


def _prompts(count: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(6, 262) for _ in range(rng.randrange(4, 40))] for _ in range(count)]


def _req(prompt: list[int], *terms: SteeringTerm) -> GenerationRequest:
    return GenerationRequest(Prompt(token_ids=tuple(prompt)), SamplingParams(max_new_tokens=N), terms, WATCH)


async def _setup(engine: Engine) -> None:
    loaded = engine.loaded
    engine.put_direction(random_direction("d", loaded, monitor_layer=1, seed=7))
    engine.put_direction(random_direction("probe", loaded, monitor_layer=1, seed=8))


async def test_prompt_condition_steers_exactly_the_requests_over_threshold() -> None:
    async with running_engine(loaded_model(), max_batch_tokens=48) as engine:
        await _setup(engine)
        prompts = _prompts(10, seed=41)
        plain = [await engine.generate(_req(p)) for p in prompts]
        pushed = [await engine.generate(_req(p, PUSH)) for p in prompts]
        scores = sorted(r.monitor[0].prompt_score for r in plain)
        threshold = (scores[4] + scores[5]) / 2  # half of the batch over, half under
        cond = replace(PUSH, condition=SteeringCondition("probe", threshold, ConditionScope.PROMPT))
        batched = await asyncio.gather(*(engine.generate(_req(p, cond)) for p in prompts))
        # The branch-free step that CUDA graphs and compile run (no eager skipping) decides the same way.
        engine.runtime.skip_idle_work = False
        full = await asyncio.gather(*(engine.generate(_req(p, cond)) for p in prompts))
    over = [r.monitor[0].prompt_score >= threshold for r in plain]
    assert sum(over) == 5
    for b, f, u, s, is_over in zip(batched, full, plain, pushed, over, strict=True):
        assert b.token_ids == f.token_ids == (s.token_ids if is_over else u.token_ids)
    # The term changes what the over-threshold requests generate, so the check above can fail.
    assert all(s.token_ids != u.token_ids for s, u, o in zip(pushed, plain, over, strict=True) if o)


async def test_running_condition_latches_at_the_first_generated_token_over_threshold() -> None:
    async with running_engine(loaded_model(), max_batch_tokens=48) as engine:
        await _setup(engine)
        prompts = _prompts(16, seed=43)
        plain = [await engine.generate(_req(p)) for p in prompts]
        pushed = [await engine.generate(_req(p, PUSH)) for p in prompts]
        firsts = [r.monitor[0].token_scores[0] for r in plain]
        maxima = [max(r.monitor[0].token_scores) for r in plain]
        # A threshold with requests over it at their first fed-back token (steered from there: the same tokens as
        # the term on every generated token) and requests never reaching it (never steered).
        candidates = sorted(set(firsts))
        threshold = next(
            t for t in candidates if sum(f >= t for f in firsts) >= 2 and sum(m < t for m in maxima) >= 2
        )
        cond = replace(PUSH, condition=SteeringCondition("probe", threshold, ConditionScope.RUNNING))
        batched = await asyncio.gather(*(engine.generate(_req(p, cond)) for p in prompts))
    checked = {"over": 0, "under": 0, "later": 0}
    for b, u, s, first, top in zip(batched, plain, pushed, firsts, maxima, strict=True):
        if first >= threshold:
            assert b.token_ids == s.token_ids
            checked["over"] += 1
        elif top < threshold:
            assert b.token_ids == u.token_ids
            checked["under"] += 1
        else:
            # Latched later, at token_scores[j] (the position of token j): tokens 0..j are the unsteered ones.
            j = next(i for i, v in enumerate(u.monitor[0].token_scores) if v >= threshold)
            assert b.token_ids[: j + 1] == u.token_ids[: j + 1]
            checked["later"] += 1
    assert checked["over"] >= 2 and checked["under"] >= 2
    assert all(s.token_ids != u.token_ids for s, u, f in zip(pushed, plain, firsts, strict=True) if f >= threshold)


async def test_conditions_are_validated_with_field_paths() -> None:
    limits = replace(TEST_LIMITS, allow_red_team=False)
    async with running_engine(loaded_model(), limits=limits) as engine:
        await _setup(engine)
        engine.put_direction(random_direction("high", engine.loaded, monitor_layer=2, seed=9))

        def req(term: SteeringTerm) -> GenerationRequest:
            return GenerationRequest(Prompt(text="Hello"), SamplingParams(max_new_tokens=4), (term,))

        cases: list[tuple[SteeringCondition, SteeringTerm, type[Exception], str]] = [
            (SteeringCondition("nope", 0.0), PUSH, NotFoundError, "steering[0].condition.direction"),
            (SteeringCondition("probe", float("nan")), PUSH, InvalidArgumentError, "steering[0].condition.threshold"),
            (SteeringCondition("high", 0.0), PUSH, InvalidArgumentError, "steering[0].condition"),
            (SteeringCondition("probe", 0.0, ConditionScope.RUNNING),
             replace(PUSH, positions=SteeringPositions.LAST_PROMPT), InvalidArgumentError, "steering[0].positions"),
        ]
        for cond, term, error, field in cases:
            with pytest.raises(error) as info:
                await engine.generate(req(replace(term, condition=cond)))
            assert str(info.value).startswith(field), str(info.value)
        # A conditional push along a registered direction still induces it: refused without red-teaming.
        inducing = SteeringTerm("d", SteeringMode.ADD, 1.0, condition=SteeringCondition("probe", 0.0))
        with pytest.raises(PermissionDeniedError):
            await engine.generate(req(inducing))
        # Nothing else broke: the engine still serves, conditionally steered or not.
        ok = await engine.generate(req(replace(PUSH, condition=SteeringCondition("probe", -1e9))))
        assert len(ok.token_ids) == 4
