"""The live monitor feed: every finished request's monitor summary, fanned out to watchers (WatchMonitor).

Lossy by design (DESIGN.md "API surface"): each watcher has a bounded buffer, and when it is full the **oldest**
event is dropped (a dashboard wants what is happening now; the durable record of alerts is the audit log,
audit_log.py, which is a *sink* and sees every event). The number dropped is handed to the watcher with the next
event it receives. Publishing never waits for a watcher and never allocates per watcher beyond one buffer slot: it
is O(watchers) appends under a lock, called on the engine's path as each request finishes.

Plain Python (no grpc): the engine publishes, the service encodes; any front end that calls the engine (gRPC,
the HTTP API) gets its requests into the feed. A front end names itself, and the call, with `front_end(...)` around
its engine calls, so events say where a request came from.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import math
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, replace

from .composition import FieldTerm
from .errors import ResourceExhaustedError
from .types import Alert, AlertAction, DirectionScores, GenerationResult, SteeringPolicy, SteeringTerm, StopReason

__all__ = [
    "DEFAULT_BUFFER",
    "MAX_BUFFER",
    "MAX_WATCHERS",
    "MonitorEvent",
    "MonitorFeed",
    "MonitorFilter",
    "MonitorSubscription",
    "current_front_end",
    "current_rpc",
    "front_end",
    "request_event",
]

log = logging.getLogger(__name__)

DEFAULT_BUFFER = 256  # events held per watcher while it is behind
MAX_BUFFER = 4096
MAX_WATCHERS = 32  # bounds the feed's memory: at most MAX_WATCHERS x MAX_BUFFER events held

_FRONT_END: contextvars.ContextVar[tuple[str, str | None]] = contextvars.ContextVar(
    "steering_front_end", default=("", None)
)


@contextlib.contextmanager
def front_end(name: str, rpc: str | None = None) -> Iterator[None]:
    """Label the requests made to the engine inside this block (in this task) as coming from `name` ("grpc",
    "http") and, when given, as the call `rpc` (gRPC's Generate runs through the engine's open_stream; the HTTP
    API's "ChatCompletions"). Read when a request is admitted, so it follows the caller, not the batching thread."""
    token = _FRONT_END.set((name, rpc))
    try:
        yield
    finally:
        _FRONT_END.reset(token)


def current_front_end() -> str:
    return _FRONT_END.get()[0]


def current_rpc(default: str) -> str:
    """The call's name as the front end gave it, else `default` (the engine method's)."""
    return _FRONT_END.get()[1] or default


@dataclass(frozen=True)
class MonitorEvent:
    """One finished request's monitor summary. Compare publishes one event per variant."""

    request_id: str
    time: float  # Unix seconds when the request finished
    rpc: str  # the call: gRPC's "Generate", "GenerateStream", "Compare", "Score"; the HTTP API's "ChatCompletions"...
    front_end: str  # who called the engine: "grpc", "http", ... ("" in-process)
    variant: str  # Compare: the variant's name; "" otherwise
    scores: tuple[DirectionScores, ...]  # per monitored direction, without token_scores
    alerts: tuple[Alert, ...]
    # The terms that ran: after the policy (its terms first when applied), then the STEER alert rules' terms with
    # their condition (a rule's terms steered when its STEER alert is in `alerts`).
    steering: tuple[SteeringTerm, ...]
    policy_applied: bool  # the server policy's terms were among them, or one of its STEER rules fired
    policy_enforced: bool  # the policy was enforced when the request was admitted
    stop_reason: StopReason | None  # None for Score (nothing was generated)
    prompt_tokens: int
    completion_tokens: int  # generated tokens (Score: the response's tokens)


def request_event(
    result: GenerationResult | None,
    *,
    rpc: str,
    request_id: str = "",
    front: str = "",
    variant: str = "",
    terms: tuple[FieldTerm, ...] = (),
    policy: SteeringPolicy | None = None,
    scores: tuple[DirectionScores, ...] | None = None,
    prompt_tokens: int = 0,
    completion_tokens: int = 0,
    alerts: tuple[Alert, ...] = (),
) -> MonitorEvent:
    """The event for a finished generation (`result`), or for a Score (`result` None: `scores` and the counts).
    `terms` are the terms the request ran with (RequestPlan.terms: the policy's are named `policy.terms[i]`, the
    STEER rules' `policy.alerts[i].steering...`),
    `policy` the server policy when it was admitted; `alerts` Score's (ScoreResult.alerts)."""
    if result is not None:
        scores, request_id, alerts = result.monitor, result.request_id or request_id, result.alerts
        prompt_tokens, completion_tokens = result.prompt_tokens, len(result.token_ids)
    summary = tuple(replace(s, token_scores=()) if s.token_scores else s for s in scores or ())
    return MonitorEvent(
        request_id=request_id,
        time=time.time(),
        rpc=rpc,
        front_end=front,
        variant=variant,
        scores=summary,
        alerts=alerts,
        steering=tuple(ft.term for ft in terms),
        policy_applied=any(ft.field.startswith("policy.terms") for ft in terms)
        or (result is not None and any(a.action == AlertAction.STEER and a.source == "policy" for a in alerts)),
        policy_enforced=policy is not None and policy.enforced,
        stop_reason=result.stop_reason if result is not None else None,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
    )


@dataclass(frozen=True)
class MonitorFilter:
    """Which events a watcher gets. `directions` empty: all; otherwise only events that scored, or alerted on, one
    of them. `min_score`: only events where a prompt, response or max score of a listed direction (every direction
    when none is listed) is >= it. `alerts_only`: only events with an alert (on a listed direction when listed)."""

    directions: tuple[str, ...] = ()
    min_score: float | None = None
    alerts_only: bool = False
    buffer: int = DEFAULT_BUFFER

    @functools.cached_property
    def _everything(self) -> bool:
        return not self.directions and self.min_score is None and not self.alerts_only

    @functools.cached_property
    def _names(self) -> frozenset[str]:
        return frozenset(self.directions)

    def matches(self, event: MonitorEvent) -> bool:
        if self._everything:  # the common dashboard: no filter, no work per event
            return True
        names = self._names
        scores = [s for s in event.scores if not names or s.direction in names]
        alerts = [a for a in event.alerts if not names or a.direction in names]
        if names and not scores and not alerts:
            return False
        if self.alerts_only and not alerts:
            return False
        if self.min_score is not None:
            floor = self.min_score
            values = (v for s in scores for v in (s.prompt_score, s.response_score, s.max_score) if v is not None)
            if not any(v >= floor for v in values if not math.isnan(v)):
                return False
        return True


class MonitorSubscription:
    """One watcher's bounded buffer. Iterate (on the event loop that subscribed) for `(event, dropped)` pairs:
    `dropped` counts the events lost to a full buffer since the previous pair. `close()` unsubscribes."""

    def __init__(self, feed: MonitorFeed, where: MonitorFilter) -> None:
        self.filter = where
        self.capacity = where.buffer
        self.dropped_total = 0
        self._feed = feed
        self._buffer: deque[MonitorEvent] = deque()
        self._dropped = 0  # since the last event handed out
        self._lock = threading.Lock()
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        self._waiter: asyncio.Future[None] | None = None
        self.closed = False
        self._ending = False  # end(): hand out what is buffered, then stop

    def __len__(self) -> int:
        return len(self._buffer)

    def offer(self, event: MonitorEvent) -> None:
        """Buffer `event` (dropping the oldest when full) and wake the reader; never blocks on the reader."""
        with self._lock:
            if self.closed:
                return
            if len(self._buffer) >= self.capacity:
                self._buffer.popleft()
                self._dropped += 1
                self.dropped_total += 1
            self._buffer.append(event)
            waiter = self._waiter
        if waiter is not None:
            if threading.get_ident() == self._thread:
                self._wake()
            else:  # a front end on another thread: hand the wake-up to the subscriber's loop
                with contextlib.suppress(RuntimeError):  # that loop is closed: nobody is waiting any more
                    self._loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def next(self) -> tuple[MonitorEvent, int] | None:
        """The oldest buffered event and the drops before it; waits for one. None once closed."""
        while True:
            with self._lock:
                if self.closed:
                    return None
                if self._buffer:
                    dropped, self._dropped = self._dropped, 0
                    return self._buffer.popleft(), dropped
                if self._ending:
                    return None
                self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    async def __aiter__(self) -> AsyncIterator[tuple[MonitorEvent, int]]:
        try:
            while (item := await self.next()) is not None:
                yield item
        finally:
            self.close()

    def end(self) -> None:
        """Let the reader take what is buffered, then end its iteration (a server that is stopping)."""
        with self._lock:
            self._ending = True
        self._wake_reader()

    def close(self) -> None:
        with self._lock:
            if self.closed:
                return
            self.closed = True
            self._buffer.clear()
        self._feed._remove(self)
        self._wake_reader()

    def _wake_reader(self) -> None:
        if threading.get_ident() == self._thread:
            self._wake()
        else:
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody is waiting any more
                self._loop.call_soon_threadsafe(self._wake)


class MonitorFeed:
    """Fan-out of MonitorEvents: watchers (bounded, lossy) and sinks (called with every event, e.g. the audit
    log; a sink must not block). Thread-safe: publish from any thread."""

    def __init__(self, max_watchers: int = MAX_WATCHERS) -> None:
        self.max_watchers = max_watchers
        self._watchers: tuple[MonitorSubscription, ...] = ()  # replaced, never mutated: publish reads it unlocked
        self._sinks: tuple[Callable[[MonitorEvent], None], ...] = ()
        self._lock = threading.Lock()
        self.published = 0

    @property
    def watchers(self) -> int:
        return len(self._watchers)

    def subscribe(self, where: MonitorFilter | None = None) -> MonitorSubscription:
        """A new watcher (call on the event loop that will read it). ResourceExhausted beyond max_watchers."""
        sub = MonitorSubscription(self, where or MonitorFilter())
        with self._lock:
            if len(self._watchers) >= self.max_watchers:
                raise ResourceExhaustedError(f"{len(self._watchers)} monitor watchers (limit {self.max_watchers})")
            self._watchers = (*self._watchers, sub)
        return sub

    def add_sink(self, sink: Callable[[MonitorEvent], None]) -> None:
        with self._lock:
            self._sinks = (*self._sinks, sink)

    def remove_sink(self, sink: Callable[[MonitorEvent], None]) -> None:
        with self._lock:
            self._sinks = tuple(s for s in self._sinks if s is not sink)

    def _remove(self, sub: MonitorSubscription) -> None:
        with self._lock:
            self._watchers = tuple(w for w in self._watchers if w is not sub)

    def publish(self, event: MonitorEvent) -> None:
        """Hand `event` to every sink and every matching watcher. Never raises into the engine's path."""
        self.published += 1
        for sink in self._sinks:
            try:
                sink(event)
            except Exception:  # a broken sink must not fail the request that finished
                log.exception("monitor feed sink %r failed", sink)
        for sub in self._watchers:
            try:
                if sub.filter.matches(event):
                    sub.offer(event)
            except Exception:
                log.exception("monitor feed watcher failed")
