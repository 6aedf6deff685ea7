"""The engine's timing record and steered flag (what the service's latency and steering metrics are made of)."""

from __future__ import annotations

import asyncio

from steering_server.types import GenerationRequest, Prompt, SamplingParams, SteeringMode, SteeringTerm, StopReason

from .conftest import loaded_model, random_direction, running_engine

PROMPT = Prompt(token_ids=(1, 40, 77, 81, 95, 120, 33, 200))


async def test_a_result_carries_when_each_stage_happened_and_whether_it_was_steered() -> None:
    loaded = loaded_model()
    async with running_engine(loaded) as engine:
        engine.put_direction(random_direction("d", loaded))
        plain, steered = await asyncio.gather(
            engine.generate(GenerationRequest(PROMPT, SamplingParams(max_new_tokens=6))),
            engine.generate(
                GenerationRequest(
                    PROMPT, SamplingParams(max_new_tokens=6), steering=(SteeringTerm("d", SteeringMode.ABLATE, 1.0),)
                )
            ),
        )
        for result in (plain, steered):
            timing = result.timing
            assert timing is not None and timing.scheduled is not None and timing.finished is not None
            assert len(timing.token_times) == len(result.token_ids) >= 1
            assert timing.admitted <= timing.scheduled <= timing.token_times[0]
            assert list(timing.token_times) == sorted(timing.token_times)
            assert timing.token_times[-1] <= timing.finished
        assert (plain.steered, steered.steered) == (False, True)

        # A cancelled stream's result still says what it generated, and when.
        stream = await engine.open_stream(GenerationRequest(PROMPT, SamplingParams(max_new_tokens=64)))
        async for event in stream:
            if event.index == 2:
                break
        assert stream.final() is None  # still running
        stream.cancel()
        cancelled = stream.final()
        assert cancelled is not None and cancelled.stop_reason is StopReason.CANCELLED
        assert cancelled.timing is not None and len(cancelled.timing.token_times) == len(cancelled.token_ids) >= 3
