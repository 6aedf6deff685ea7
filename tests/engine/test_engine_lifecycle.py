"""Lifecycle and failure paths: canary, admission, cancellation, death, stop strings, streams, registry, policy."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest
import torch

from steering_server import runtime as runtime_module
from steering_server.canary import plain_greedy
from steering_server.config import EngineConfig
from steering_server.directions import Calibration, Provenance
from steering_server.engine import Engine, start_engine
from steering_server.errors import (
    EngineDeadError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
)
from steering_server.types import (
    CompareRequest,
    GenerationRequest,
    MonitorOptions,
    Prompt,
    SamplingParams,
    SteeringMode,
    SteeringPolicy,
    SteeringTerm,
    StopReason,
    Variant,
)

from .conftest import TEST_LIMITS, loaded_model, random_direction, running_engine

PROMPT = (1, 40, 77, 81, 95, 120, 33, 200)


def _gen(n: int = 12, steer: tuple[SteeringTerm, ...] = (), **sampling: object) -> GenerationRequest:
    return GenerationRequest(Prompt(token_ids=PROMPT), SamplingParams(max_new_tokens=n, **sampling), steer)  # type: ignore[arg-type]


async def _wait_idle(engine: Engine) -> None:
    for _ in range(200):
        s = engine.stats()
        if s.running == 0 and s.queued == 0:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"engine not idle: {engine.stats()}")


async def test_canary_refuses_an_engine_whose_steering_does_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        runtime_module,
        "steer_contained",
        lambda h, unit, *a: (h, torch.zeros(h.shape[0], unit.shape[0])),
    )
    with pytest.raises(RuntimeError, match="canary: steering did not change"):
        await start_engine(EngineConfig(limits=TEST_LIMITS), loaded=loaded_model())


async def test_canary_refuses_an_engine_that_changes_unsteered_requests(monkeypatch: pytest.MonkeyPatch) -> None:
    # A serving-path bug that a plain forward does not have: the sampler picks the runner-up token.
    def runner_up(self: runtime_module.SteeringRuntime, logits: torch.Tensor) -> torch.Tensor:
        return logits[: len(self._plan.order)].topk(2).indices[:, 1]

    monkeypatch.setattr(runtime_module.SteeringRuntime, "sample", runner_up)
    with pytest.raises(RuntimeError, match="canary: unsteered tokens"):
        await start_engine(EngineConfig(limits=TEST_LIMITS), loaded=loaded_model())


async def test_admission_control_answers_resource_exhausted_instead_of_blocking() -> None:
    async with running_engine(limits=replace(TEST_LIMITS, max_queued=4)) as engine:
        streams = [engine.generate_stream(_gen(n=64)) for _ in range(4)]
        with pytest.raises(ResourceExhaustedError):
            engine.generate_stream(_gen())
        for s in streams:
            s.cancel()
        await _wait_idle(engine)
        assert (await engine.generate(_gen(n=3))).stop_reason == StopReason.MAX_TOKENS


async def test_cancelled_streams_leave_nothing_running() -> None:
    async with running_engine() as engine:
        streams = [engine.generate_stream(_gen(n=64, temperature=1.0, seed=i)) for i in range(40)]

        async def first_token_then_cancel(s):  # type: ignore[no-untyped-def]
            async for _ in s:
                break
            s.cancel()
            return await s.result()

        results = await asyncio.gather(*(first_token_then_cancel(s) for s in streams))
        # A sampled first token can be EOS (about 1 in 262 here); every other stream was cancelled.
        assert all(r.stop_reason == StopReason.CANCELLED or r.token_ids[-1] == 2 for r in results)
        assert sum(r.stop_reason == StopReason.CANCELLED for r in results) >= 30
        await _wait_idle(engine)
        assert engine._free_slots and len(engine.runtime.tracks) == 0


async def test_engine_death_fails_waiting_calls_and_turns_health_off() -> None:
    loaded = loaded_model()
    async with running_engine(loaded) as engine:
        died: list[BaseException] = []
        engine.add_death_callback(died.append)
        boom = {"on": False}

        def explode(*_: object) -> None:
            if boom["on"]:
                raise RuntimeError("simulated device failure")

        loaded.model.get_input_embeddings().register_forward_pre_hook(explode)
        stream = engine.generate_stream(_gen(n=64))
        await stream.__aiter__().__anext__()
        boom["on"] = True
        with pytest.raises(EngineDeadError):
            async for _ in stream:
                pass
        with pytest.raises(EngineDeadError):
            await stream.result()
        for _ in range(100):
            if died:
                break
            await asyncio.sleep(0.02)
        assert not engine.healthy and len(died) == 1
        with pytest.raises(EngineDeadError):
            engine.generate_stream(_gen())


async def test_stop_strings_trim_and_stream_deltas_concatenate() -> None:
    async with running_engine() as engine:
        free = await engine.generate(_gen(n=24))
        text = free.text
        stop = next(text[i : i + 2] for i in range(4, len(text) - 2) if "\ufffd" not in text[i : i + 2])
        stream = engine.generate_stream(_gen(n=24, stop=(stop, "never-there")))
        deltas = [e.text_delta async for e in stream]
        result = await stream.result()
    assert result.stop_reason == StopReason.STOP_SEQUENCE
    assert result.text == text[: text.find(stop)]
    assert "".join(deltas) + result.text_tail == result.text
    assert stop not in "".join(deltas)


async def test_compare_shares_noise_and_reports_divergence() -> None:
    loaded = loaded_model()
    async with running_engine(loaded) as engine:
        engine.put_direction(random_direction("d", loaded))
        sampling = SamplingParams(max_new_tokens=16, temperature=1.0, seed=5)
        out = await engine.compare(CompareRequest(Prompt(token_ids=PROMPT), sampling))
        plain = await engine.generate(GenerationRequest(Prompt(token_ids=PROMPT), sampling))
    names = [v.name for v in out.variants]
    assert names == ["unsteered", "ablate-d"]
    assert out.variants[0].result.token_ids == plain.token_ids and out.variants[0].diverges_at is None
    a, b = out.variants[0].result.token_ids, out.variants[1].result.token_ids
    first = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), None)
    assert out.variants[1].diverges_at == first


async def test_replacing_a_direction_does_not_touch_requests_in_flight() -> None:
    loaded = loaded_model()
    d1 = random_direction("d", loaded, seed=1)
    d2 = random_direction("d", loaded, seed=2)
    steer = (SteeringTerm("d", SteeringMode.ADD, -1.0),)
    async with running_engine(loaded) as engine:
        engine.put_direction(d1)
        solo1 = await engine.generate(_gen(n=32, steer=steer))
        stream = engine.generate_stream(_gen(n=32, steer=steer))
        await stream.__aiter__().__anext__()
        engine.put_direction(d2)  # replaced while the stream runs: it keeps its row
        async for _ in stream:
            pass
        assert (await stream.result()).token_ids == solo1.token_ids
        solo2 = await engine.generate(_gen(n=32, steer=steer))
        assert solo2.token_ids != solo1.token_ids
        assert len(engine.registry._rows) == 1  # the old row was freed when the stream ended


async def test_request_validation_names_the_field() -> None:
    loaded = loaded_model()
    async with running_engine(loaded, limits=replace(TEST_LIMITS, allow_red_team=False)) as engine:
        engine.put_direction(random_direction("d", loaded))
        with pytest.raises(NotFoundError) as missing:
            engine.generate_stream(_gen(steer=(SteeringTerm("nope", SteeringMode.ABLATE, 1.0),)))
        assert missing.value.field == "steering[0].direction" and "steering[0].direction" in str(missing.value)
        cases = [
            (SteeringTerm("d", SteeringMode.ABLATE, 1.0, layers=(9,)), "steering[0].layers[0]"),
            (SteeringTerm("d", SteeringMode.ABLATE, 1.0, layers=(-1,)), "steering[0].layers[0]"),
            (SteeringTerm("d", SteeringMode.ADD, float("nan")), "steering[0].strength"),
            (SteeringTerm("d", SteeringMode.ADD, -1e9), "steering[0].strength"),
        ]
        for term, field in cases:
            with pytest.raises(InvalidArgumentError) as err:
                engine.generate_stream(_gen(steer=(term,)))
            assert err.value.field == field
        with pytest.raises(PermissionDeniedError):  # inducing the direction needs --allow-red-team
            engine.generate_stream(_gen(steer=(SteeringTerm("d", SteeringMode.ADD, 2.0),)))
        with pytest.raises(InvalidArgumentError) as err:
            engine.generate_stream(_gen(n=65))
        assert err.value.field == "sampling.max_new_tokens"
        with pytest.raises(InvalidArgumentError) as err:
            engine.generate_stream(GenerationRequest(Prompt(token_ids=tuple(range(1, 200)) * 6)))
        assert err.value.field == "prompt_token_ids"
        assert (await engine.generate(_gen(n=2))).stop_reason == StopReason.MAX_TOKENS  # still serving


async def test_policy_applies_by_default_and_enforced_policy_cannot_be_skipped() -> None:
    loaded = loaded_model()
    async with running_engine(loaded) as engine:
        engine.put_direction(random_direction("d", loaded))
        steer = (SteeringTerm("d", SteeringMode.ADD, -1.0),)
        explicit = await engine.generate(_gen(steer=steer))
        engine.set_policy(SteeringPolicy(steer))
        assert (await engine.generate(_gen())).token_ids == explicit.token_ids
        opted_out = await engine.generate(replace(_gen(), ignore_policy=True))
        assert opted_out.token_ids != explicit.token_ids
        engine.set_policy(SteeringPolicy(steer, enforced=True))
        with pytest.raises(PermissionDeniedError):
            engine.generate_stream(replace(_gen(), ignore_policy=True))
        with pytest.raises(NotFoundError):
            engine.set_policy(SteeringPolicy((SteeringTerm("gone", SteeringMode.ABLATE, 1.0),)))


async def test_directions_from_another_model_load_uncalibrated_or_are_refused() -> None:
    loaded = loaded_model()
    foreign = replace(
        random_direction("f", loaded),
        provenance=Provenance("other/model", "0" * 16, ""),
        calibration={"token": Calibration(0.0, 1.0)},
    )
    async with running_engine(loaded) as engine:
        stored = engine.put_direction(foreign)
        assert not stored.calibrated
        with pytest.raises(InvalidArgumentError):
            engine.put_direction(foreign, strict=True)
        mine = replace(foreign, provenance=Provenance("x", engine.config_hash, engine.tokenizer_hash))
        assert engine.put_direction(mine).calibrated
        out = await engine.generate(
            GenerationRequest(
                Prompt(token_ids=PROMPT), SamplingParams(max_new_tokens=3), monitor=MonitorOptions(directions=("f",))
            )
        )
        assert out.monitor[0].calibrated


async def test_canary_reference_stops_at_eos_like_the_engine() -> None:
    loaded = loaded_model()
    async with running_engine(loaded):
        prompt = [1, 5, 9, 13, 17, 21, 25, 29]
        free = plain_greedy(loaded.model, prompt, 6, set())
        assert plain_greedy(loaded.model, prompt, 6, {free[1]}) == free[:2]  # token 1 as EOS


async def test_a_callers_own_forward_between_steps_is_not_steered() -> None:
    """Someone who shares the model with the engine (a benchmark's `generate`, a notebook) runs plain forwards: the
    hooks must leave them alone, not steer and read them with the last step's tables (they did, for batch-1 inputs,
    until the hooks acted only inside the batching manager's own forward)."""
    loaded = loaded_model()
    ids = torch.tensor([list(PROMPT)], device=loaded.model.device)
    with torch.inference_mode():
        before = loaded.model(ids).logits
    async with running_engine(loaded) as engine:
        engine.put_direction(random_direction("d", loaded, scale=1.0))
        term = SteeringTerm("d", SteeringMode.ADD, -1.0)
        request = GenerationRequest(Prompt(token_ids=PROMPT), SamplingParams(max_new_tokens=4), (term,))
        steered = await engine.generate(request)
        plain = await engine.generate(replace(request, steering=()))
        assert steered.token_ids != plain.token_ids  # the last step's tables steer
        await engine.generate(request)  # ... and are the ones left in place
        with torch.inference_mode():
            between = loaded.model(ids).logits
    assert torch.equal(between, before)


async def test_prompts_are_tokenized_off_the_event_loop() -> None:
    """Finding 4: heavy tokenizing must not hold up the event loop (Generate, GenerateStream, Compare, Score)."""
    import threading

    from steering_server.types import ScoreRequest

    async with running_engine() as engine:
        threads: list[threading.Thread] = []
        render = engine._render

        def spy(request):  # type: ignore[no-untyped-def]
            threads.append(threading.current_thread())
            return render(request)

        engine._render = spy  # type: ignore[method-assign]
        prompt = Prompt(text="Hello there")
        await engine.generate(GenerationRequest(prompt, SamplingParams(max_new_tokens=2)))
        await engine.compare(CompareRequest(prompt, SamplingParams(max_new_tokens=2), (Variant("a", ()),)))
        await engine.score(ScoreRequest(prompt, response_text="hi"))
        assert len(threads) == 3 and threading.main_thread() not in threads
