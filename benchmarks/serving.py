"""A serving workload over gRPC: the engine against a server that runs one `generate` + hooks per request.

Both servers speak the same gRPC API (`GenerateStream`), each on its own port in this process, and get the same
workload, alternately (interleaved rounds): requests arriving at staggered times (exponential gaps, fixed seed),
prompts of 8-512 tokens, outputs of 8-128 tokens (no EOS), streamed, every request steered (ABLATE 1 on every
layer) and monitored (a score per token). The baseline answers requests one at a time in arrival order with
`model.generate` and forward hooks doing the same ablate-and-read work (what a steering-vectors / repeng user would
serve), streaming each token as it is made.

Prints throughput (generated tokens / time from the first arrival to the last token), time to first token and
inter-token latency (p50 / p99 over every request of the round), as medians over rounds with their spread.
Target (issue 9): engine >= 2x the baseline's throughput, with a lower p50 time to first token. Usage:
    OMP_NUM_THREADS=1 PYTHONPATH=.:clients/python python benchmarks/serving.py [--requests 24 --rate 4 --rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import queue
import random
import statistics
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import torch
import transformers
from peers import ablate_and_read_hooks, build_model, make_engine
from steering_client import AsyncSteeringClient, ablate

from steering_server.engine import Engine
from steering_server.engine_api import EngineClient, RequestStream
from steering_server.service import SteeringServer
from steering_server.types import GenerationRequest, GenerationResult, StopReason, TokenEvent


# ---------------------------------------------------------------------------------------------- the baseline
class _SerialStream(RequestStream):
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.events: asyncio.Queue[TokenEvent | None] = asyncio.Queue()
        self.done: asyncio.Future[GenerationResult] = loop.create_future()
        self.cancelled = False

    async def _iterate(self) -> AsyncIterator[TokenEvent]:
        while (event := await self.events.get()) is not None:
            yield event

    def __aiter__(self) -> AsyncIterator[TokenEvent]:
        return self._iterate()

    async def result(self) -> GenerationResult:
        return await self.done

    def final(self) -> GenerationResult | None:
        done = self.done.done() and not self.done.cancelled() and self.done.exception() is None
        return self.done.result() if done else None

    def cancel(self) -> None:
        self.cancelled = True


class _Streamer:
    """`generate`'s streamer protocol: put(prompt ids) first, then put(new token) per step, then end()."""

    def __init__(self, stream: _SerialStream, tokenizer: Any, reads: list[torch.Tensor], name: str) -> None:
        self.stream, self.tokenizer, self.reads, self.name = stream, tokenizer, reads, name
        self.tokens: list[int] = []
        self.prompt = True

    def put(self, value: torch.Tensor) -> None:
        if self.prompt:
            self.prompt = False
            return
        token = int(value.reshape(-1)[0])
        self.tokens.append(token)
        score = float(self.reads[-1][0, -1]) if self.reads else 0.0  # the reading that produced this token
        event = TokenEvent(len(self.tokens) - 1, token, self.tokenizer.decode([token]), {self.name: score})
        self.stream.loop.call_soon_threadsafe(self.stream.events.put_nowait, event)

    def end(self) -> None:
        pass


class SerialGenerateServer(EngineClient):
    """The baseline behind the same API: one worker thread runs `generate` + hooks per request, in arrival order.
    Everything but generating is the inner engine's (model info, health)."""

    def __init__(self, inner: Engine, model: Any, args: argparse.Namespace) -> None:
        self.inner, self.model, self.args = inner, model, args
        self.limits = inner.limits
        self.jobs: queue.Queue[tuple[GenerationRequest, _SerialStream] | None] = queue.Queue()
        self.worker = threading.Thread(target=self._work, daemon=True)
        self.worker.start()

    def _work(self) -> None:
        while (job := self.jobs.get()) is not None:
            request, stream = job
            if stream.cancelled:
                continue
            ids = torch.tensor([request.prompt.token_ids], device=self.model.device)
            with ablate_and_read_hooks(self.model, self.args) as reads, torch.inference_mode():
                streamer = _Streamer(stream, self.inner.tokenizer, reads, "bench")
                self.model.generate(
                    ids,
                    attention_mask=torch.ones_like(ids),
                    max_new_tokens=request.sampling.max_new_tokens,
                    do_sample=False,
                    pad_token_id=0,
                    streamer=streamer,
                )
            result = GenerationResult(
                text=self.inner.tokenizer.decode(streamer.tokens),
                token_ids=tuple(streamer.tokens),
                stop_reason=StopReason.MAX_TOKENS,
                prompt_tokens=ids.shape[1],
                monitor=(),
            )
            stream.loop.call_soon_threadsafe(stream.done.set_result, result)  # first: final() holds at the end
            stream.loop.call_soon_threadsafe(stream.events.put_nowait, None)

    def generate_stream(self, request: GenerationRequest) -> RequestStream:
        stream = _SerialStream(asyncio.get_running_loop())
        self.jobs.put((request, stream))
        return stream

    async def shutdown(self) -> None:
        self.jobs.put(None)

    # Not generating: the inner engine answers.
    @property
    def healthy(self) -> bool:
        return self.inner.healthy

    def add_death_callback(self, callback: Callable[[BaseException], None]) -> None:
        self.inner.add_death_callback(callback)

    def model_info(self) -> Any:
        return self.inner.model_info()

    def tokenize(self, text: str) -> list[int]:
        return self.inner.tokenize(text)

    def detokenize(self, token_ids: list[int]) -> str:
        return self.inner.detokenize(token_ids)

    async def open_compare(self, request: Any) -> Any:
        raise NotImplementedError

    async def score(self, request: Any) -> Any:
        raise NotImplementedError

    def list_directions(self) -> Any:
        return self.inner.list_directions()

    def get_direction(self, name: str) -> Any:
        return self.inner.get_direction(name)

    def put_direction(self, direction: Any, strict: bool = False) -> Any:
        raise NotImplementedError

    def delete_direction(self, name: str) -> None:
        raise NotImplementedError

    def get_policy(self) -> Any:
        return self.inner.get_policy()

    def set_policy(self, policy: Any) -> Any:
        raise NotImplementedError

    def stats(self) -> Any:
        return self.inner.stats()


# ---------------------------------------------------------------------------------------------- the workload
def workload(args: argparse.Namespace) -> list[tuple[float, list[int], int]]:
    """(arrival offset s, prompt ids, new tokens) per request; the same every round."""
    rng = random.Random(7)
    t = 0.0
    out = []
    for _ in range(args.requests):
        t += rng.expovariate(args.rate)
        prompt = [rng.randrange(6, args.vocab) for _ in range(rng.randint(8, args.max_prompt))]
        out.append((t, prompt, rng.randint(8, args.max_new)))
    return out


async def run_round(client: AsyncSteeringClient, work: list[tuple[float, list[int], int]], layers: int) -> dict:
    start = time.perf_counter()
    steering = [ablate("bench", 1.0, range(layers))]

    async def one(offset: float, prompt: list[int], n: int) -> tuple[float, list[float], int]:
        await asyncio.sleep(max(0.0, start + offset - time.perf_counter()))
        sent = time.perf_counter()
        stamps: list[float] = []
        async for message in client.generate_stream(
            prompt_token_ids=prompt, max_new_tokens=n, steering=steering, token_scores=True, ignore_policy=True
        ):
            if message.HasField("token"):
                stamps.append(time.perf_counter())
        assert len(stamps) == n, (len(stamps), n)
        return stamps[0] - sent, [b - a for a, b in itertools.pairwise(stamps)], n

    results = await asyncio.gather(*(one(*w) for w in work))
    elapsed = time.perf_counter() - start - work[0][0]
    ttft = sorted(r[0] for r in results)
    itl = sorted(x for r in results for x in r[1])
    tokens = sum(r[2] for r in results)

    def q(xs: list[float], p: float) -> float:
        return xs[min(len(xs) - 1, int(p * len(xs)))]

    return {
        "throughput tok/s": tokens / elapsed,
        "TTFT p50 ms": q(ttft, 0.5) * 1e3,
        "TTFT p99 ms": q(ttft, 0.99) * 1e3,
        "ITL p50 ms": q(itl, 0.5) * 1e3,
        "ITL p99 ms": q(itl, 0.99) * 1e3,
    }


async def main(args: argparse.Namespace) -> None:
    transformers.logging.set_verbosity_error()
    args.prompt_tokens, args.new_tokens = args.max_prompt, args.max_new
    engine = await make_engine(build_model(args), args)
    baseline = SerialGenerateServer(engine, build_model(args), args)
    servers = {"engine": SteeringServer("127.0.0.1", 0), "generate + hooks": SteeringServer("127.0.0.1", 0)}
    for server, backend in zip(servers.values(), (engine, baseline), strict=True):
        await server.start()
        await server.attach(backend)
    work = workload(args)
    print(
        f"serving: llama hidden={args.hidden} layers={args.layers} vocab={args.vocab} fp32 cpu; {args.requests} "
        f"requests, arrivals {args.rate}/s, prompts 8-{args.max_prompt}, outputs 8-{args.max_new} tokens, "
        f"streamed over gRPC, each ABLATE on every layer + token scores; {args.rounds} interleaved rounds; "
        f"torch threads={torch.get_num_threads()}"
    )
    samples: dict[str, dict[str, list[float]]] = {name: {} for name in servers}
    clients = {name: AsyncSteeringClient(f"127.0.0.1:{s.port}") for name, s in servers.items()}
    try:
        for client in clients.values():  # warm-up
            await run_round(client, work[:2], args.layers)
        for _ in range(args.rounds):
            for name, client in clients.items():
                for k, v in (await run_round(client, work, args.layers)).items():
                    samples[name].setdefault(k, []).append(v)
    finally:
        for client in clients.values():
            await client.close()
        for server in servers.values():
            await server.stop(None)
        await baseline.shutdown()
        await engine.shutdown()
    metrics = list(samples["engine"])
    print(f"\n{'':18s}" + "".join(f"{m:>26s}" for m in metrics))
    med = {n: {m: statistics.median(v) for m, v in s.items()} for n, s in samples.items()}
    for name, s in samples.items():
        print(f"{name:18s}" + "".join(f"{med[name][m]:9.1f} [{min(v):6.1f}-{max(v):6.1f}]" for m, v in s.items()))
    e, b = med["engine"], med["generate + hooks"]
    print(
        f"\nengine / generate + hooks: throughput {e['throughput tok/s'] / b['throughput tok/s']:.2f}x, "
        f"TTFT p50 {e['TTFT p50 ms'] / b['TTFT p50 ms']:.2f}x, ITL p50 {e['ITL p50 ms'] / b['ITL p50 ms']:.2f}x"
    )


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--requests", type=int, default=24)
    ap.add_argument("--rate", type=float, default=4.0, help="mean arrivals per second")
    ap.add_argument("--max-prompt", type=int, default=512)
    ap.add_argument("--max-new", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    asyncio.run(main(ap.parse_args()))
