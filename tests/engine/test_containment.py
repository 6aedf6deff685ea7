"""Containment (issue 8, finding 1): one request's inputs never change another request's tokens.

Two layers of defence, each tested on its own in fp32, bf16 and fp16: admission bounds relative to the model's
measured residual norm (containment.py), and the per-request check of steered states on the device
(steer.steer_contained), tested with the admission bounds switched off so that the attacks reach the hidden state.

In fp32 the engine is batch-invariant, so a batch-mate of an attacker must produce exactly its solo tokens. In bf16
and fp16 a matmul's rounding depends on how many rows it has, so tokens may differ with the batch's make-up alone;
there the check is that the poison never reaches the batch-mates: all their readings stay finite and they never
collapse to one repeated token (what non-finite keys and values did before, issue 8).
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import replace

import pytest
import torch

from steering_server.containment import MAX_PUSH_RATIO, check_push
from steering_server.directions import Calibration
from steering_server.engine import Engine
from steering_server.errors import InvalidArgumentError
from steering_server.models import wrap_model
from steering_server.steer import measure_and_steer, steer_contained
from steering_server.tiny_models import byte_tokenizer, tiny_model
from steering_server.types import (
    GenerationRequest,
    GenerationResult,
    MonitorOptions,
    Prompt,
    SamplingParams,
    SteeringCondition,
    SteeringMode,
    SteeringTerm,
)

from .conftest import DEVICE, random_direction, running_engine

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
PROMPTS = ["Hello there", "The weather today", "Tell me about cats", "Once upon a time", "abc", "xyz xyz"]
HUGE_MU = {"token": Calibration(mu=1e300, sigma=1.0)}
ADD_FLOOD = tuple(SteeringTerm("d", SteeringMode.ADD, -1000.0) for _ in range(64))
CLAMP_0 = (SteeringTerm("h", SteeringMode.CLAMP, 0.0),)
# The same push under a condition that always fires: it steers the generated tokens only, through the conditional
# coefficients (the request holds no unconditional slot), and must be caught and reported just the same.
CLAMP_0_GATED = (SteeringTerm("h", SteeringMode.CLAMP, 0.0, condition=SteeringCondition("d", -1e9)),)


def _loaded(dtype: torch.dtype):  # type: ignore[no-untyped-def]
    return wrap_model(tiny_model("llama").to(DEVICE, dtype), byte_tokenizer(), "tiny-llama")  # type: ignore[arg-type]


def _req(prompt: str, steering: tuple[SteeringTerm, ...] = ()) -> GenerationRequest:
    monitor = MonitorOptions(directions=("d",), token_scores=True)
    return GenerationRequest(Prompt(text=prompt), SamplingParams(max_new_tokens=12), steering, monitor, True)


async def _solo(engine: Engine) -> list[GenerationResult]:
    return [await engine.generate(_req(p)) for p in PROMPTS]


async def _attacked(engine: Engine, attack: tuple[SteeringTerm, ...]) -> tuple[list[GenerationResult], object]:
    """Victims and the attacker admitted together (they share batches); the attacker's outcome or error."""
    results = await asyncio.gather(
        engine.generate(_req("attack!", attack)),
        *(engine.generate(_req(p)) for p in PROMPTS),
        return_exceptions=True,
    )
    victims = []
    for r in results[1:]:
        assert isinstance(r, GenerationResult), r
        victims.append(r)
    return victims, results[0]


def _assert_untouched(victims: list[GenerationResult], reference: list[GenerationResult], dtype: torch.dtype) -> None:
    if dtype == torch.float32:
        assert [v.token_ids for v in victims] == [r.token_ids for r in reference]
        for v, r in zip(victims, reference, strict=True):  # scores: batch-mates change fp32 rounding only
            assert v.monitor[0].token_scores == pytest.approx(r.monitor[0].token_scores, abs=1e-4)
        return
    for v in victims:
        for s in v.monitor:
            assert all(math.isfinite(x) for x in (s.prompt_score, *s.token_scores)), f"{dtype}: poisoned {s}"
        assert len(set(v.token_ids)) > 1, f"{dtype}: collapsed to {v.token_ids}"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
async def test_admission_refuses_the_attacks(dtype: torch.dtype) -> None:
    loaded = _loaded(dtype)
    async with running_engine(loaded) as engine:
        d = random_direction("d", loaded)
        with pytest.raises(InvalidArgumentError, match=r"calibration\['token'\].*residual norm"):
            engine.put_direction(replace(d, calibration=HUGE_MU))
        engine.put_direction(d)
        with pytest.raises(InvalidArgumentError, match=r"steering: the steering adds .* residual norm"):
            engine.generate_stream(_req("x", ADD_FLOOD))
        with pytest.raises(InvalidArgumentError, match=r"steering\[0\].strength"):
            engine.generate_stream(_req("x", (SteeringTerm("d", SteeringMode.ADD, -1e9),)))
        # Within the bound it is admitted: the bound is relative to the model, not a blanket refusal.
        ok = (SteeringTerm("d", SteeringMode.ADD, -0.5 * MAX_PUSH_RATIO),)
        assert (await engine.generate(_req("x", ok))).token_ids


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
async def test_a_request_that_overflows_fails_alone(dtype: torch.dtype) -> None:
    loaded = _loaded(dtype)
    async with running_engine(loaded) as engine:
        engine.put_direction(random_direction("d", loaded))
        reference = await _solo(engine)
        # Switch the admission bounds off so that the attacks of issue 8 reach the hidden states.
        engine.registry.residual_norms = None
        d = random_direction("h", loaded, seed=11)
        engine.put_direction(replace(d, calibration=HUGE_MU))
        for attack in (CLAMP_0, CLAMP_0_GATED, ADD_FLOOD):
            victims, outcome = await _attacked(engine, attack)
            _assert_untouched(victims, reference, dtype)
            overflows = attack is not ADD_FLOOD or dtype == torch.float16  # -6.4e4 |v| fits fp32 and bf16
            if overflows:
                assert isinstance(outcome, InvalidArgumentError), outcome
                assert outcome.field == "steering" and "overflowed" in outcome.message
        _assert_untouched(await _solo(engine), reference, dtype)  # and nothing stays behind for later requests
        assert engine.stats().queued == 0


def test_steer_contained_refuses_only_bad_updates() -> None:
    torch.manual_seed(0)
    for dtype in DTYPES:
        h = torch.randn(5, 16).to(dtype)
        unit = torch.nn.functional.normalize(torch.randn(2, 16), dim=-1)
        slots = torch.tensor([0, 1, 2, 0, 1])
        alpha = torch.zeros(3, 2)
        beta = torch.zeros(3, 2)
        beta[1, 0] = 0.5
        beta[2, 1] = 1e6 if dtype == torch.float16 else math.inf  # slot 2 overflows (fp16: near its range)
        applied = torch.zeros(5, 1, dtype=torch.bool)
        steered, proj = steer_contained(h, unit, alpha[slots], beta[slots], applied)
        expected, expected_proj = measure_and_steer(h, slots, unit, alpha, beta)
        assert applied[:, 0].tolist() == [True, True, False, True, True]
        assert torch.equal(steered[[0, 1, 3, 4]], expected[[0, 1, 3, 4]])  # the rest exactly as before
        assert torch.equal(steered[0], h[0]) and torch.equal(steered[3], h[3])  # unsteered: bit-identical
        assert torch.equal(steered[2], h[2])  # the refused update: the token keeps its finite state
        assert bool(torch.isfinite(steered).all())
        assert torch.equal(proj, expected_proj)


def test_steer_contained_gives_the_same_bits_with_one_shared_row() -> None:
    """A batch whose tokens all have one slot passes that slot's (K,) rows instead of gathering them per token (the
    hook's fast path for a lone request or requests steered alike): the states and projections must not change."""
    torch.manual_seed(1)
    for dtype in DTYPES:
        h = (torch.randn(7, 16) * 3).to(dtype)
        unit = torch.nn.functional.normalize(torch.randn(3, 16), dim=-1)
        alpha, beta = torch.rand(4, 3), torch.randn(4, 3)
        slots = torch.full((7,), 2)
        gathered = steer_contained(h, unit, alpha[slots], beta[slots], torch.zeros(7, 1, dtype=torch.bool))
        shared = steer_contained(h, unit, alpha[2], beta[2], torch.zeros(7, 1, dtype=torch.bool))
        assert torch.equal(gathered[0], shared[0]) and torch.equal(gathered[1], shared[1])
        assert not torch.equal(shared[0], h)  # it did steer


def test_check_push_is_relative_to_the_residual_norm() -> None:
    beta = torch.zeros(2, 3)
    beta[1, 0], beta[1, 2] = 6.0, -5.0  # 11 at layer 1
    check_push(beta, [100.0, 1.2], "steering")
    with pytest.raises(InvalidArgumentError, match="layer 1"):
        check_push(beta, [100.0, 1.0], "steering")
    beta[0, 0] = math.nan
    with pytest.raises(InvalidArgumentError, match="layer 0"):
        check_push(beta, [100.0, 100.0], "steering")
