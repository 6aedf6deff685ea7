"""The metrics page of a real server on a tiny model, after every generating RPC: promtool accepts it, it holds
every metric the Grafana dashboard and the alert rules query, and its counters agree with the engine."""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import AsyncIterator

import grpc
import pytest
import pytest_asyncio
import torch
from prometheus_client import CollectorRegistry
from steering_client import AsyncSteeringClient, pb, pb_grpc

from steering_server.config import EngineConfig
from steering_server.directions import Calibration, Direction
from steering_server.engine import Engine, start_engine
from steering_server.models import wrap_model
from steering_server.service import SteeringServer
from steering_server.service.metrics_http import MetricsHttpServer
from steering_server.tiny_models import byte_tokenizer, tiny_model
from steering_server.types import EngineLimits

from ..metrics_page import dashboard_queries, metric_names, promtool, queried_metrics, rule_queries, sample
from .helpers import serving, wait_until

pytestmark = pytest.mark.asyncio(loop_scope="module")

LIMITS = EngineLimits(max_new_tokens=256, max_prompt_tokens=256, max_queued=32, max_variants=4)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engine() -> AsyncIterator[Engine]:
    loaded = wrap_model(tiny_model("llama"), byte_tokenizer(), "tiny-llama")
    eng = await start_engine(EngineConfig(limits=LIMITS), loaded=loaded)
    gen = torch.Generator().manual_seed(0)
    calibrated = {layer: torch.randn(eng.hidden_size, generator=gen) for layer in range(eng.num_layers)}
    raw = {layer: torch.randn(eng.hidden_size, generator=gen) for layer in range(eng.num_layers)}
    calibration = {p: Calibration(mu=0.0, sigma=1.0) for p in ("token", "response_mean", "last_prompt")}
    eng.put_direction(Direction("misalignment", calibrated, monitor_layer=1, calibration=calibration))
    eng.put_direction(Direction("raw", raw, monitor_layer=2))
    try:
        yield eng
    finally:
        await eng.shutdown()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server(engine: Engine, registry: CollectorRegistry) -> AsyncIterator[SteeringServer]:
    async with serving(engine, metrics_registry=registry) as srv:
        yield srv


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def metrics_url(server: SteeringServer, registry: CollectorRegistry) -> AsyncIterator[str]:
    http = MetricsHttpServer(registry, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{http.port}/metrics"
    finally:
        http.close()


def _scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=30) as reply:
        return str(reply.read().decode())


async def test_every_generating_rpc_is_counted_and_the_page_passes_promtool(
    server: SteeringServer, engine: Engine, metrics_url: str
) -> None:
    before = engine.stats().generated_tokens  # the canary's tokens
    async with AsyncSteeringClient(f"127.0.0.1:{server.port}", timeout=120) as client:
        # A server-wide rule every request trips at its last prompt token (alert rules watch ignore_policy requests
        # and Compare variants too).
        rule = pb.AlertRule(direction="misalignment", threshold=-100.0, scope=pb.PROMPT_SCORE, action=pb.RECORD)
        await client.set_steering(alerts=[rule])
        generated = await client.generate("Hello there", max_new_tokens=6)
        streamed = [m async for m in client.generate_stream("The weather today", max_new_tokens=5)]
        compared = await client.compare("Tell me about cats", max_new_tokens=6, monitor=["misalignment"])
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        # Greedy on this prompt runs long without EOS: the stream is still generating when it is cancelled.
        call = pb_grpc.SteeringServiceStub(channel).GenerateStream(
            pb.GenerateRequest(prompt="Once upon a time", sampling=pb.SamplingParams(max_new_tokens=200))
        )
        read = [await call.read() for _ in range(3)]
        assert all(m.HasField("token") for m in read)
        call.cancel()
        await wait_until(lambda: engine.stats().queued == 0, "the cancelled stream freed")
    page = await asyncio.to_thread(_scrape, metrics_url)
    n_generate = len(generated.token_ids)
    n_stream = len(streamed[-1].final.token_ids)
    n_compare = sum(len(v.result.token_ids) for v in compared.variants)
    assert sample(page, "steering_generated_tokens_total", rpc="Generate") == n_generate
    assert sample(page, "steering_generated_tokens_total", rpc="Compare") == n_compare
    assert sample(page, "steering_generations_total", rpc="Compare") == len(compared.variants) == 2
    assert sample(page, "steering_generations_total", rpc="GenerateStream", stop_reason="CANCELLED") == 1
    cancelled_tokens = sample(page, "steering_generated_tokens_total", rpc="GenerateStream") - n_stream
    assert cancelled_tokens >= 3  # at least what the client read before it cancelled
    # Exactly the tokens the engine generated, cancelled ones included.
    assert sample(page, "steering_generated_tokens_total") == engine.stats().generated_tokens - before
    # Every generation had a first token and a queue time; inter-token gaps are one fewer than its tokens.
    assert sample(page, "steering_time_to_first_token_seconds_count") == 5
    assert sample(page, "steering_request_queue_time_seconds_count") == 5
    n_all = n_generate + n_stream + n_compare + cancelled_tokens
    assert sample(page, "steering_inter_token_latency_seconds_count") == n_all - 5
    # Calibrated direction: z histogram; uncalibrated: raw histogram (Compare monitored only the calibrated one).
    assert sample(page, "steering_monitor_score_count", direction="misalignment", pooling="prompt") == 5
    assert sample(page, "steering_monitor_raw_score_count", direction="raw", pooling="prompt") == 3
    assert sample(page, "steering_monitor_score_count", direction="raw") == 0

    # Alerts carry their direction and action: one RECORD per generation above (the cancelled one too: it fired at
    # the last prompt token, before the first token).
    replies = [generated, streamed[-1].final, *(v.result for v in compared.variants)]
    assert all(len(r.alerts) == 1 and r.alerts[0].direction == "misalignment" for r in replies)
    labels = {"direction": "misalignment", "action": "RECORD", "scope": "PROMPT", "source": "policy"}
    assert sample(page, "steering_monitor_alerts_total", **labels) == len(replies) + 1
    assert sample(page, "steering_policy_alert_rules") == 1

    async with AsyncSteeringClient(f"127.0.0.1:{server.port}", timeout=120) as client:
        stopped = await client.generate("Hello there", max_new_tokens=6, monitor=["raw"], stop_threshold=-1e6)
        assert stopped.stop_reason == pb.MONITOR_ALERT
        await client.set_steering()
        scored = await client.score("Hello there", response="General Kenobi")
    page = await asyncio.to_thread(_scrape, metrics_url)
    assert sample(page, "steering_scored_tokens_total") == len(scored.response_token_ids) == len("General Kenobi")
    assert sample(page, "steering_prompt_tokens_total", rpc="Score") == len("Hello there")
    assert sample(page, "steering_engine_requests_total", rpc="Score", steered="false") == 1
    assert (sample(page, "steering_queued_requests"), sample(page, "steering_running_requests")) == (0, 0)
    assert sample(page, "steering_engine_healthy") == 1
    assert sample(page, "steering_directions") == 2
    stop = {"direction": "raw", "action": "STOP", "scope": "RUNNING", "source": "request"}
    assert sample(page, "steering_monitor_alerts_total", **stop) == 1
    assert sample(page, "steering_generations_total", rpc="Generate", stop_reason="MONITOR_ALERT") == 1
    assert sample(page, "steering_policy_alert_rules") == 0

    checked = promtool("check", "metrics", stdin=page)
    assert checked.returncode == 0 and not checked.stdout.strip() and not checked.stderr.strip(), (
        checked.stdout + checked.stderr
    )
    names = metric_names(page)
    for source, queries in (("dashboard", dashboard_queries()), ("alert rules", rule_queries())):
        for query in queries:
            missing = queried_metrics(query) - names
            assert not missing, f"the {source} query {query!r} reads metrics the server does not export: {missing}"
