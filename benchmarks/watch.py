"""WatchMonitor benchmark: generation throughput with stuck watchers vs none (DESIGN.md: a slow or stuck watcher
never slows generation).

Each round runs the same batch of concurrent requests through the engine twice, in alternating order: with no
watcher, and with `--watchers` subscriptions that never read (their buffers fill, then drop the oldest event on
every publish: the worst case of the publish path). Prints tokens/s per configuration and the ratio stuck / none per
round: median and min-max spread. Also checks the stuck buffers stayed at their bound. The tiny seeded Llama of the
tests by default (no download). Usage:
    python benchmarks/watch.py [--requests 64 --new-tokens 8 --rounds 7 --watchers 4 --buffer 16]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import torch

from steering_server.config import EngineConfig
from steering_server.directions import Direction
from steering_server.engine import Engine, start_engine
from steering_server.models import wrap_model
from steering_server.monitor_feed import MonitorFilter, request_event
from steering_server.tiny_models import byte_tokenizer, tiny_model
from steering_server.types import (
    DirectionScores,
    EngineLimits,
    GenerationRequest,
    GenerationResult,
    Prompt,
    SamplingParams,
    StopReason,
)


async def run_batch(engine: Engine, requests: int, new_tokens: int) -> float:
    """Tokens per second of `requests` concurrent, monitored, greedy requests."""
    batch = [
        GenerationRequest(
            Prompt(token_ids=tuple(range(10 + i % 7, 40 + i % 7))), SamplingParams(max_new_tokens=new_tokens)
        )
        for i in range(requests)
    ]
    t = time.perf_counter()
    results = await asyncio.gather(*(engine.generate(r) for r in batch))
    elapsed = time.perf_counter() - t
    return sum(len(r.token_ids) for r in results) / elapsed


def publish_cost(engine: Engine, watchers: int, buffer: int, n: int = 20_000) -> float:
    """Microseconds per `request_event` + `publish` of a one-direction summary with full, never-read buffers."""
    scores = (DirectionScores("misalignment", 1, 0.5, 0.25, (), False, False, max_score=1.0),)
    result = GenerationResult("text", tuple(range(8)), StopReason.MAX_TOKENS, 30, scores, "r0")
    subs = [engine.watch_monitor(MonitorFilter(buffer=buffer)) for _ in range(watchers)]
    try:
        t = time.perf_counter()
        for _ in range(n):
            engine.monitor_feed.publish(request_event(result, rpc="Generate"))
        return 1e6 * (time.perf_counter() - t) / n
    finally:
        for sub in subs:
            sub.close()


async def main(args: argparse.Namespace) -> None:
    loaded = wrap_model(tiny_model("llama"), byte_tokenizer(), "tiny-llama")
    limits = EngineLimits(max_new_tokens=args.new_tokens, max_prompt_tokens=256, max_queued=max(64, args.requests))
    engine = await start_engine(
        EngineConfig(limits=limits, max_requests_per_batch=args.requests, run_canary=False), loaded=loaded
    )
    try:
        g = torch.Generator().manual_seed(0)
        engine.put_direction(
            Direction(
                "misalignment", {k: torch.randn(engine.hidden_size, generator=g) for k in range(engine.num_layers)}, 1
            )
        )
        await run_batch(engine, args.requests, args.new_tokens)  # warm-up
        rates: dict[str, list[float]] = {"none": [], "stuck": []}
        ratios = []
        drops = 0
        for r in range(args.rounds):
            order = ["none", "stuck"] if r % 2 == 0 else ["stuck", "none"]
            this: dict[str, float] = {}
            for name in order:
                subs = [
                    engine.watch_monitor(MonitorFilter(buffer=args.buffer))
                    for _ in range(args.watchers if name == "stuck" else 0)
                ]
                try:
                    this[name] = await run_batch(engine, args.requests, args.new_tokens)
                    for s in subs:
                        assert len(s) <= s.capacity, "a stuck watcher's buffer outgrew its bound"
                        drops += s.dropped_total
                finally:
                    for s in subs:
                        s.close()
            for name, rate in this.items():
                rates[name].append(rate)
            ratios.append(this["stuck"] / this["none"])
        print(
            f"tiny Llama (hidden {engine.hidden_size}, {engine.num_layers} layers), {args.requests} concurrent "
            f"requests x {args.new_tokens} new tokens, {args.watchers} stuck watchers (buffer {args.buffer}), "
            f"{args.rounds} interleaved rounds"
        )
        for name, values in rates.items():
            print(
                f"  {name:5}: median {statistics.median(values):8.1f} tokens/s "
                f"(min {min(values):.1f}, max {max(values):.1f})"
            )
        print(
            f"  stuck / none throughput: median {statistics.median(ratios):.3f}x "
            f"(spread {min(ratios):.3f}-{max(ratios):.3f}); buffers stayed <= {args.buffer}, {drops} events dropped"
        )
        per_publish = publish_cost(engine, args.watchers, args.buffer)
        per_request = 1e6 * args.new_tokens / statistics.median(rates["none"])  # batch time / requests
        print(
            f"  publish path alone: {per_publish:.1f} us per finished request with {args.watchers} stuck watchers "
            f"({per_publish / per_request:.2%} of a request's share of the batch time, {per_request:.0f} us)"
        )
    finally:
        await engine.shutdown()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--watchers", type=int, default=4)
    parser.add_argument("--buffer", type=int, default=16)
    asyncio.run(main(parser.parse_args()))
