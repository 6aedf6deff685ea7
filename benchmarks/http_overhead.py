"""Front-end benchmark: what gRPC (goal: at most 1 ms) and the OpenAI-compatible HTTP API each add per streamed
token over the in-process engine.

Runs the same greedy steered request (fixed length, no EOS cut: the token counts are checked equal) through
`engine.generate_stream` in process, `GenerateStream` over loopback gRPC and `POST /v1/completions` with
`stream: true` over loopback HTTP (server-sent events, read with httpx), interleaved, and prints the median time per
token of each with its spread and the differences, and the process's CPU time per token (client and server share
the process, so it counts both ends; steadier than wall time on a busy machine). Tiny random-weight model (no
download), so the engine's own time is small and the differences are the front ends'. Usage:
    python benchmarks/http_overhead.py [--tokens 128 --rounds 7 --concurrency 1 8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time

import httpx
import torch
from steering_client import AsyncSteeringClient, ablate

from steering_server.config import EngineConfig
from steering_server.directions import Direction
from steering_server.engine import Engine, start_engine
from steering_server.http import HttpServer
from steering_server.models import wrap_model
from steering_server.service import SteeringServer
from steering_server.tiny_models import byte_tokenizer, tiny_model
from steering_server.types import EngineLimits, GenerationRequest, Prompt, SamplingParams, SteeringMode, SteeringTerm

PROMPT = "Once upon a time"  # greedy runs long without EOS on the tiny seeded model


async def _in_process(engine: Engine, n: int, tokens: int) -> tuple[float, int]:
    request = GenerationRequest(
        Prompt(text=PROMPT), SamplingParams(max_new_tokens=tokens),
        steering=(SteeringTerm("misalignment", SteeringMode.ABLATE, 1.0),),
    )

    async def one() -> int:
        count = 0
        async for _ in engine.generate_stream(request):
            count += 1
        return count

    start = time.perf_counter()
    counts = await asyncio.gather(*(one() for _ in range(n)))
    return time.perf_counter() - start, sum(counts)


async def _over_grpc(client: AsyncSteeringClient, n: int, tokens: int) -> tuple[float, int]:
    async def one() -> int:
        count = 0
        async for message in client.generate_stream(PROMPT, max_new_tokens=tokens, steering=[ablate("misalignment")]):
            count += message.HasField("token")
        return count

    start = time.perf_counter()
    counts = await asyncio.gather(*(one() for _ in range(n)))
    return time.perf_counter() - start, sum(counts)


async def _over_http(client: httpx.AsyncClient, n: int, tokens: int) -> tuple[float, int]:
    body = {"prompt": PROMPT, "max_tokens": tokens, "temperature": 0, "stream": True,
            "steering": [{"direction": "misalignment", "mode": "ablate"}]}

    async def one() -> int:
        count = 0
        async with client.stream("POST", "/v1/completions", json=body) as response:
            async for line in response.aiter_lines():
                if line.startswith("data: {"):
                    count += "token" in json.loads(line[6:]).get("steering", {})
        return count

    start = time.perf_counter()
    counts = await asyncio.gather(*(one() for _ in range(n)))
    return time.perf_counter() - start, sum(counts)


def _summary(name: str, values: list[float]) -> str:
    return f"{name} {statistics.median(values):.3f} ms/token (spread {min(values):.3f}-{max(values):.3f})"


async def main(args: argparse.Namespace) -> None:
    loaded = wrap_model(tiny_model("llama"), byte_tokenizer(), "tiny-llama")
    engine = await start_engine(EngineConfig(limits=EngineLimits(max_new_tokens=1024)), loaded=loaded)
    gen = torch.Generator().manual_seed(0)
    vectors = {layer: torch.randn(engine.hidden_size, generator=gen) for layer in range(engine.num_layers)}
    engine.put_direction(Direction("misalignment", vectors, monitor_layer=1))
    server = SteeringServer("127.0.0.1", 0)
    await server.start()
    await server.attach(engine)
    http = HttpServer(server.servicer)
    await http.start()
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    try:
        async with AsyncSteeringClient(f"127.0.0.1:{server.port}") as client, httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{http.port}", timeout=300, limits=limits
        ) as web:
            await _over_grpc(client, 1, 8)  # warm up every path
            await _over_http(web, 1, 8)
            await _in_process(engine, 1, 8)
            for n in args.concurrency:
                times: dict[str, list[float]] = {"in-process": [], "gRPC": [], "HTTP": []}
                cpu: dict[str, list[float]] = {k: [] for k in times}
                for _ in range(args.rounds):  # interleaved, so drift hits all alike
                    cpu_start = time.process_time()
                    seconds, count = await _in_process(engine, n, args.tokens)
                    times["in-process"].append(seconds / (count / n) * 1e3)
                    cpu["in-process"].append((time.process_time() - cpu_start) / count * 1e3)
                    for name in ("gRPC", "HTTP"):
                        cpu_start = time.process_time()
                        run = _over_grpc(client, n, args.tokens) if name == "gRPC" else _over_http(web, n, args.tokens)
                        seconds, got = await run
                        assert got == count, (name, got, count)
                        times[name].append(seconds / (count / n) * 1e3)
                        cpu[name].append((time.process_time() - cpu_start) / count * 1e3)
                base, grpc_ms, http_ms = (statistics.median(times[k]) for k in ("in-process", "gRPC", "HTTP"))
                print(f"concurrency {n}: " + ", ".join(_summary(k, v) for k, v in times.items()))
                print(f"  per streamed token: gRPC adds {grpc_ms - base:+.3f} ms, HTTP adds {http_ms - base:+.3f} ms "
                      f"(HTTP/gRPC time per token {http_ms / grpc_ms:.2f}x)")
                c_base, c_grpc, c_http = (statistics.median(cpu[k]) for k in ("in-process", "gRPC", "HTTP"))
                print(f"  CPU ms per token (both ends): in-process {c_base:.3f}, gRPC {c_grpc:.3f} "
                      f"(+{c_grpc - c_base:.3f}), HTTP {c_http:.3f} (+{c_http - c_base:.3f})")
    finally:
        await http.stop(None)
        await server.stop(None)
        await engine.shutdown()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    asyncio.run(main(parser.parse_args()))
