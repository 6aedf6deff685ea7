"""What recording metrics costs: the same streamed requests through two servers over one engine, one with a metrics
registry and one without, interleaved; and the cost of one `Metrics.generation` call on its own.

Prints the median seconds per generated token of each server over rounds (with the spread), their ratio, and the
microseconds one finished generation takes to record (2 monitored directions, its tokens' inter-token gaps
included). Tiny random-weight model (no download). Usage:
    OMP_NUM_THREADS=1 PYTHONPATH=.:clients/python python benchmarks/metrics_overhead.py \
        [--tokens 64 --rounds 7 --concurrency 8]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import torch
from prometheus_client import CollectorRegistry, generate_latest
from steering_client import AsyncSteeringClient, ablate

from steering_server.config import EngineConfig
from steering_server.directions import Calibration, Direction
from steering_server.engine import Engine, start_engine
from steering_server.models import wrap_model
from steering_server.service import SteeringServer
from steering_server.service.metrics import Metrics
from steering_server.tiny_models import byte_tokenizer, tiny_model
from steering_server.types import EngineLimits, GenerationRequest, Prompt, SamplingParams

PROMPT = "Once upon a time"  # greedy runs long without EOS on the tiny seeded model


async def _round(client: AsyncSteeringClient, n: int, tokens: int) -> float:
    async def one() -> int:
        count = 0
        async for message in client.generate_stream(PROMPT, max_new_tokens=tokens, steering=[ablate("misalignment")]):
            count += message.HasField("token")
        return count

    start = time.perf_counter()
    counts = await asyncio.gather(*(one() for _ in range(n)))
    assert all(c == tokens for c in counts), counts
    return (time.perf_counter() - start) / sum(counts)


def _spread(xs: list[float]) -> str:
    return f"{statistics.median(xs) * 1e3:.3f} ms/token (min {min(xs) * 1e3:.3f}, max {max(xs) * 1e3:.3f})"


async def main(tokens: int, rounds: int, concurrency: int) -> None:
    loaded = wrap_model(tiny_model("llama"), byte_tokenizer(), "tiny-llama")
    engine: Engine = await start_engine(EngineConfig(limits=EngineLimits(max_new_tokens=512)), loaded=loaded)
    gen = torch.Generator().manual_seed(0)
    for name in ("misalignment", "other"):
        vectors = {layer: torch.randn(engine.hidden_size, generator=gen) for layer in range(engine.num_layers)}
        engine.put_direction(Direction(name, vectors, 1, calibration={"token": Calibration(0.0, 1.0)}))
    registry = CollectorRegistry()
    servers = [SteeringServer("127.0.0.1", 0, metrics_registry=registry), SteeringServer("127.0.0.1", 0)]
    times: dict[str, list[float]] = {"with metrics": [], "without": []}
    try:
        for s in servers:
            await s.start()
            await s.attach(engine)
        async with (
            AsyncSteeringClient(f"127.0.0.1:{servers[0].port}", timeout=600) as on,
            AsyncSteeringClient(f"127.0.0.1:{servers[1].port}", timeout=600) as off,
        ):
            await _round(on, concurrency, tokens)  # warm-up
            await _round(off, concurrency, tokens)
            for i in range(rounds):
                pair = [("with metrics", on), ("without", off)]
                for label, client in pair if i % 2 == 0 else pair[::-1]:
                    times[label].append(await _round(client, concurrency, tokens))
        result = await engine.generate(GenerationRequest(Prompt(text=PROMPT), SamplingParams(max_new_tokens=tokens)))
    finally:
        for s in servers:
            await s.stop(None)
        await engine.shutdown()
    for label, xs in times.items():
        print(f"{label:>13}: {_spread(xs)}")
    ratio = statistics.median(times["with metrics"]) / statistics.median(times["without"])
    print(f"ratio with/without: {ratio:.3f} ({rounds} interleaved rounds, {concurrency} streams x {tokens} tokens)")
    metrics = Metrics(CollectorRegistry())
    calls = 2000
    start = time.perf_counter()
    for _ in range(calls):
        metrics.generation("Generate", result)
    per_call = (time.perf_counter() - start) / calls
    print(f"Metrics.generation: {per_call * 1e6:.1f} us per finished {len(result.token_ids)}-token generation")
    start = time.perf_counter()
    page = generate_latest(registry)
    print(f"scrape: {(time.perf_counter() - start) * 1e3:.2f} ms for {len(page)} bytes")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    asyncio.run(main(args.tokens, args.rounds, args.concurrency))
