"""asyncio client: the same methods as `SteeringClient`, as coroutines (and an async iterator for streams)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio

from . import builders, compute
from ._channel import DEFAULT_TARGET, HEALTH_SERVICE, channel_options
from ._proto.steering.v1 import steering_pb2 as pb
from ._proto.steering.v1 import steering_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from typing import Unpack

    from grpc_health.v1 import health_pb2

__all__ = ["AsyncSteeringClient"]


class AsyncSteeringClient:
    """`async with AsyncSteeringClient("127.0.0.1:50051") as client: ...`. Create it inside the running event
    loop. `timeout` (seconds) is the default deadline of every call; `metadata` is sent with every call."""

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        timeout: float | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        channel: grpc.aio.Channel | None = None,
    ) -> None:
        self._channel = channel or grpc.aio.insecure_channel(target, options=channel_options())
        self._stub = pb_grpc.SteeringServiceStub(self._channel)
        self._timeout = timeout
        self._metadata = tuple(metadata)

    async def __aenter__(self) -> AsyncSteeringClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    async def generate(
        self, prompt: str | None = None, **options: Unpack[builders.GenerateOptions]
    ) -> pb.GenerateResponse:
        return await self._call(self._stub.Generate, builders.generate_request(prompt, **options))

    async def generate_stream(
        self, prompt: str | None = None, **options: Unpack[builders.GenerateOptions]
    ) -> AsyncIterator[pb.GenerateStreamResponse]:
        """Yields one message per token (`.token`), then the result (`.final`). Leaving the loop early (or
        closing the generator) cancels the request on the server."""
        call = self._stub.GenerateStream(
            builders.generate_request(prompt, **options), timeout=self._timeout, metadata=self._metadata
        )
        try:
            async for message in call:
                yield message
        finally:
            call.cancel()  # no-op once the stream has ended

    async def compare(
        self, prompt: str | None = None, **options: Unpack[builders.CompareOptions]
    ) -> pb.CompareResponse:
        return await self._call(self._stub.Compare, builders.compare_request(prompt, **options))

    async def score(self, prompt: str | None = None, **options: Unpack[builders.ScoreOptions]) -> pb.ScoreResponse:
        return await self._call(self._stub.Score, builders.score_request(prompt, **options))

    async def list_directions(self) -> pb.ListDirectionsResponse:
        return await self._call(self._stub.ListDirections, pb.ListDirectionsRequest())

    async def get_direction(self, name: str, include_vectors: bool = False) -> pb.Direction:
        request = pb.GetDirectionRequest(name=name, include_vectors=include_vectors)
        return await self._call(self._stub.GetDirection, request)

    async def put_direction(
        self, name: str = "", **options: Unpack[builders.PutDirectionOptions]
    ) -> pb.PutDirectionResponse:
        """Exactly one of `vectors` ({layer: values}), `safetensors` (file bytes) or `path`."""
        return await self._call(self._stub.PutDirection, builders.put_direction_request(name, **options))

    async def delete_direction(self, name: str) -> pb.DeleteDirectionResponse:
        return await self._call(self._stub.DeleteDirection, pb.DeleteDirectionRequest(name=name))

    async def compute_direction_stream(
        self, name: str, **options: Unpack[compute.ComputeOptions]
    ) -> AsyncIterator[pb.ComputeDirectionEvent]:
        """Progress events (`.progress`), then the result (`.result`). Leaving the loop early cancels the job."""
        call = self._stub.ComputeDirection(
            compute.compute_direction_request(name, **options), timeout=self._timeout, metadata=self._metadata
        )
        try:
            async for message in call:
                yield message
        finally:
            call.cancel()

    async def compute_direction(
        self,
        name: str,
        on_progress: Callable[[pb.ComputeProgress], None] | None = None,
        **options: Unpack[compute.ComputeOptions],
    ) -> pb.ComputeDirectionResult:
        """Compute a direction on the served model (administrators); `on_progress` sees each progress event."""
        async for event in self.compute_direction_stream(name, **options):
            if event.HasField("result"):
                return event.result
            if on_progress is not None:
                on_progress(event.progress)
        raise RuntimeError("ComputeDirection ended without a result")

    async def get_steering(self) -> pb.SteeringPolicy:
        return await self._call(self._stub.GetSteering, pb.GetSteeringRequest())

    async def set_steering(
        self,
        terms: Sequence[pb.SteeringTerm] = (),
        enforced: bool = False,
        alerts: Sequence[pb.AlertRule] = (),
        *,
        policy: pb.SteeringPolicy | None = None,
    ) -> pb.SteeringPolicy:
        """Replace the server policy: `terms`, `enforced` and `alerts`, or a whole `policy` message."""
        policy = policy if policy is not None else builders.steering_policy(terms, enforced, alerts)
        return await self._call(self._stub.SetSteering, pb.SetSteeringRequest(policy=policy))

    async def model_info(self) -> pb.ModelInfoResponse:
        return await self._call(self._stub.ModelInfo, pb.ModelInfoRequest())

    async def tokenize(self, text: str) -> pb.TokenizeResponse:
        return await self._call(self._stub.Tokenize, pb.TokenizeRequest(text=text))

    async def watch_monitor(
        self,
        directions: Sequence[str] = (),
        min_score: float | None = None,
        alerts_only: bool = False,
        buffer_size: int | None = None,
    ) -> AsyncIterator[pb.MonitorEvent]:
        """The live monitor feed (observer credentials): one event per finished request, until you leave the loop
        (which cancels the call). `event.dropped` counts events lost because this watcher fell behind."""
        request = builders.watch_request(directions, min_score, alerts_only, buffer_size)
        call = self._stub.WatchMonitor(request, timeout=self._timeout, metadata=self._metadata)
        try:
            async for event in call:
                yield event
        finally:
            call.cancel()

    async def health(self, service: str = HEALTH_SERVICE) -> health_pb2.HealthCheckResponse:
        """The gRPC health status of `service` ("" for the whole server): SERVING once the engine's start-up
        canary passed, NOT_SERVING while it loads, after it died and while the server drains."""
        from grpc_health.v1 import health_pb2, health_pb2_grpc  # here: importing the client stays light

        request = health_pb2.HealthCheckRequest(service=service)
        stub = health_pb2_grpc.HealthStub(self._channel)
        return await stub.Check(request, timeout=self._timeout, metadata=self._metadata)

    async def _call(self, method: Any, request: Any) -> Any:
        return await method(request, timeout=self._timeout, metadata=self._metadata)
