"""gRPC benchmark: what the service adds per streamed token over the in-process engine (goal: at most 1 ms).

Runs the same greedy request (fixed length, no EOS cut: the token count is checked equal) through
`engine.generate_stream` in process and through `GenerateStream` over loopback gRPC, interleaved, and prints the
median time per token of each with its spread and the difference. Tiny random-weight model (no download), so the
engine's own time is small and the difference is the service's. Usage:
    python benchmarks/grpc_overhead.py [--tokens 128 --rounds 7 --concurrency 1 8]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import torch
from steering_client import AsyncSteeringClient, ablate

from steering_server.config import EngineConfig
from steering_server.directions import Direction
from steering_server.engine import Engine, start_engine
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
        stream = engine.generate_stream(request)
        count = 0
        async for _ in stream:
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


async def main(args: argparse.Namespace) -> None:
    loaded = wrap_model(tiny_model("llama"), byte_tokenizer(), "tiny-llama")
    engine = await start_engine(EngineConfig(limits=EngineLimits(max_new_tokens=1024)), loaded=loaded)
    gen = torch.Generator().manual_seed(0)
    vectors = {layer: torch.randn(engine.hidden_size, generator=gen) for layer in range(engine.num_layers)}
    engine.put_direction(Direction("misalignment", vectors, monitor_layer=1))
    server = SteeringServer("127.0.0.1", 0)
    await server.start()
    await server.attach(engine)
    try:
        async with AsyncSteeringClient(f"127.0.0.1:{server.port}") as client:
            await _over_grpc(client, 1, 8)  # warm up both paths
            await _in_process(engine, 1, 8)
            for n in args.concurrency:
                local: list[float] = []
                remote: list[float] = []
                for _ in range(args.rounds):  # interleaved, so drift hits both alike
                    seconds, count = await _in_process(engine, n, args.tokens)
                    local.append(seconds / (count / n) * 1e3)
                    seconds, count_grpc = await _over_grpc(client, n, args.tokens)
                    assert count_grpc == count, (count_grpc, count)
                    remote.append(seconds / (count / n) * 1e3)
                lo, re = statistics.median(local), statistics.median(remote)
                print(
                    f"concurrency {n}: in-process {lo:.3f} ms/token (spread {min(local):.3f}-{max(local):.3f}), "
                    f"gRPC {re:.3f} ms/token (spread {min(remote):.3f}-{max(remote):.3f}), "
                    f"gRPC adds {re - lo:+.3f} ms per streamed token"
                )
    finally:
        await server.stop(None)
        await engine.shutdown()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    asyncio.run(main(parser.parse_args()))
