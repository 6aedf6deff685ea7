"""Prometheus metrics over the fake engine: what each RPC adds, with values, and the /metrics-only port."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import urllib.error
import urllib.request

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from steering_client import AsyncSteeringClient, ablate, pb, pb_grpc

from steering_server.config import EngineConfig
from steering_server.service import SteeringServer, serve
from steering_server.service.metrics import Z_BUCKETS, Metrics
from steering_server.service.metrics_http import MetricsHttpServer
from steering_server.types import Alert, AlertAction, ConditionScope, GenerationResult, StopReason

from ..metrics_page import sample
from .fake_engine import FakeEngine, make_direction
from .helpers import wait_until


def page(registry: CollectorRegistry) -> str:
    return generate_latest(registry).decode()


async def test_generate_observes_scores_tokens_and_latencies(
    client: AsyncSteeringClient, registry: CollectorRegistry
) -> None:
    reply = await client.generate("Hello", max_new_tokens=8, seed=3)
    text = page(registry)
    n = len(reply.token_ids)
    assert n >= 2
    assert sample(text, "steering_generated_tokens_total", rpc="Generate") == n
    assert sample(text, "steering_prompt_tokens_total", rpc="Generate") == len("Hello")
    assert sample(text, "steering_engine_requests_total", rpc="Generate", steered="false") == 1
    assert (
        sample(text, "steering_generations_total", rpc="Generate", stop_reason=pb.StopReason.Name(reply.stop_reason))
        == 1
    )
    # The fake's direction is calibrated: its scores land in the z histogram, one observation per pooling.
    scores = reply.monitor[0]
    assert scores.direction == "misalignment" and scores.calibrated
    for pooling, value in (("prompt", scores.prompt_score), ("response_max", scores.max_score)):
        labels = {"direction": "misalignment", "pooling": pooling}
        assert sample(text, "steering_monitor_score_count", **labels) == 1
        # Buckets below zero: prometheus-client exports no _sum then; the value must sit in its own bucket.
        upper = min(b for b in Z_BUCKETS if b >= value)
        lower = max(b for b in Z_BUCKETS if b < upper)
        assert sample(text, "steering_monitor_score_bucket", le=str(upper), **labels) == 1
        assert sample(text, "steering_monitor_score_bucket", le=str(lower), **labels) == 0
    assert sample(text, "steering_monitor_raw_score_count") == 0
    assert sample(text, "steering_time_to_first_token_seconds_count") == 1
    assert sample(text, "steering_inter_token_latency_seconds_count") == n - 1
    assert sample(text, "steering_e2e_request_latency_seconds_count") == 1
    assert sample(text, "steering_request_queue_time_seconds_count") == 1
    # TTFT is part of the end-to-end time.
    assert (
        0
        < sample(text, "steering_time_to_first_token_seconds_sum")
        <= sample(text, "steering_e2e_request_latency_seconds_sum")
    )


async def test_compare_adds_every_variants_tokens(client: AsyncSteeringClient, registry: CollectorRegistry) -> None:
    reply = await client.compare("Hello", max_new_tokens=12, seed=2)  # defaults: unsteered, ABLATE 1
    text = page(registry)
    assert len(reply.variants) == 2
    assert sample(text, "steering_generated_tokens_total", rpc="Compare") == sum(
        len(v.result.token_ids) for v in reply.variants
    )
    assert sample(text, "steering_prompt_tokens_total", rpc="Compare") == 2 * len("Hello")
    assert sample(text, "steering_engine_requests_total", rpc="Compare", steered="false") == 1
    assert sample(text, "steering_engine_requests_total", rpc="Compare", steered="true") == 1
    assert sample(text, "steering_generations_total", rpc="Compare") == 2
    assert sample(text, "steering_monitor_score_count", direction="misalignment", pooling="prompt") == 2
    assert sample(text, "steering_generated_tokens_total", rpc="Generate") == 0


async def test_score_counts_its_request_and_tokens_but_not_its_scores(
    client: AsyncSteeringClient, registry: CollectorRegistry
) -> None:
    reply = await client.score("Hello", response="abc", steering=[ablate("misalignment")])
    assert list(reply.response_token_ids) == list(b"abc")
    text = page(registry)
    assert sample(text, "steering_engine_requests_total", rpc="Score", steered="true") == 1
    assert sample(text, "steering_prompt_tokens_total", rpc="Score") == len("Hello")
    assert sample(text, "steering_scored_tokens_total") == 3
    assert sample(text, "steering_requests_total", rpc="Score", code="OK") == 1
    # Score reads text the caller brought, not traffic: the score histograms stay out of it.
    assert sample(text, "steering_monitor_score_count") == 0


async def test_a_cancelled_stream_counts_its_tokens(
    engine: FakeEngine, stub: pb_grpc.SteeringServiceStub, registry: CollectorRegistry
) -> None:
    engine.hold()  # every generation waits after its first token
    call = stub.GenerateStream(pb.GenerateRequest(prompt="Hello", sampling=pb.SamplingParams(max_new_tokens=20)))
    first = await call.read()
    assert first.HasField("token")
    call.cancel()

    def counted() -> bool:
        return sample(page(registry), "steering_generations_total", rpc="GenerateStream", stop_reason="CANCELLED") == 1

    await wait_until(counted, "the cancelled stream counted")
    engine.release()
    text = page(registry)
    assert sample(text, "steering_generated_tokens_total", rpc="GenerateStream") == 1
    assert sample(text, "steering_time_to_first_token_seconds_count") == 1
    assert sample(text, "steering_requests_total", rpc="GenerateStream", code="CANCELLED") == 1


async def test_a_cancelled_unary_generate_counts_its_tokens(
    engine: FakeEngine, stub: pb_grpc.SteeringServiceStub, registry: CollectorRegistry
) -> None:
    engine.hold()
    call = stub.Generate(pb.GenerateRequest(prompt="Hello", sampling=pb.SamplingParams(max_new_tokens=20)))
    await wait_until(lambda: engine.generated_tokens == 0 and any(s.tokens for s in engine.active.values()), "a token")
    call.cancel()

    def counted() -> bool:
        return sample(page(registry), "steering_generations_total", rpc="Generate", stop_reason="CANCELLED") == 1

    await wait_until(counted, "the cancelled call counted")
    engine.release()
    assert sample(page(registry), "steering_generated_tokens_total", rpc="Generate") == 1


async def test_policy_and_registry_gauges(client: AsyncSteeringClient, registry: CollectorRegistry) -> None:
    text = page(registry)
    assert sample(text, "steering_policy_terms") == 0
    assert sample(text, "steering_policy_enforced") == 0
    assert sample(text, "steering_directions") == 1
    assert sample(text, "steering_max_directions") == 16
    await client.set_steering([ablate("misalignment")], enforced=True)
    text = page(registry)
    assert sample(text, "steering_policy_terms") == 1
    assert sample(text, "steering_policy_enforced") == 1
    assert sample(text, "steering_policy_alert_rules") == 0
    reply = await client.generate("Hello", max_new_tokens=4)
    assert reply.token_ids
    assert sample(page(registry), "steering_engine_requests_total", rpc="Generate", steered="true") == 1


async def test_running_and_waiting_requests(
    engine: FakeEngine, stub: pb_grpc.SteeringServiceStub, registry: CollectorRegistry
) -> None:
    engine.hold()
    calls = [stub.GenerateStream(pb.GenerateRequest(prompt=f"p{i}")) for i in range(3)]
    for call in calls:
        assert (await call.read()).HasField("token")
    text = page(registry)
    assert (sample(text, "steering_running_requests"), sample(text, "steering_queued_requests")) == (3, 3)
    assert sample(text, "steering_waiting_requests") == 0
    for call in calls:
        call.cancel()
    engine.release()
    await wait_until(lambda: sample(page(registry), "steering_queued_requests") == 0, "every stream freed")


async def test_alerts_of_policy_rules_and_stop_thresholds_are_counted_by_direction_and_action(
    engine: FakeEngine, client: AsyncSteeringClient, registry: CollectorRegistry
) -> None:
    engine.registry.put(make_direction("sycophancy", seed=1))
    rule = pb.AlertRule(direction="sycophancy", threshold=-100.0, scope=pb.PROMPT_SCORE, action=pb.RECORD)
    await client.set_steering(alerts=[rule])
    assert sample(page(registry), "steering_policy_alert_rules") == 1
    recorded = await client.generate("Hello", max_new_tokens=4)
    stopped = await client.generate("Hello", max_new_tokens=4, monitor=["misalignment"], stop_threshold=-100.0)
    assert stopped.stop_reason == pb.MONITOR_ALERT
    reported: dict[tuple[str, str, str], int] = {}
    for reply in (recorded, stopped):
        for alert in reply.alerts:
            key = (alert.direction, pb.AlertAction.Name(alert.action), alert.source)
            reported[key] = reported.get(key, 0) + 1
    assert reported == {("sycophancy", "RECORD", "policy"): 2, ("misalignment", "STOP", "request"): 1}
    text = page(registry)
    for (direction, action, source), n in reported.items():
        assert sample(text, "steering_monitor_alerts_total", direction=direction, action=action, source=source) == n
    assert sample(text, "steering_monitor_alerts_total", direction="sycophancy", scope="PROMPT") == 2
    assert sample(text, "steering_monitor_alerts_total", direction="misalignment", scope="RUNNING") == 1
    assert sample(text, "steering_generations_total", rpc="Generate", stop_reason="MONITOR_ALERT") == 1
    # Score evaluates the rules too (it only records): its alert is counted like Generate's.
    scored = await client.score("Hello", response="abc")
    assert [(a.direction, a.action) for a in scored.alerts] == [("sycophancy", pb.RECORD)]
    assert sample(page(registry), "steering_monitor_alerts_total", direction="sycophancy", scope="PROMPT") == 3


def _alerting_result(direction: str, action: AlertAction) -> GenerationResult:
    alert = Alert(direction, ConditionScope.RUNNING, score=4.5, threshold=3.0, action=action, token_index=2)
    return GenerationResult("abc", (1, 2, 3), StopReason.MONITOR_ALERT, 4, (), alerts=(alert,))


def test_alerts_are_counted_by_direction_and_action() -> None:
    registry = CollectorRegistry()
    engine = FakeEngine()
    engine.registry.put(make_direction("sycophancy", seed=1))
    metrics = Metrics(registry, engine=lambda: engine)
    metrics.generation("Generate", _alerting_result("misalignment", AlertAction.STOP))
    metrics.generation("GenerateStream", _alerting_result("misalignment", AlertAction.STOP))
    metrics.generation("Generate", _alerting_result("sycophancy", AlertAction.RECORD))
    text = page(registry)
    labels = {"scope": "RUNNING", "source": "policy"}
    assert sample(text, "steering_monitor_alerts_total", direction="misalignment", action="STOP", **labels) == 2
    assert sample(text, "steering_monitor_alerts_total", direction="sycophancy", action="RECORD", **labels) == 1
    assert sample(text, "steering_monitor_alerts_total", direction="sycophancy", action="STOP") == 0
    assert sample(text, "steering_generations_total", stop_reason="MONITOR_ALERT") == 3


async def test_a_deleted_directions_series_go(
    engine: FakeEngine, client: AsyncSteeringClient, registry: CollectorRegistry
) -> None:
    engine.registry.put(make_direction("old", seed=2))
    await client.generate("Hello", max_new_tokens=4, monitor=["old"])
    assert sample(page(registry), "steering_monitor_score_count", direction="old") > 0
    await client.delete_direction("old")
    assert 'direction="old"' not in page(registry)
    # Deleted behind the servicer's back (another front end): pruned when a direction not seen before shows up.
    engine.registry.put(make_direction("older", seed=3))
    await client.generate("Hello", max_new_tokens=4, monitor=["older"])
    engine.registry.delete("older")
    engine.registry.put(make_direction("newer", seed=4))
    await client.generate("Hello", max_new_tokens=4, monitor=["newer"])
    text = page(registry)
    assert 'direction="older"' not in text
    assert sample(text, "steering_monitor_score_count", direction="newer", pooling="prompt") == 1
    assert sample(text, "steering_monitor_score_count", direction="misalignment") == 0  # never monitored here


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


async def test_the_metrics_port_serves_metrics_only(server: SteeringServer, registry: CollectorRegistry) -> None:
    http = MetricsHttpServer(registry, "127.0.0.1", 0)
    try:
        base = f"http://127.0.0.1:{http.port}"
        status, body = _get(f"{base}/metrics")
        assert status == 200 and "steering_engine_healthy 1.0" in body
        status, body = _get(f"{base}/metrics?name[]=steering_engine_healthy")
        assert status == 200 and "steering_engine_healthy 1.0" in body and "steering_requests_total" not in body
        for path in ("/health", "/", "/metrics/extra", "/favicon.ico"):
            status, body = _get(base + path)
            assert status == 404, path
            assert "steering_" not in body
    finally:
        http.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_serve_runs_the_metrics_port_and_closes_it_on_stop() -> None:
    engine = FakeEngine()
    port = _free_port()
    ports: list[int] = []

    async def start_engine(config: EngineConfig) -> FakeEngine:
        return engine

    task = asyncio.ensure_future(
        serve(EngineConfig(), "127.0.0.1", 0, start_engine, metrics_port=port, on_serving=ports.append)
    )
    await wait_until(lambda: bool(ports) or task.done(), "serving")
    assert ports, task.result()
    async with AsyncSteeringClient(f"127.0.0.1:{ports[0]}") as client:
        await client.generate("Hi", max_new_tokens=3)
    status, body = await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/metrics")
    assert status == 200 and "steering_engine_healthy 1.0" in body
    assert sample(body, "steering_engine_requests_total", rpc="Generate") == 1
    assert (await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/health"))[0] == 404
    os.kill(os.getpid(), signal.SIGTERM)
    await task
    with pytest.raises(urllib.error.URLError):  # the port closed with the server
        await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/metrics")
