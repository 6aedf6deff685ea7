"""Conditional steering benchmark: what deciding a condition on the device costs, side by side.

Prints CPU-seconds per token (of the whole process: the batching thread included; steadier than wall-clock on a
shared machine) as medians over interleaved rounds, and ratios against the same term applied unconditionally:
  - conditional, never fires (threshold above every reading: the gate is latched and checked, nothing steers),
  - conditional, fires at the prompt (steers every generated token, like the unconditional term),
each on the eager path (gate work only in batches holding a conditional request) and on the branch-free path that
CUDA graphs and torch.compile run (every forward does the full step, gate columns included).
Random-weight model built from a config (no download). Usage:
    python benchmarks/conditional_overhead.py [--hidden 256 --layers 6 --concurrency 1 8 --rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable

import torch
import transformers
from engine_overhead import build_model, prompts  # this script's folder is on sys.path

from steering_server.config import EngineConfig
from steering_server.directions import Direction
from steering_server.engine import Engine, start_engine
from steering_server.models import wrap_model
from steering_server.tiny_models import byte_tokenizer
from steering_server.types import (
    ConditionScope,
    EngineLimits,
    GenerationRequest,
    MonitorOptions,
    Prompt,
    SamplingParams,
    SteeringCondition,
    SteeringMode,
    SteeringTerm,
)


async def cpu_s_per_token(engine: Engine, batch: list[list[int]], new: int, term: SteeringTerm | None) -> float:
    reqs = [
        GenerationRequest(
            Prompt(token_ids=tuple(p)),
            SamplingParams(max_new_tokens=new),
            (term,) if term is not None else (),
            MonitorOptions(enabled=False),
            ignore_policy=True,
        )
        for p in batch
    ]
    t = time.process_time()
    outs = await asyncio.gather(*(engine.generate(r) for r in reqs))
    return (time.process_time() - t) / sum(len(o.token_ids) for o in outs)


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="llama")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    transformers.logging.set_verbosity_error()
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    model = build_model(args.arch, args.hidden, args.layers, args.device, dtype)
    max_c = max(args.concurrency)
    config = EngineConfig(
        limits=EngineLimits(max_new_tokens=args.new_tokens, max_prompt_tokens=args.prompt_tokens, max_queued=max_c + 8),
        max_batch_tokens=max(256, max_c * 2),
        max_requests_per_batch=max_c,
        page_size=32,
    )
    engine = await start_engine(config, loaded=wrap_model(model, byte_tokenizer(), "bench"))
    g = torch.Generator().manual_seed(3)
    vectors = {layer: torch.randn(args.hidden, generator=g) for layer in range(args.layers)}
    engine.put_direction(Direction("bench", vectors, monitor_layer=args.layers // 2))
    term = SteeringTerm("bench", SteeringMode.ABLATE, 1.0)  # the monitor layer and above
    never = SteeringTerm("bench", SteeringMode.ABLATE, 1.0, condition=SteeringCondition("bench", 1e30))
    fires = SteeringTerm(
        "bench", SteeringMode.ABLATE, 1.0, condition=SteeringCondition("bench", -1e30, ConditionScope.PROMPT)
    )
    print(
        f"device={args.device} dtype={dtype} {args.arch} hidden={args.hidden} layers={args.layers} "
        f"prompt={args.prompt_tokens} new={args.new_tokens} rounds={args.rounds} torch={torch.__version__}"
    )

    def run(batch: list[list[int]], t: SteeringTerm | None, branch_free: bool) -> Callable[[], Awaitable[float]]:
        async def go() -> float:
            engine.runtime.skip_idle_work = not branch_free
            try:
                return await cpu_s_per_token(engine, batch, args.new_tokens, t)
            finally:
                engine.runtime.skip_idle_work = True

        return go

    for c in args.concurrency:
        batch = prompts(c, args.prompt_tokens)
        configs = {
            f"{path} {name}": run(batch, t, path == "branch-free")
            for path in ("eager", "branch-free")
            for name, t in (("unsteered", None), ("steered", term), ("cond never", never), ("cond fires", fires))
        }
        for f in configs.values():  # warm-up round
            await f()
        samples: dict[str, list[float]] = {k: [] for k in configs}
        for _ in range(args.rounds):
            for name, f in configs.items():
                samples[name].append(await f())
        med = {k: statistics.median(v) for k, v in samples.items()}
        print(f"\nconcurrency {c}: CPU-ms per token, median [min-max] over {args.rounds} interleaved rounds")
        for k, v in samples.items():
            print(f"  {k:24s} {1e3 * med[k]:7.2f}  [{1e3 * min(v):.2f}-{1e3 * max(v):.2f}]")
        for path in ("eager", "branch-free"):
            s = med[f"{path} steered"]
            print(f"  {path:11s} CPU per token: cond never / steered = {med[f'{path} cond never'] / s:.3f}   "
                  f"cond fires / steered = {med[f'{path} cond fires'] / s:.3f}   "
                  f"steered / unsteered = {s / med[f'{path} unsteered']:.3f}")
    await engine.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
