"""Prometheus metrics (vLLM/TGI style: `steering_` prefix, units as suffixes), served on their own port.

A `Metrics` without a registry records nothing, so the service code calls it unconditionally.
"""

from __future__ import annotations

from collections.abc import Callable

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ..types import EngineStats, GenerationResult, StopReason

__all__ = ["Metrics"]


class Metrics:
    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        stats: Callable[[], EngineStats | None] | None = None,
        healthy: Callable[[], bool] | None = None,
    ) -> None:
        self.registry = registry
        if registry is None:
            return
        self._requests = Counter(
            "steering_requests_total", "Finished RPCs by method and status code", ["rpc", "code"], registry=registry
        )
        self._duration = Histogram(
            "steering_request_duration_seconds",
            "RPC wall time",
            ["rpc"],
            registry=registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
        )
        self._prompt_tokens = Counter(
            "steering_prompt_tokens_total", "Prompt tokens of finished generations", registry=registry
        )
        self._generated_tokens = Counter("steering_generated_tokens_total", "Tokens generated", registry=registry)
        self._alerts = Counter(
            "steering_monitor_alerts_total", "Generations stopped by a monitor alarm", registry=registry
        )
        if stats is not None:
            queued = Gauge("steering_queued_requests", "Admitted, unfinished requests", registry=registry)
            running = Gauge("steering_running_requests", "Requests inside the batching manager", registry=registry)
            queued.set_function(lambda: _stat(stats, "queued"))
            running.set_function(lambda: _stat(stats, "running"))
        if healthy is not None:
            up = Gauge("steering_engine_healthy", "1 while the engine serves", registry=registry)
            up.set_function(lambda: 1.0 if healthy() else 0.0)

    def observe(self, rpc: str, code: grpc.StatusCode, seconds: float) -> None:
        if self.registry is None:
            return
        self._requests.labels(rpc=rpc, code=code.name).inc()
        self._duration.labels(rpc=rpc).observe(seconds)

    def generation(self, result: GenerationResult) -> None:
        if self.registry is None:
            return
        self._prompt_tokens.inc(result.prompt_tokens)
        self._generated_tokens.inc(len(result.token_ids))
        if result.stop_reason is StopReason.MONITOR_ALERT:
            self._alerts.inc()


def _stat(stats: Callable[[], EngineStats | None], name: str) -> float:
    current = stats()
    return float(getattr(current, name)) if current is not None else 0.0
