"""The interface the service talks to, so service tests can run against a fake engine (vLLM's EngineClient)."""

from __future__ import annotations

import abc
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass

from .compute_types import ComputeEvent, ComputeRequest
from .directions import Direction
from .errors import UnavailableError
from .monitor_feed import MonitorFeed, MonitorFilter, MonitorSubscription
from .rules import check_watch
from .types import (
    CompareRequest,
    CompareResult,
    EngineLimits,
    EngineStats,
    GenerationRequest,
    GenerationResult,
    ModelInfo,
    ScoreRequest,
    ScoreResult,
    SteeringPolicy,
    TokenEvent,
    Variant,
    VariantResult,
)

__all__ = ["CompareStreams", "EngineClient", "RequestStream", "collect", "compare_result"]


class RequestStream(abc.ABC):
    """One admitted generation: iterate for TokenEvents, then await `result()`. `cancel()` frees it at once."""

    request_id: str

    @abc.abstractmethod
    def __aiter__(self) -> AsyncIterator[TokenEvent]: ...

    @abc.abstractmethod
    async def result(self) -> GenerationResult:
        """The final result (after the stream ends); raises the request's error if it failed."""

    @abc.abstractmethod
    def cancel(self) -> None: ...

    def final(self) -> GenerationResult | None:
        """The result once the request has ended (finished or cancelled), without waiting; None before that and
        when it failed. Lets a caller that is being cancelled still account for the tokens (service metrics)."""
        return None


@dataclass(frozen=True)
class CompareStreams:
    """A Compare's variants, admitted together (one batch, one seed: shared sampling noise), one stream each, in
    order. The caller owns the streams: cancel every one when done (`compare_result` pairs their results)."""

    variants: tuple[Variant, ...]
    streams: tuple[RequestStream, ...]

    def cancel(self) -> None:
        for s in self.streams:
            s.cancel()


async def collect(stream: RequestStream) -> GenerationResult:
    """Run a stream to its end and return its result."""
    try:
        async for _ in stream:
            pass
        return await stream.result()
    finally:
        stream.cancel()  # no-op once finished; frees the request if the caller was cancelled


def compare_result(variants: tuple[Variant, ...], results: list[GenerationResult]) -> CompareResult:
    """Pair variants with their results; each says where it first diverges from the first variant's tokens."""
    first = results[0].token_ids

    def diverges(tokens: tuple[int, ...]) -> int | None:
        for i, (x, y) in enumerate(zip(first, tokens, strict=False)):
            if x != y:
                return i
        return None if len(first) == len(tokens) else min(len(first), len(tokens))

    return CompareResult(
        tuple(VariantResult(v.name, r, diverges(r.token_ids)) for v, r in zip(variants, results, strict=True))
    )


class EngineClient(abc.ABC):
    """Every method raises only `steering_server.errors` classes for problems a caller can cause."""

    limits: EngineLimits
    # Every finished request's monitor summary is published here (monitor_feed.py), whichever front end asked.
    monitor_feed: MonitorFeed

    def watch_monitor(self, where: MonitorFilter | None = None) -> MonitorSubscription:
        """A watcher of the live monitor feed (bounded, lossy); close it (or finish iterating) to unsubscribe.
        Raises InvalidArgumentError for a bad filter, ResourceExhaustedError when the feed has its maximum of
        watchers."""
        return self.monitor_feed.subscribe(check_watch(where or MonitorFilter()))

    @property
    @abc.abstractmethod
    def healthy(self) -> bool:
        """True once the start-up canary passed and while the background loop is alive."""

    @abc.abstractmethod
    def add_death_callback(self, callback: Callable[[BaseException], None]) -> None:
        """Called once, from any thread, when the engine dies."""

    @abc.abstractmethod
    def model_info(self) -> ModelInfo: ...

    @abc.abstractmethod
    def tokenize(self, text: str) -> list[int]: ...

    @abc.abstractmethod
    def detokenize(self, token_ids: list[int]) -> str: ...

    @abc.abstractmethod
    def generate_stream(self, request: GenerationRequest) -> RequestStream:
        """Validate and admit (raising InvalidArgument/NotFound/ResourceExhausted/Unavailable synchronously)."""

    async def open_stream(self, request: GenerationRequest) -> RequestStream:
        """generate_stream for async callers: an engine may do its heavy preparation (tokenizing) off the event
        loop here. Raises what generate_stream raises."""
        return self.generate_stream(request)

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        return await collect(await self.open_stream(request))

    @abc.abstractmethod
    async def open_compare(self, request: CompareRequest) -> CompareStreams:
        """Validate and admit every variant (the defaults when none are given) before any is awaited; raises what
        generate_stream raises, the field named under `variants[i].`. Streams them token by token (the web page)."""

    async def compare(self, request: CompareRequest) -> CompareResult:
        opened = await self.open_compare(request)
        try:
            results = [await collect(s) for s in opened.streams]
        finally:
            opened.cancel()
        return compare_result(opened.variants, results)

    @abc.abstractmethod
    async def score(self, request: ScoreRequest) -> ScoreResult: ...

    @abc.abstractmethod
    def list_directions(self) -> list[Direction]: ...

    @abc.abstractmethod
    def get_direction(self, name: str) -> Direction: ...

    @abc.abstractmethod
    def put_direction(self, direction: Direction, strict: bool = False) -> Direction:
        """Validate and register (replacing one of the same name); returns what was stored. A direction whose
        provenance names another model is stored uncalibrated, or refused when `strict`."""

    @abc.abstractmethod
    def delete_direction(self, name: str) -> None: ...

    def compute_direction(self, request: ComputeRequest) -> AsyncGenerator[ComputeEvent, None]:
        """Progress events, then one ComputeResult (compute_job.py). Raises InvalidArgumentError naming the field
        for bad input, before or while it runs; cancelling the iteration frees every engine request it holds."""
        raise UnavailableError("this engine cannot compute directions")

    @abc.abstractmethod
    def get_policy(self) -> SteeringPolicy: ...

    @abc.abstractmethod
    def set_policy(self, policy: SteeringPolicy) -> SteeringPolicy: ...

    @abc.abstractmethod
    def stats(self) -> EngineStats: ...

    @abc.abstractmethod
    async def shutdown(self) -> None: ...
