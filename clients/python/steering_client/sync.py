"""Blocking client: one method per RPC, taking plain Python values (see `builders`) and returning messages."""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

import grpc

from . import builders, compute
from ._channel import DEFAULT_TARGET, HEALTH_SERVICE, channel_options
from ._proto.steering.v1 import steering_pb2 as pb
from ._proto.steering.v1 import steering_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from typing import Unpack

    from grpc_health.v1 import health_pb2

__all__ = ["SteeringClient"]


class SteeringClient:
    """`SteeringClient("127.0.0.1:50051")`; use as a context manager or call `close()`. `timeout` (seconds) is
    the default deadline of every call; `metadata` is sent with every call (e.g. credentials)."""

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        timeout: float | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        channel: grpc.Channel | None = None,
    ) -> None:
        self._channel = channel or grpc.insecure_channel(target, options=channel_options())
        self._stub = pb_grpc.SteeringServiceStub(self._channel)
        self._timeout = timeout
        self._metadata = tuple(metadata)

    def __enter__(self) -> SteeringClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def generate(self, prompt: str | None = None, **options: Unpack[builders.GenerateOptions]) -> pb.GenerateResponse:
        return self._call(self._stub.Generate, builders.generate_request(prompt, **options))

    def generate_stream(
        self, prompt: str | None = None, **options: Unpack[builders.GenerateOptions]
    ) -> Generator[pb.GenerateStreamResponse, None, None]:
        """Yields one message per token (`.token`), then the result (`.final`). Breaking out of the loop (or
        closing the iterator) cancels the request on the server."""
        call = self._stub.GenerateStream(
            builders.generate_request(prompt, **options), timeout=self._timeout, metadata=self._metadata
        )
        try:
            yield from call
        finally:
            call.cancel()  # no-op once the stream has ended

    def compare(self, prompt: str | None = None, **options: Unpack[builders.CompareOptions]) -> pb.CompareResponse:
        return self._call(self._stub.Compare, builders.compare_request(prompt, **options))

    def score(self, prompt: str | None = None, **options: Unpack[builders.ScoreOptions]) -> pb.ScoreResponse:
        return self._call(self._stub.Score, builders.score_request(prompt, **options))

    def list_directions(self) -> pb.ListDirectionsResponse:
        return self._call(self._stub.ListDirections, pb.ListDirectionsRequest())

    def get_direction(self, name: str, include_vectors: bool = False) -> pb.Direction:
        return self._call(self._stub.GetDirection, pb.GetDirectionRequest(name=name, include_vectors=include_vectors))

    def put_direction(
        self, name: str = "", **options: Unpack[builders.PutDirectionOptions]
    ) -> pb.PutDirectionResponse:
        """Exactly one of `vectors` ({layer: values}), `safetensors` (file bytes) or `path`."""
        return self._call(self._stub.PutDirection, builders.put_direction_request(name, **options))

    def delete_direction(self, name: str) -> pb.DeleteDirectionResponse:
        return self._call(self._stub.DeleteDirection, pb.DeleteDirectionRequest(name=name))

    def compute_direction_stream(
        self, name: str, **options: Unpack[compute.ComputeOptions]
    ) -> Generator[pb.ComputeDirectionEvent, None, None]:
        """Progress events (`.progress`), then the result (`.result`). Breaking out of the loop cancels the job."""
        call = self._stub.ComputeDirection(
            compute.compute_direction_request(name, **options), timeout=self._timeout, metadata=self._metadata
        )
        try:
            yield from call
        finally:
            call.cancel()

    def compute_direction(
        self,
        name: str,
        on_progress: Callable[[pb.ComputeProgress], None] | None = None,
        **options: Unpack[compute.ComputeOptions],
    ) -> pb.ComputeDirectionResult:
        """Compute a direction on the served model (administrators); `on_progress` sees each progress event."""
        for event in self.compute_direction_stream(name, **options):
            if event.HasField("result"):
                return event.result
            if on_progress is not None:
                on_progress(event.progress)
        raise RuntimeError("ComputeDirection ended without a result")

    def get_steering(self) -> pb.SteeringPolicy:
        return self._call(self._stub.GetSteering, pb.GetSteeringRequest())

    def set_steering(
        self,
        terms: Sequence[pb.SteeringTerm] = (),
        enforced: bool = False,
        alerts: Sequence[pb.AlertRule] = (),
        *,
        policy: pb.SteeringPolicy | None = None,
    ) -> pb.SteeringPolicy:
        """Replace the server policy: `terms`, `enforced` and `alerts`, or a whole `policy` message."""
        policy = policy if policy is not None else builders.steering_policy(terms, enforced, alerts)
        return self._call(self._stub.SetSteering, pb.SetSteeringRequest(policy=policy))

    def model_info(self) -> pb.ModelInfoResponse:
        return self._call(self._stub.ModelInfo, pb.ModelInfoRequest())

    def tokenize(self, text: str) -> pb.TokenizeResponse:
        return self._call(self._stub.Tokenize, pb.TokenizeRequest(text=text))

    def watch_monitor(
        self,
        directions: Sequence[str] = (),
        min_score: float | None = None,
        alerts_only: bool = False,
        buffer_size: int | None = None,
    ) -> Generator[pb.MonitorEvent, None, None]:
        """The live monitor feed (observer credentials): one event per finished request, until you stop iterating
        (which cancels the call). `event.dropped` counts events lost because this watcher fell behind. The
        client's `timeout`, if set, ends the watch when it passes."""
        request = builders.watch_request(directions, min_score, alerts_only, buffer_size)
        call = self._stub.WatchMonitor(request, timeout=self._timeout, metadata=self._metadata)
        try:
            yield from call
        finally:
            call.cancel()

    def health(self, service: str = HEALTH_SERVICE) -> health_pb2.HealthCheckResponse:
        """The gRPC health status of `service` ("" for the whole server): SERVING once the engine's start-up
        canary passed, NOT_SERVING while it loads, after it died and while the server drains."""
        from grpc_health.v1 import health_pb2, health_pb2_grpc  # here: importing the client stays light

        request = health_pb2.HealthCheckRequest(service=service)
        stub = health_pb2_grpc.HealthStub(self._channel)
        return stub.Check(request, timeout=self._timeout, metadata=self._metadata)

    def _call(self, method: Any, request: Any) -> Any:
        return method(request, timeout=self._timeout, metadata=self._metadata)
