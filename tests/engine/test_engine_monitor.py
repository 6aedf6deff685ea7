"""Monitoring: Score agrees with Generate, calibration, post-intervention flags, alarms, capture."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from steering_server.directions import Calibration
from steering_server.types import (
    AlertAction,
    ConditionScope,
    GenerationRequest,
    MonitorOptions,
    Prompt,
    SamplingParams,
    ScoreRequest,
    SteeringMode,
    SteeringTerm,
    StopReason,
)

from .conftest import DEVICE, loaded_model, random_direction, running_engine

PROMPT = (1, 40, 77, 81, 95, 120, 33, 200, 17, 64, 101, 90, 91)
ALL = MonitorOptions(token_scores=True)


def _gen(steer: tuple[SteeringTerm, ...] = (), n: int = 12, monitor: MonitorOptions = ALL) -> GenerationRequest:
    return GenerationRequest(Prompt(token_ids=PROMPT), SamplingParams(max_new_tokens=n), steer, monitor)


async def test_score_returns_the_scores_generate_reported() -> None:
    loaded = loaded_model()
    async with running_engine(loaded) as engine:
        engine.put_direction(random_direction("d", loaded))
        steer = (SteeringTerm("d", SteeringMode.ADD, -0.3),)
        gen = await engine.generate(_gen(steer))
        scored = await engine.score(
            ScoreRequest(Prompt(token_ids=PROMPT), response_token_ids=gen.token_ids, steering=steer)
        )
        g, s = gen.monitor[0], scored.monitor[0]
        # Same positions, computed in a different batch shape (one prefill vs token-by-token decode): fp32
        # agreement to 1e-4 relative.
        assert s.prompt_score == pytest.approx(g.prompt_score, rel=1e-4)
        assert len(s.token_scores) == len(gen.token_ids) - 1 == len(g.token_scores)
        assert list(s.token_scores) == pytest.approx(list(g.token_scores), rel=1e-4, abs=1e-5)
        assert s.response_score == pytest.approx(g.response_score, rel=1e-4)
        # Steering only at and above the monitor layer: scoring the same tokens unsteered reads the same values.
        unsteered = await engine.score(ScoreRequest(Prompt(token_ids=PROMPT), response_token_ids=gen.token_ids))
        assert list(unsteered.monitor[0].token_scores) == pytest.approx(list(s.token_scores), rel=1e-5)
        # Text is tokenized without special tokens.
        text = await engine.score(ScoreRequest(Prompt(token_ids=PROMPT), response_text="hello"))
        assert text.response_token_ids == tuple(engine.tokenize("hello"))
        assert len(text.monitor[0].token_scores) == len("hello") - 1


async def test_calibrated_scores_are_z_and_stream_scores_match() -> None:
    loaded = loaded_model()
    d = random_direction("d", loaded)
    cal = {
        "token": Calibration(1.0, 2.0),
        "response_mean": Calibration(0.5, 4.0),
        "last_prompt": Calibration(-1.0, 0.5),
    }
    async with running_engine(loaded) as engine:
        engine.put_direction(d)
        raw = await engine.generate(_gen())
        engine.put_direction(replace(d, calibration=cal))
        stream = engine.generate_stream(_gen())
        events = [e async for e in stream]
        z = await stream.result()
    r, c = raw.monitor[0], z.monitor[0]
    assert not r.calibrated and c.calibrated
    assert c.prompt_score == pytest.approx((r.prompt_score + 1.0) / 0.5, rel=1e-5)
    assert list(c.token_scores) == pytest.approx([(v - 1.0) / 2.0 for v in r.token_scores], rel=1e-5)
    assert c.response_score == pytest.approx((sum(r.token_scores) / len(r.token_scores) - 0.5) / 4.0, rel=1e-5)
    # Event i carries the reading that produced token i: the prompt's last token, then token i-1 fed back.
    assert events[0].scores["d"] == pytest.approx(c.prompt_score)
    assert [e.scores["d"] for e in events[1:]] == pytest.approx(list(c.token_scores))


async def test_post_intervention_flag_and_default_layers() -> None:
    loaded = loaded_model()
    async with running_engine(loaded) as engine:
        engine.put_direction(random_direction("d", loaded, monitor_layer=2))
        plain = await engine.generate(_gen())
        above = await engine.generate(_gen((SteeringTerm("d", SteeringMode.ABLATE, 1.0),)))
        below = await engine.generate(_gen((SteeringTerm("d", SteeringMode.ABLATE, 1.0, layers=(0,)),)))
    assert not above.monitor[0].post_intervention and below.monitor[0].post_intervention
    # Steering at and above the monitor layer leaves the prompt reading untouched; steering below changes it.
    assert above.monitor[0].prompt_score == pytest.approx(plain.monitor[0].prompt_score, rel=1e-6)
    assert below.monitor[0].prompt_score != pytest.approx(plain.monitor[0].prompt_score, rel=1e-3)


async def test_stop_threshold_reads_generated_tokens_and_holds_back_the_trigger() -> None:
    loaded = loaded_model()
    async with running_engine(loaded) as engine:
        engine.put_direction(random_direction("d", loaded))
        full = await engine.generate(_gen(n=16, monitor=MonitorOptions(token_scores=True)))
        scores = full.monitor[0].token_scores
        threshold = sorted(scores)[-3]  # the third highest generated-token reading
        j = next(i for i, v in enumerate(scores) if v >= threshold)
        alerted = await engine.generate(_gen(n=16, monitor=MonitorOptions(stop_threshold=threshold)))
        # Below every reading: the prompt score is not an alarm, the first generated token's reading is.
        low = min(full.monitor[0].prompt_score, *scores) - 1.0
        at_once = await engine.generate(_gen(n=16, monitor=MonitorOptions(stop_threshold=low)))
    assert alerted.stop_reason == StopReason.MONITOR_ALERT
    # token_scores[j] is read where token j was fed back: token j (its state) and j + 1 (sampled from it) are held.
    assert alerted.token_ids == full.token_ids[:j]
    (alert,) = alerted.alerts
    assert (alert.direction, alert.token_index, alert.threshold) == ("d", j, threshold)
    assert (alert.action, alert.source, alert.scope) == (AlertAction.STOP, "request", ConditionScope.RUNNING)
    assert alert.score == pytest.approx(scores[j], rel=1e-6)
    assert at_once.stop_reason == StopReason.MONITOR_ALERT and at_once.token_ids == ()
    assert at_once.alerts[0].token_index == 0


async def test_capture_means_equal_plain_hidden_states() -> None:
    loaded = loaded_model()
    prompt = list(PROMPT) * 3
    with torch.no_grad():
        hidden = loaded.model(torch.tensor([prompt], device=DEVICE), output_hidden_states=True).hidden_states
    async with running_engine(loaded, max_batch_tokens=16) as engine:  # chunked over three forwards
        means = await engine.capture_means(prompt, from_position=1)
    assert means.shape == (loaded.num_layers, loaded.hidden_size)
    for layer in range(loaded.num_layers - 1):  # hidden_states[-1] has the final norm applied
        expected = hidden[layer + 1][0, 1:].mean(0).cpu()
        assert torch.allclose(means[layer], expected, rtol=1e-4, atol=1e-5)


async def test_scores_are_nan_free_and_per_direction() -> None:
    loaded = loaded_model()
    async with running_engine(loaded) as engine:
        engine.put_direction(random_direction("d", loaded, seed=1))
        engine.put_direction(random_direction("e", loaded, seed=2, monitor_layer=3))
        out = await engine.generate(_gen(monitor=MonitorOptions(directions=("e",), token_scores=True)))
        both = await engine.generate(_gen())
    assert [m.direction for m in out.monitor] == ["e"] and out.monitor[0].layer == 3
    assert sorted(m.direction for m in both.monitor) == ["d", "e"]
    assert all(math.isfinite(v) for m in both.monitor for v in (m.prompt_score, *m.token_scores))


async def test_token_calibration_alone_calibrates_every_score() -> None:
    loaded = loaded_model()
    d = random_direction("d", loaded)
    async with running_engine(loaded) as engine:
        engine.put_direction(d)
        raw = (await engine.generate(_gen())).monitor[0]
        engine.put_direction(replace(d, calibration={"token": Calibration(1.0, 2.0)}))
        z = (await engine.generate(_gen())).monitor[0]
    assert z.calibrated
    assert z.prompt_score == pytest.approx((raw.prompt_score - 1.0) / 2.0, rel=1e-5)
    assert z.response_score == pytest.approx((raw.response_score - 1.0) / 2.0, rel=1e-5)
