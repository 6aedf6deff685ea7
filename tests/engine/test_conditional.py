"""Conditional steering (CAST) decided on the device, per request inside one batch.

Each request of a mixed batch must generate exactly what it generates alone *with* the term when its score
reaches the threshold, and alone *without* it when it does not. Thresholds are picked from measured scores so that
both cases occur in one batch.
"""

from __future__ import annotations

import asyncio
import itertools
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
from .test_engine_fast_paths import FAST_PATHS

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
        # Midway between two requests' first scores, never at one: a score read in a batch differs from the same
        # score read alone in its last bits (the batch's attention path differs), so a threshold equal to a score
        # would make that request's side of it a coin toss.
        distinct = sorted(set(firsts))
        candidates = [(lo + hi) / 2 for lo, hi in itertools.pairwise(distinct)]
        threshold = next(
            t for t in candidates if sum(f >= t for f in firsts) >= 2 and sum(m < t for m in maxima) >= 2
        )
        cond = replace(PUSH, condition=SteeringCondition("probe", threshold, ConditionScope.RUNNING))
        batched = await asyncio.gather(*(engine.generate(_req(p, cond)) for p in prompts))
        checked = {"over": 0, "under": 0, "later": 0}
        for p, b, u, s, first, top in zip(prompts, batched, plain, pushed, firsts, maxima, strict=True):
            if first >= threshold:
                assert b.token_ids == s.token_ids
                checked["over"] += 1
            elif top < threshold:
                assert b.token_ids == u.token_ids
                checked["under"] += 1
            else:
                # Latched later, at token_scores[j] (the position of token j): tokens 0..j are the unsteered ones,
                # and from the position of token j on the term steers. The reference: the prompt followed by the
                # unsteered tokens 0..j-1 (forced), the unconditional term on the generated positions, which then
                # start at token j's; greedy, so it regenerates token j and continues as the latched request.
                j = next(i for i, v in enumerate(u.monitor[0].token_scores) if v >= threshold)
                assert b.token_ids[: j + 1] == u.token_ids[: j + 1]
                forced = GenerationRequest(
                    Prompt(token_ids=(*p, *u.token_ids[:j])), SamplingParams(max_new_tokens=N - j), (PUSH,), WATCH
                )
                tail = (await engine.generate(forced)).token_ids
                assert b.token_ids[j:] == tail, (j, b.token_ids, u.token_ids)
                checked["later"] += 1
    print(checked)
    assert checked["over"] >= 2 and checked["under"] >= 2 and checked["later"] >= 2
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


@pytest.mark.parametrize("fast", FAST_PATHS, ids=lambda f: next(iter(f)))
async def test_compiled_forward_decides_conditions_like_the_eager_engine(fast: dict[str, object]) -> None:
    """Under torch.compile (CUDA graphs on a GPU) the gates are latched inside the traced hooks from device tables
    only: the same requests fire, PROMPT and RUNNING, and generate the eager engine's tokens."""
    loaded = loaded_model()
    prompts = _prompts(6, seed=47)
    async with running_engine(loaded) as eager:
        await _setup(eager)
        plain = [await eager.generate(_req(p)) for p in prompts]
        prompt_scores = sorted(r.monitor[0].prompt_score for r in plain)
        running = sorted(r.monitor[0].token_scores[0] for r in plain)
        conds = [
            SteeringCondition("probe", (prompt_scores[2] + prompt_scores[3]) / 2, ConditionScope.PROMPT),
            SteeringCondition("probe", (running[2] + running[3]) / 2, ConditionScope.RUNNING),
        ]
        reqs = [_req(p, replace(PUSH, condition=c)) for c in conds for p in prompts]
        want = [r.token_ids for r in await asyncio.gather(*(eager.generate(q) for q in reqs))]
    assert sum(w != u.token_ids for w, u in zip(want, plain * 2, strict=True)) >= 6  # conditions fired
    assert sum(w == u.token_ids for w, u in zip(want, plain * 2, strict=True)) >= 3  # and did not
    async with running_engine(loaded, **fast) as engine:
        assert not engine.runtime.skip_idle_work
        await _setup(engine)
        got = [r.token_ids for r in await asyncio.gather(*(engine.generate(q) for q in reqs))]
    assert got == want


async def test_a_request_reset_under_cache_pressure_latches_at_the_same_position(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The manager soft-resets requests when the KV cache runs out and re-prefills prompt + generated tokens: a
    RUNNING gate is the first position that reached the threshold, so the re-prefill steers exactly the positions
    the first pass steered, and tokens equal the solo runs."""
    from transformers.generation.continuous_batching import requests as cb_requests

    resets = {"n": 0}
    original = cb_requests.RequestState.create_equivalent_initial_request

    def counted(self):  # type: ignore[no-untyped-def]
        resets["n"] += 1
        return original(self)

    monkeypatch.setattr(cb_requests.RequestState, "create_equivalent_initial_request", counted)
    loaded = loaded_model()
    async with running_engine(loaded, max_batch_tokens=64, page_size=16, num_blocks=10) as engine:
        await _setup(engine)
        prompts = [[7 + i + j for j in range(40)] for i in range(4)]
        plain = [await engine.generate(replace(_req(p), sampling=SamplingParams(max_new_tokens=50))) for p in prompts]
        # Latch around the middle of each answer: the median of all readings.
        readings = sorted(v for r in plain for v in r.monitor[0].token_scores[5:])
        cond = replace(PUSH, condition=SteeringCondition("probe", readings[len(readings) // 2], ConditionScope.RUNNING))
        reqs = [replace(_req(p, cond), sampling=SamplingParams(max_new_tokens=50)) for p in prompts]
        solo = [await engine.generate(r) for r in reqs]
        assert resets["n"] == 0
        batched = await asyncio.gather(*(engine.generate(r) for r in reqs))
    assert resets["n"] > 0, "the test must exercise a reset"
    assert any(s.token_ids != u.token_ids for s, u in zip(solo, plain, strict=True)), "a condition must fire"
    assert [b.token_ids for b in batched] == [s.token_ids for s in solo]
