"""The SteeringService RPCs: each decodes the request, makes one engine call and encodes the answer.

Errors are turned into statuses by the `unary`/`streaming` wrappers (status.py), nowhere else.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any, TypeAlias

import grpc.aio
from steering_client import pb, pb_grpc

from ..audit_log import AuditLog, direction_summary
from ..compute_types import ComputeResult
from ..engine_api import EngineClient, collect
from ..errors import UnavailableError
from ..monitor_feed import MonitorSubscription, front_end
from . import compute_codec, decode, encode
from .auth import Access
from .metrics import Metrics
from .status import streaming, unary

__all__ = ["SteeringServicer"]

Context: TypeAlias = grpc.aio.ServicerContext


class SteeringServicer(pb_grpc.SteeringServiceServicer):
    """Serves `engine` once attached; until then every RPC answers UNAVAILABLE (the engine is starting)."""

    def __init__(
        self,
        engine: EngineClient | None = None,
        metrics: Metrics | None = None,
        access: Access | None = None,
        audit: AuditLog | None = None,
    ) -> None:
        self.metrics = metrics or Metrics()
        self.access = access or Access()
        self.audit = audit  # policy and registry changes are recorded here, with who made them
        self._watches: set[MonitorSubscription] = set()  # open WatchMonitor calls, ended when the server drains
        self.in_flight = 0  # RPCs running (kept by the status wrappers)
        self.draining = False  # stopping: new RPCs answer UNAVAILABLE while running ones finish
        self._engine = engine
        self._bounds: decode.Bounds | None = None

    def attach(self, engine: EngineClient) -> None:
        self._engine = engine
        self._bounds = None

    @property
    def engine(self) -> EngineClient:
        if self._engine is None:
            raise UnavailableError("the engine is starting; retry when health reports SERVING")
        return self._engine

    @property
    def bounds(self) -> decode.Bounds:
        if self._bounds is None:  # the model never changes while serving: read it once
            info = self.engine.model_info()
            self._bounds = decode.Bounds(self.engine.limits, info.num_layers, info.hidden_size, info.vocab_size)
        return self._bounds

    @unary
    async def Generate(self, request: pb.GenerateRequest, context: Context) -> pb.GenerateResponse:
        received = time.monotonic()
        req = decode.generate_request(request, self.bounds)
        with front_end("grpc", "Generate"):  # read by the engine at admission, for the monitor feed's events
            stream = await self.engine.open_stream(req)
        try:
            result = await collect(stream)
        finally:  # a cancelled call's tokens are counted too
            self.metrics.generation("Generate", stream.final(), received)
        return encode.generate_response(result, req.sampling.seed)

    @streaming
    async def GenerateStream(
        self, request: pb.GenerateRequest, context: Context
    ) -> AsyncIterator[pb.GenerateStreamResponse]:
        received = time.monotonic()
        req = decode.generate_request(request, self.bounds)
        with front_end("grpc"):
            stream = await self.engine.open_stream(req)
        try:  # cancellation or a deadline raises CancelledError here; `finally` frees the request at once
            async for event in stream:
                yield encode.stream_token(event)
            result = await stream.result()
            yield encode.stream_final(result, req.sampling.seed)
        finally:
            stream.cancel()
            self.metrics.generation("GenerateStream", stream.final(), received)  # a cancelled stream's tokens too

    @unary
    async def Compare(self, request: pb.CompareRequest, context: Context) -> pb.CompareResponse:
        received = time.monotonic()
        req = decode.compare_request(request, self.bounds)
        with front_end("grpc"):
            result = await self.engine.compare(req)
        self.metrics.comparison(result, received)
        return encode.compare_response(result, req.sampling.seed)

    @unary
    async def Score(self, request: pb.ScoreRequest, context: Context) -> pb.ScoreResponse:
        req = decode.score_request(request, self.bounds)
        with front_end("grpc"):
            result = await self.engine.score(req)
        self.metrics.scoring(result)
        return encode.score_response(result)

    @unary
    async def ListDirections(self, request: pb.ListDirectionsRequest, context: Context) -> pb.ListDirectionsResponse:
        directions = sorted(self.engine.list_directions(), key=lambda d: d.name)
        return pb.ListDirectionsResponse(directions=[encode.direction(d) for d in directions])

    @unary
    async def GetDirection(self, request: pb.GetDirectionRequest, context: Context) -> pb.Direction:
        name = decode.direction_name(request.name)
        if request.include_vectors:
            self.access.check_observer(context.invocation_metadata())
        return encode.direction(self.engine.get_direction(name), request.include_vectors)

    @unary
    async def PutDirection(self, request: pb.PutDirectionRequest, context: Context) -> pb.PutDirectionResponse:
        direction = decode.put_direction(request, self.bounds)
        stored = self.engine.put_direction(direction, strict=request.strict)
        await self._audit(context, "PutDirection", direction=direction_summary(stored))
        return encode.put_direction_response(stored, direction)

    @unary
    async def DeleteDirection(self, request: pb.DeleteDirectionRequest, context: Context) -> pb.DeleteDirectionResponse:
        name = decode.direction_name(request.name)
        self.engine.delete_direction(name)
        self.metrics.forget_direction(name)
        await self._audit(context, "DeleteDirection", name=name)
        return pb.DeleteDirectionResponse()

    @streaming
    async def ComputeDirection(
        self, request: pb.ComputeDirectionRequest, context: Context
    ) -> AsyncIterator[pb.ComputeDirectionEvent]:
        events = self.engine.compute_direction(compute_codec.compute_request(request))
        try:  # cancellation or a deadline raises CancelledError here; closing the job frees its engine requests
            async for event in events:
                if isinstance(event, ComputeResult) and event.stored:  # a registry change, like PutDirection
                    await self._audit(context, "ComputeDirection", direction=direction_summary(event.direction))
                yield compute_codec.compute_event(event)
        finally:
            await events.aclose()

    @unary
    async def GetSteering(self, request: pb.GetSteeringRequest, context: Context) -> pb.SteeringPolicy:
        return encode.steering_policy(self.engine.get_policy())

    @unary
    async def SetSteering(self, request: pb.SetSteeringRequest, context: Context) -> pb.SteeringPolicy:
        policy = self.engine.set_policy(decode.steering_policy(request.policy, self.bounds))
        await self._audit(context, "SetSteering", policy=policy)
        return encode.steering_policy(policy)

    @unary
    async def ModelInfo(self, request: pb.ModelInfoRequest, context: Context) -> pb.ModelInfoResponse:
        return encode.model_info(self.engine.model_info(), self.engine.limits)

    @unary
    async def Tokenize(self, request: pb.TokenizeRequest, context: Context) -> pb.TokenizeResponse:
        text = decode.tokenize_text(request.text, self.bounds)
        ids, tokens = await asyncio.to_thread(self._tokenize, text)  # up to 256k tokens: off the event loop
        return pb.TokenizeResponse(token_ids=ids, tokens=tokens)

    @streaming
    async def WatchMonitor(self, request: pb.WatchMonitorRequest, context: Context) -> AsyncIterator[pb.MonitorEvent]:
        # Observers only: the AuthInterceptor refused anyone else before the body was parsed.
        subscription = self.engine.watch_monitor(decode.watch_request(request))
        self._watches.add(subscription)
        try:  # the caller cancelling (or going away) raises CancelledError here; `finally` unsubscribes
            async for event, dropped in subscription:
                yield encode.monitor_event(event, dropped)
        finally:
            self._watches.discard(subscription)
            subscription.close()

    @property
    def watching(self) -> int:
        """Open WatchMonitor calls (counted in `in_flight` too)."""
        return len(self._watches)

    def end_watches(self) -> None:
        """End every WatchMonitor call (status OK) once what it buffered is sent: a watch never ends by itself,
        and a graceful stop must not wait its whole grace period for the dashboards."""
        for subscription in list(self._watches):
            subscription.end()

    async def _audit(self, context: Context, kind: str, **fields: Any) -> None:
        """Record a change (after it happened; answered once the line is on disk) with who made it."""
        if self.audit is not None:
            who = self.access.identify(context.invocation_metadata())
            await self.audit.write(kind, who=who, peer=context.peer(), **fields)

    def _tokenize(self, text: str) -> tuple[list[int], list[str]]:
        ids = self.engine.tokenize(text)
        return ids, [self.engine.detokenize([i]) for i in ids]
