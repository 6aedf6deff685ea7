"""Prometheus metrics (vLLM/TGI style: `steering_` prefix, units as suffixes), served on their own port.

A `Metrics` without a registry records nothing, so the service code calls it unconditionally. The table of every
metric, with its labels and meaning, is in docs/metrics.md.

Label sets stay bounded: `rpc`, `code`, `stop_reason`, `steered`, `pooling`, `action`, `scope` and `source` take a
fixed set of values, and `direction` one per registered direction, so at most `EngineLimits.max_directions` at a
time. A deleted direction's series are removed (on DeleteDirection, and whenever a direction name not seen before
shows up, every series of a direction no longer registered goes), so series do not pile up as directions come and go.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ..engine_api import EngineClient
from ..types import Alert, CompareResult, DirectionScores, GenerationResult, ScoreResult

__all__ = ["INTER_TOKEN_BUCKETS", "LATENCY_BUCKETS", "RAW_SCORE_BUCKETS", "TTFT_BUCKETS", "Z_BUCKETS", "Metrics"]

log = logging.getLogger(__name__)

# z = (p - mu) / sigma on benign text: most traffic sits in -2..2; alert thresholds chosen by a false-positive rate
# land at 2-4 (FPR 2.5%-0.003% for a normal tail), so the buckets are finest there.
Z_BUCKETS = (-4.0, -3.0, -2.0, -1.0, 0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 5.0, 6.0, 8.0, 12.0)
# Raw projections h.d (uncalibrated directions) scale with the model's residual norm: a wide symmetric ladder.
RAW_SCORE_BUCKETS = (-100.0, -30.0, -10.0, -3.0, -1.0, -0.3, 0.0, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0)
# vLLM's ladders, widened at the low end for a GPU and at the high end for a loaded CPU.
TTFT_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
INTER_TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5, 5.0)
LATENCY_BUCKETS = (0.01, 0.05, 0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 60.0, 120.0, 300.0)
_RPC_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)

EngineGetter = Callable[[], EngineClient | None]


class Metrics:
    """Records what the servicer reports. `engine` returns the attached engine (None while it starts): the gauges read
    it at scrape time, from the HTTP server's thread."""

    def __init__(self, registry: CollectorRegistry | None = None, engine: EngineGetter | None = None) -> None:
        self.registry = registry
        self._engine = engine or (lambda: None)
        # direction -> its series (metric, label values), to remove them when the direction goes
        self._seen: dict[str, set[tuple[Counter | Histogram, tuple[str, ...]]]] = {}
        if registry is None:
            return
        r = registry
        self._requests = Counter(
            "steering_requests_total", "Finished RPCs by method and status code", ["rpc", "code"], registry=r
        )
        self._duration = Histogram(
            "steering_request_duration_seconds", "RPC wall time", ["rpc"], registry=r, buckets=_RPC_BUCKETS
        )
        self._engine_requests = Counter(
            "steering_engine_requests_total",
            "Engine requests finished: one per Generate, GenerateStream and Score, one per Compare variant",
            ["rpc", "steered"],
            registry=r,
        )
        self._generations = Counter(
            "steering_generations_total",
            "Generations finished, by stop reason (CANCELLED included)",
            ["rpc", "stop_reason"],
            registry=r,
        )
        self._prompt_tokens = Counter(
            "steering_prompt_tokens_total", "Prompt tokens of finished engine requests", ["rpc"], registry=r
        )
        self._generated_tokens = Counter(
            "steering_generated_tokens_total",
            "Tokens generated (cancelled streams' tokens included)",
            ["rpc"],
            registry=r,
        )
        self._scored_tokens = Counter(
            "steering_scored_tokens_total", "Response tokens that Score ran through the model", registry=r
        )
        self._alerts = Counter(
            "steering_monitor_alerts_total",
            "Alerts requests raised (GenerationResult.alerts), by direction and action",
            ["direction", "action", "scope", "source"],
            registry=r,
        )
        self._score_z = Histogram(
            "steering_monitor_score",
            "Monitor scores in calibrated z units, per direction and pooling (prompt: last prompt token; "
            "response_mean / response_max: over fed-back generated tokens)",
            ["direction", "pooling"],
            registry=r,
            buckets=Z_BUCKETS,
        )
        self._score_raw = Histogram(
            "steering_monitor_raw_score",
            "Monitor scores of uncalibrated directions (raw projection h.d), per direction and pooling",
            ["direction", "pooling"],
            registry=r,
            buckets=RAW_SCORE_BUCKETS,
        )
        self._ttft = Histogram(
            "steering_time_to_first_token_seconds",
            "From the RPC's arrival to the first generated token",
            registry=r,
            buckets=TTFT_BUCKETS,
        )
        self._itl = Histogram(
            "steering_inter_token_latency_seconds",
            "Between consecutive generated tokens of one request",
            registry=r,
            buckets=INTER_TOKEN_BUCKETS,
        )
        self._e2e = Histogram(
            "steering_e2e_request_latency_seconds",
            "From the RPC's arrival to the end of the generation",
            registry=r,
            buckets=LATENCY_BUCKETS,
        )
        self._queue_time = Histogram(
            "steering_request_queue_time_seconds",
            "From admission by the engine to the first batch that runs the request",
            registry=r,
            buckets=LATENCY_BUCKETS,
        )
        gauges: tuple[tuple[str, str, Callable[[EngineClient], float]], ...] = (
            ("steering_queued_requests", "Admitted, unfinished engine requests", lambda e: e.stats().queued),
            (
                "steering_running_requests",
                "Requests scheduled in the batching manager",
                lambda e: (s := e.stats()).running - s.waiting,
            ),
            (
                "steering_waiting_requests",
                "Requests inside the batching manager not yet scheduled",
                lambda e: e.stats().waiting,
            ),
            ("steering_engine_healthy", "1 while the engine serves", lambda e: 1.0 if e.healthy else 0.0),
            ("steering_directions", "Registered directions", lambda e: len(e.list_directions())),
            (
                "steering_max_directions",
                "Direction rows of the device table (the bound)",
                lambda e: e.limits.max_directions,
            ),
            ("steering_policy_terms", "Steering terms of the server policy", lambda e: len(e.get_policy().terms)),
            (
                "steering_policy_enforced",
                "1 when the server policy is enforced",
                lambda e: float(e.get_policy().enforced),
            ),
            ("steering_policy_alert_rules", "Alert rules of the server policy", lambda e: len(e.get_policy().alerts)),
        )
        for name, doc, read in gauges:
            Gauge(name, doc, registry=r).set_function(self._reader(read))

    def _reader(self, read: Callable[[EngineClient], float]) -> Callable[[], float]:
        def value() -> float:
            engine = self._engine()
            if engine is None:
                return 0.0
            # Read from the scrape thread while the event loop may be changing a dict: retry a torn read.
            for _ in range(3):
                try:
                    return float(read(engine))
                except RuntimeError:
                    continue
            return math.nan

        return value

    # ---- RPCs (status.py's wrappers)
    def observe(self, rpc: str, code: grpc.StatusCode, seconds: float) -> None:
        if self.registry is None:
            return
        self._requests.labels(rpc=rpc, code=code.name).inc()
        self._duration.labels(rpc=rpc).observe(seconds)

    # ---- engine results (the servicer)
    def generation(self, rpc: str, result: GenerationResult | None, received: float | None = None) -> None:
        """One finished (or cancelled) generation; `received` is the RPC's arrival (time.monotonic()), the start of
        TTFT and end-to-end latency (the engine's admission when None)."""
        if self.registry is None or result is None:
            return
        self._engine_requests.labels(rpc=rpc, steered=_flag(result.steered)).inc()
        self._generations.labels(rpc=rpc, stop_reason=result.stop_reason.name).inc()
        self._prompt_tokens.labels(rpc=rpc).inc(result.prompt_tokens)
        self._generated_tokens.labels(rpc=rpc).inc(len(result.token_ids))
        self._scores(result.monitor)
        self._count_alerts(result.alerts)
        timing = result.timing
        if timing is None:
            return
        start = received if received is not None else timing.admitted
        if timing.scheduled is not None:
            self._queue_time.observe(max(0.0, timing.scheduled - timing.admitted))
        if timing.token_times:
            self._ttft.observe(max(0.0, timing.token_times[0] - start))
            for before, after in zip(timing.token_times, timing.token_times[1:], strict=False):
                self._itl.observe(after - before)
        if timing.finished is not None:
            self._e2e.observe(max(0.0, timing.finished - start))

    def comparison(self, result: CompareResult, received: float | None = None) -> None:
        for variant in result.variants:
            self.generation("Compare", variant.result, received)

    def scoring(self, result: ScoreResult) -> None:
        """Score's requests and tokens. Its scores are of text the caller brought, not of traffic: not histogrammed."""
        if self.registry is None:
            return
        self._engine_requests.labels(rpc="Score", steered=_flag(result.steered)).inc()
        self._prompt_tokens.labels(rpc="Score").inc(result.prompt_tokens)
        self._scored_tokens.inc(len(result.response_token_ids))
        self._count_alerts(result.alerts)

    def _count_alerts(self, alerts: tuple[Alert, ...]) -> None:
        for alert in alerts:
            labels = (alert.direction, alert.action.name, alert.scope.name, alert.source)
            self._direction_series(alert.direction, self._alerts, labels)
            self._alerts.labels(*labels).inc()

    def forget_direction(self, name: str) -> None:
        """Remove every series of a deleted direction."""
        for metric, labels in self._seen.pop(name, set()):
            try:
                metric.remove(*labels)
            except KeyError:  # already gone
                pass

    def _scores(self, monitor: Iterable[DirectionScores]) -> None:
        for s in monitor:
            histogram = self._score_z if s.calibrated else self._score_raw
            for pooling, value in (
                ("prompt", s.prompt_score),
                ("response_mean", s.response_score),
                ("response_max", s.max_score),
            ):
                if value is None or not math.isfinite(value):  # no generated token; a prompt never read (cancelled)
                    continue
                self._direction_series(s.direction, histogram, (s.direction, pooling))
                histogram.labels(s.direction, pooling).observe(value)

    def _direction_series(self, direction: str, metric: Counter | Histogram, labels: tuple[str, ...]) -> None:
        if direction not in self._seen:
            self._prune()
            self._seen[direction] = set()
        self._seen[direction].add((metric, labels))

    def _prune(self) -> None:
        """A direction name not seen before: drop the series of every direction that is no longer registered."""
        engine = self._engine()
        if engine is None:
            return
        registered = {d.name for d in engine.list_directions()}
        for name in [n for n in self._seen if n not in registered]:
            self.forget_direction(name)


def _flag(value: bool) -> str:
    return "true" if value else "false"
