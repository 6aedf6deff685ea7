"""One admitted request as an asyncio stream: token events, then a final result (or an error).

The batching manager calls `on_output` on the event loop (via call_soon_threadsafe) with cumulative outputs; the
readings for those tokens were recorded by the loop thread before the output was delivered.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any

from .detok import IncrementalDetokenizer
from .engine_api import RequestStream
from .errors import InvalidArgumentError
from .planning import RequestPlan
from .runtime import RequestTrack
from .types import (
    Alert,
    AlertAction,
    AlertRule,
    ConditionScope,
    DirectionScores,
    GenerationResult,
    RequestTiming,
    StopReason,
    TokenEvent,
)

__all__ = ["GenerationStream", "direction_scores", "score_alerts"]

log = logging.getLogger(__name__)


class _End(enum.Enum):
    END = 0


def direction_scores(
    plan: RequestPlan, track: RequestTrack, n_scored: int, with_tokens: bool
) -> tuple[DirectionScores, ...]:
    """Scores at the last prompt token and the first `n_scored` fed-back generated positions."""
    out = []
    p0 = track.prompt_len
    for m in plan.monitors:
        readings = track.readings.get((m.row, m.layer), {})
        # Values per position (the projection, or an SAE feature's activation), pooled as values: response_mean is
        # the mean of the per-token values (of activations, for a feature), and calibration is of those values.
        prompt_raw = m.value(readings.get(p0 - 1, math.nan))
        raw_tokens = [m.value(readings.get(p0 + i, math.nan)) for i in range(n_scored)]
        tokens = [m.z(v, m.calibration) for v in raw_tokens]
        response = m.z(sum(raw_tokens) / len(raw_tokens), m.response_calibration) if raw_tokens else None
        out.append(
            DirectionScores(
                direction=m.name,
                layer=m.layer,
                prompt_score=m.z(prompt_raw, m.prompt_calibration),
                response_score=response,
                token_scores=tuple(tokens) if with_tokens else (),
                calibrated=m.calibration is not None,
                post_intervention=m.post_intervention,
                max_score=max(tokens) if tokens else None,
            )
        )
    return tuple(out)


def score_alerts(
    plan: RequestPlan, track: RequestTrack, n_scored: int, rules: tuple[AlertRule, ...]
) -> tuple[Alert, ...]:
    """Score's alerts: each policy rule's watch (plan.watches, one per rule in order) on the prefill's readings,
    PROMPT at the last prompt token, RUNNING at the first of the `n_scored` response positions that reaches it; the
    alert carries the rule's own action (Score ran it as RECORD: nothing stops or steers)."""
    out = []
    p0 = track.prompt_len
    policy_watches = [w for w in plan.watches if w.source == "policy"]
    for w, rule in zip(policy_watches, rules, strict=True):
        readings = track.readings.get((w.entry.monitor_row, w.layer), {})
        candidates: list[tuple[int, int | None]]
        if w.scope == ConditionScope.PROMPT:
            candidates = [(p0 - 1, None)]
        else:
            candidates = [(p0 + i, i) for i in range(n_scored)]
        for pos, index in candidates:
            raw = readings.get(pos)
            if raw is not None and w.fires(raw):
                out.append(replace(w.alert(raw, index), action=rule.action))
                break
    return tuple(out)


class GenerationStream(RequestStream):
    def __init__(
        self,
        request_id: str,
        track: RequestTrack,
        plan: RequestPlan,
        tokenizer: Any,
        stop: tuple[str, ...],
        eos_ids: set[int],
        token_scores: bool,
        on_close: Callable[[GenerationStream, bool], None],
    ) -> None:
        self.request_id = request_id
        self.track = track
        self.plan = plan
        self._detok = IncrementalDetokenizer(tokenizer, stop)
        self._eos = eos_ids
        self._token_scores = token_scores
        self._watches = list(plan.watches)  # not yet fired (alerts.py)
        # A RUNNING STOP watch holds each token back until the reading at its own position is known (alerts.py).
        self._delay = any(w.action == AlertAction.STOP and w.scope == ConditionScope.RUNNING for w in self._watches)
        self._received: list[int] = []  # every token the manager delivered; token_ids: those released
        self.alerts: list[Alert] = []
        self._on_close = on_close  # (stream, needs_cancel) -> frees engine resources, cancels in the manager
        self._queue: asyncio.Queue[TokenEvent | _End | BaseException] = asyncio.Queue()
        self._result: asyncio.Future[GenerationResult] = asyncio.get_running_loop().create_future()
        self.token_ids: list[int] = []
        self.done = False
        self.admitted = time.monotonic()
        self._token_times: list[float] = []  # when each token reached the stream (RequestTiming)

    # ---- consumer side ----
    async def __aiter__(self) -> AsyncIterator[TokenEvent]:  # type: ignore[override]
        while True:
            item = await self._queue.get()
            if item is _End.END:
                return
            if isinstance(item, BaseException):
                raise item
            assert isinstance(item, TokenEvent)
            yield item

    async def result(self) -> GenerationResult:
        return await asyncio.shield(self._result)

    def final(self) -> GenerationResult | None:
        if self._result.done() and self._result.exception() is None:
            return self._result.result()
        return None

    def cancel(self) -> None:
        if not self.done:
            self._finish(StopReason.CANCELLED, needs_cancel=True)

    def add_result_callback(self, callback: Callable[[GenerationResult], None]) -> None:
        """`callback(result)` on the event loop once the request has a result (a cancelled one included); not
        called when it fails. The monitor feed publishes this way."""

        def done(future: asyncio.Future[GenerationResult]) -> None:
            if not future.cancelled() and future.exception() is None:
                callback(future.result())

        self._result.add_done_callback(done)

    # ---- producer side (event loop thread) ----
    def on_output(self, generated: list[int], finished: bool, error: str | None) -> None:
        if self.done:
            return
        if error is not None:
            self.fail(RuntimeError(error))
            return
        if self.track.overflow_layer is not None:
            log.warning("%s: steered states overflowed at layer %d", self.request_id, self.track.overflow_layer)
            self.fail(
                InvalidArgumentError(
                    "steering",
                    f"the steered hidden state overflowed (not finite, or near the dtype's range) at layer "
                    f"{self.track.overflow_layer}; the request was stopped (other requests are unaffected): "
                    "lower the strengths",
                )
            )
            return
        self._now = time.monotonic()
        for token in generated[len(self._received) :]:
            i = len(self._received)
            self._received.append(token)
            if self._check_watches(i):
                self._finish(StopReason.MONITOR_ALERT, needs_cancel=True)
                return
            if not self._release(i - 1 if self._delay else i):
                return
        if finished:
            if not self._release(len(self._received) - 1):  # the last token is never fed back: nothing to wait for
                return
            reason = (
                StopReason.EOS_TOKEN if self.token_ids and self.token_ids[-1] in self._eos else StopReason.MAX_TOKENS
            )
            self._finish(reason, needs_cancel=False)

    def _release(self, upto: int) -> bool:
        """Stream the received tokens up to index `upto`; False once a stop sequence ended the request."""
        while len(self.token_ids) <= upto:
            i = len(self.token_ids)
            token = self._received[i]
            self.token_ids.append(token)
            self._token_times.append(self._now)  # when the client gets it (one step late under a RUNNING STOP)
            delta = self._detok.add(token)
            self._queue.put_nowait(TokenEvent(i, token, delta, self._token_readings(i)))
            if self._detok.stopped:
                self._finish(StopReason.STOP_SEQUENCE, needs_cancel=True)
                return False
        return True

    def _check_watches(self, i: int) -> bool:
        """Check the watches on the reading delivered with token i (the input position of token i: the last prompt
        token for i = 0, generated token i - 1 after). True when a STOP fired: the tokens it holds back (alerts.py)
        were never released."""
        pos = self.track.prompt_len - 1 + i
        scope = ConditionScope.PROMPT if i == 0 else ConditionScope.RUNNING
        stop = False
        for w in [w for w in self._watches if w.scope == scope]:
            raw = self.track.readings.get((w.entry.monitor_row, w.layer), {}).get(pos)
            if raw is None or not w.fires(raw):
                continue
            self._watches.remove(w)
            self.alerts.append(w.alert(raw, None if i == 0 else i - 1))
            stop |= w.action == AlertAction.STOP
        return stop

    def _token_readings(self, i: int) -> dict[str, float]:
        """The readings at the input position that produced token i: the last prompt token for i = 0."""
        pos = self.track.prompt_len - 1 + i
        out = {}
        for m in self.plan.monitors:
            raw = self.track.readings.get((m.row, m.layer), {}).get(pos)
            if raw is not None:
                out[m.name] = m.z(m.value(raw), m.prompt_calibration if i == 0 else m.calibration)
        return out

    def _finish(self, reason: StopReason, needs_cancel: bool) -> None:
        self.done = True
        tail = self._detok.finish()
        n_scored = max(0, len(self.token_ids) - 1)
        result = GenerationResult(
            text=self._detok.text,
            token_ids=tuple(self.token_ids),
            stop_reason=reason,
            prompt_tokens=self.track.prompt_len,
            monitor=direction_scores(self.plan, self.track, n_scored, self._token_scores),
            request_id=self.request_id,
            text_tail=tail,
            alerts=tuple(self.alerts),
            steered=self.plan.applied(tuple(self.alerts)),
            timing=RequestTiming(self.admitted, self.track.scheduled_at, tuple(self._token_times), time.monotonic()),
        )
        self._on_close(self, needs_cancel)
        self._result.set_result(result)
        self._queue.put_nowait(_End.END)

    def fail(self, error: BaseException) -> None:
        if self.done:
            return
        self.done = True
        self._on_close(self, True)
        self._result.set_exception(error)
        self._result.exception()  # mark retrieved: a caller that only iterates still sees the error
        self._queue.put_nowait(error)
