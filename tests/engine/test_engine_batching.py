"""Many requests in one continuously batched forward: each returns exactly what it returns alone."""

from __future__ import annotations

import asyncio
import random

import pytest

from steering_server import planning
from steering_server.errors import NotFoundError
from steering_server.types import GenerationRequest, MonitorOptions, Prompt, SamplingParams, SteeringMode, SteeringTerm

from .conftest import loaded_model, random_direction, running_engine


def _req(prompt: list[int], steer: tuple[SteeringTerm, ...] = (), n: int = 12, **sampling: object) -> GenerationRequest:
    return GenerationRequest(
        Prompt(token_ids=tuple(prompt)),
        SamplingParams(max_new_tokens=n, **sampling),
        steer,  # type: ignore[arg-type]
        MonitorOptions(token_scores=True),
    )


def _prompts(count: int, seed: int = 3) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(6, 262) for _ in range(rng.randrange(3, 90))] for _ in range(count)]


ABLATE = (SteeringTerm("d", SteeringMode.ABLATE, 1.0),)
PUSH = (SteeringTerm("d", SteeringMode.ADD, -1.0),)


async def test_staggered_mixed_batch_equals_solo_runs() -> None:
    loaded = loaded_model()
    # 32 tokens per forward: prompts up to 90 tokens need chunked prefill across several forwards.
    async with running_engine(loaded, max_batch_tokens=32) as engine:
        engine.put_direction(random_direction("d", loaded))
        prompts = _prompts(18)
        reqs = [_req(p, PUSH if i % 2 else ()) for i, p in enumerate(prompts)]
        solo = [await engine.generate(r) for r in reqs]

        async def staggered(i: int, r: GenerationRequest):  # type: ignore[no-untyped-def]
            await asyncio.sleep(0.003 * i)
            return await engine.generate(r)

        passes_before = engine.stats().forward_passes
        batched = await asyncio.gather(*(staggered(i, r) for i, r in enumerate(reqs)))
        assert engine.stats().forward_passes - passes_before < sum(len(p) for p in prompts) // 32 + 18 * 12
        for s, b in zip(solo, batched, strict=True):
            assert b.token_ids == s.token_ids
            # fp32 projections of states with norm ~10-20 computed in different batch shapes: 1e-4 relative to
            # max(1, |score|), as in the other checks (a score near 0 cannot be matched relatively).
            assert _close((b.monitor[0].prompt_score,), (s.monitor[0].prompt_score,))
            assert _close(b.monitor[0].token_scores, s.monitor[0].token_scores)
        # Steering changed what the steered half generated, against the same prompt unsteered.
        unsteered = [await engine.generate(_req(p)) for p in prompts[1::2]]
        changed = sum(u.token_ids != s.token_ids for u, s in zip(unsteered, solo[1::2], strict=True))
        assert changed == len(unsteered)


async def test_sampled_requests_ignore_the_batch() -> None:
    async with running_engine() as engine:
        prompts = _prompts(8, seed=11)
        reqs = [_req(p, temperature=1.0, top_p=0.95, seed=100 + i) for i, p in enumerate(prompts)]
        alone = [await engine.generate(r) for r in reqs]
        together = await asyncio.gather(*(engine.generate(r) for r in reqs))
        reversed_order = await asyncio.gather(*(engine.generate(r) for r in reversed(reqs)))
        assert [t.token_ids for t in together] == [a.token_ids for a in alone]
        assert [t.token_ids for t in reversed(reversed_order)] == [a.token_ids for a in alone]
        # The seed matters: another seed gives another sample.
        other = await engine.generate(_req(prompts[0], temperature=1.0, seed=999))
        assert other.token_ids != alone[0].token_ids


async def test_concurrent_requests_share_forward_passes() -> None:
    async with running_engine(max_batch_tokens=256) as engine:
        prompts = _prompts(16, seed=5)
        before = engine.stats().forward_passes
        solo = [await engine.generate(_req(p, n=16)) for p in prompts]
        solo_passes = engine.stats().forward_passes - before
        before = engine.stats().forward_passes
        await asyncio.gather(*(engine.generate(_req(p, n=16)) for p in prompts))
        batched_passes = engine.stats().forward_passes - before
        # Alone, each forward yields one token of one request (prompts fit one prefill).
        assert solo_passes == sum(len(r.token_ids) for r in solo)
        assert batched_passes <= solo_passes // 4, (batched_passes, solo_passes)


async def test_long_shared_prefix_and_multi_turn_match_solo() -> None:
    loaded = loaded_model()
    # KV pages of 16 tokens: a 320-token shared prefix spans 20 pages.
    async with running_engine(loaded, max_batch_tokens=64, page_size=16) as engine:
        engine.put_direction(random_direction("d", loaded))
        prefix = _prompts(1, seed=21)[0] * 4
        prefix = (prefix * 8)[:320]
        tails = _prompts(8, seed=22)
        reqs = [_req(prefix + t[:5], ABLATE if i % 2 else ()) for i, t in enumerate(tails)]
        solo = [await engine.generate(r) for r in reqs]
        batched = await asyncio.gather(*(engine.generate(r) for r in reqs))
        for s, b in zip(solo, batched, strict=True):
            assert b.token_ids == s.token_ids
            for ms, mb in zip(s.monitor, b.monitor, strict=True):
                assert _close(mb.token_scores, ms.token_scores)
        # A second turn: the first turn's prompt and answer fed back with a new user turn.
        second = [prefix + t[:5] + list(r.token_ids) + t[5:9] for t, r in zip(tails, solo, strict=True)]
        reqs2 = [_req(p, ABLATE if i % 2 else ()) for i, p in enumerate(second)]
        solo2 = [await engine.generate(r) for r in reqs2]
        batched2 = await asyncio.gather(*(engine.generate(r) for r in reqs2))
        assert [b.token_ids for b in batched2] == [s.token_ids for s in solo2]


def _close(a: tuple[float, ...], b: tuple[float, ...], rel: float = 1e-4) -> bool:
    return len(a) == len(b) and all(abs(x - y) <= rel * max(1.0, abs(y)) for x, y in zip(a, b, strict=True))


async def test_requests_reset_under_cache_pressure_are_scored_once(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Ten 16-token KV pages for four 90-token requests: the manager soft-resets some (frees their cache and
    re-prefills prompt + generated tokens). Tokens and per-position scores must still equal the solo runs."""
    from transformers.generation.continuous_batching import requests as cb_requests

    resets = {"n": 0}
    original = cb_requests.RequestState.create_equivalent_initial_request

    def counted(self):  # type: ignore[no-untyped-def]
        resets["n"] += 1
        return original(self)

    monkeypatch.setattr(cb_requests.RequestState, "create_equivalent_initial_request", counted)
    loaded = loaded_model()
    async with running_engine(loaded, max_batch_tokens=64, page_size=16, num_blocks=10) as engine:
        engine.put_direction(random_direction("d", loaded))
        prompts = [[7 + i + j for j in range(40)] for i in range(4)]
        reqs = [_req(p, ABLATE if i % 2 else (), n=50) for i, p in enumerate(prompts)]
        solo = [await engine.generate(r) for r in reqs]
        assert resets["n"] == 0
        batched = await asyncio.gather(*(engine.generate(r) for r in reqs))
    assert resets["n"] > 0, "the test must exercise a reset"
    for s, b in zip(solo, batched, strict=True):
        assert b.token_ids == s.token_ids
        assert len(b.monitor[0].token_scores) == len(s.token_ids) - 1
        assert _close(b.monitor[0].token_scores, s.monitor[0].token_scores)


async def test_branch_free_hook_path_equals_the_eager_skipping_path() -> None:
    """With CUDA graphs every forward runs the full step; eager forwards skip what no request needs. Both paths
    must give the same tokens and scores (the GPU path, checked here on the CPU)."""
    loaded = loaded_model()
    async with running_engine(loaded, max_batch_tokens=32) as engine:
        engine.put_direction(random_direction("d", loaded))
        reqs = [_req(p, PUSH if i % 3 == 0 else ()) for i, p in enumerate(_prompts(9, seed=31))]
        reqs += [
            GenerationRequest(
                Prompt(token_ids=(5, 6, 7, 8)), SamplingParams(max_new_tokens=8), monitor=MonitorOptions(enabled=False)
            )
        ]
        assert engine.runtime.skip_idle_work
        skipping = await asyncio.gather(*(engine.generate(r) for r in reqs))
        engine.runtime.skip_idle_work = False
        full = await asyncio.gather(*(engine.generate(r) for r in reqs))
    for a, b in zip(skipping, full, strict=True):
        assert a.token_ids == b.token_ids
        for ma, mb in zip(a.monitor, b.monitor, strict=True):
            assert _close(ma.token_scores, mb.token_scores, rel=1e-5)


async def test_requests_steered_alike_are_planned_once_and_a_replaced_direction_is_planned_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Admission reuses the plan of a request steered and monitored alike (planning.PlanCache): the same tokens as
    planning each request, one plan for many requests; after the direction is replaced the next request is planned
    against the new one, never steered with the old vectors; after it is deleted, a request naming it fails."""
    made = []
    original = planning.make_plan
    monkeypatch.setattr(planning, "make_plan", lambda *a, **k: made.append(1) or original(*a, **k))
    loaded = loaded_model()
    async with running_engine(loaded) as engine:
        engine.put_direction(random_direction("d", loaded))
        req = _req(_prompts(1)[0], PUSH)
        first = await engine.generate(req)
        before = len(made)
        again = await asyncio.gather(*(engine.generate(req) for _ in range(5)))
        assert len(made) == before  # planned once
        assert all(a.token_ids == first.token_ids for a in again)
        engine.put_direction(random_direction("d", loaded, seed=11))  # another vector under the same name
        replaced = await engine.generate(req)
        assert len(made) == before + 1 and replaced.token_ids != first.token_ids
        engine.delete_direction("d")
        with pytest.raises(NotFoundError):  # a deleted direction is not steered by a plan made before
            await engine.generate(req)
        engine.put_direction(random_direction("d", loaded))  # the first vector again
        assert (await engine.generate(req)).token_ids == first.token_ids
        assert len(made) == before + 3  # the refused request was planned too (and failed there)
