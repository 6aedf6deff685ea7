"""Where a decode step's time goes: the engine against `generate` + hooks on peers.py's work, one request at a time.

peers.py says *how much* slower or faster the engine is; this says *where*. Both run the same model copies and
prompts, alternated run by run. For each it prints the median decode forward (LlamaForCausalLM.forward, timed by
hooks on the model: the same code in both) and the median run; for the engine also the batching thread's
per-step bookkeeping outside the forward (batch preparation, its `begin_batch`, sampling, update), as wall time
and as that thread's CPU time (the difference is waiting, mostly for the GIL held by the event loop thread), and
the steering hook's time per layer inside the real forward (a microbenchmark in a hot loop reads less than half of
it: between layers the model's matmuls evict what the hook's small ops had cached).

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/step_breakdown.py [--runs 12] [--unsteered]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import peers  # this script's folder is on sys.path
import transformers

from steering_server import cb_adapter, runtime

_WALL: dict[str, list[float]] = defaultdict(list)
_CPU: dict[str, list[float]] = defaultdict(list)


def _timed(cls: type, name: str) -> None:
    """Record every call's wall and thread-CPU time of cls.name under `name`."""
    original = getattr(cls, name)

    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        wall, cpu = time.perf_counter(), time.thread_time()
        try:
            return original(self, *args, **kwargs)
        finally:
            _WALL[name].append(time.perf_counter() - wall)
            _CPU[name].append(time.thread_time() - cpu)

    setattr(cls, name, wrapper)


def _timed_hooks() -> None:
    """Record every steering-hook call (one per layer per forward) under "steering hook, per layer"."""
    make_hook = runtime.SteeringRuntime._make_hook

    def make(self: runtime.SteeringRuntime, layer: int) -> Callable[..., Any]:
        hook = make_hook(self, layer)

        def timed(*args: Any) -> Any:
            wall, cpu = time.perf_counter(), time.thread_time()
            try:
                return hook(*args)
            finally:
                _WALL["steering hook, per layer"].append(time.perf_counter() - wall)
                _CPU["steering hook, per layer"].append(time.thread_time() - cpu)

        return timed

    runtime.SteeringRuntime._make_hook = make  # type: ignore[method-assign]


def _forward_timer(model: Any, into: list[float]) -> None:
    start: list[float] = []
    model.register_forward_pre_hook(lambda *_: start.append(time.perf_counter()))
    model.register_forward_hook(lambda *_: into.append(time.perf_counter() - start.pop()))


async def main(args: argparse.Namespace) -> None:
    for cls, name in [
        (cb_adapter._SteeringProcessor, "prepare_next_batch"),
        (runtime.SteeringRuntime, "begin_batch"),
        (runtime.SteeringRuntime, "sample"),
        (cb_adapter._SteeringProcessor, "update_batch"),
    ]:
        _timed(cls, name)
    _timed_hooks()
    work = argparse.Namespace(hidden=512, layers=8, vocab=32000, prompt_tokens=32, new_tokens=32, device="cpu")
    served, ref = peers.build_model(work), peers.build_model(work)
    engine = await peers.make_engine(served, work)
    batch = peers.prompts(1, work.prompt_tokens, work.vocab)
    steered = not args.unsteered
    baseline = "generate + hooks" if steered else "generate"
    forwards: dict[str, list[float]] = {"engine": [], baseline: []}
    runs: dict[str, list[float]] = {"engine": [], baseline: []}
    alternatives: dict[str, Callable[[], Any]] = {
        "engine": lambda: peers.run_engine(engine, batch, work.new_tokens, steered),
        baseline: lambda: peers.run_generate_hooks(ref, batch, work)
        if steered
        else peers.run_generate(ref, batch, work.new_tokens),
    }
    for fn in alternatives.values():  # warm-up, untimed
        result = fn()
        if asyncio.iscoroutine(result):
            await result
    _WALL.clear()
    _CPU.clear()
    _forward_timer(served, forwards["engine"])
    _forward_timer(ref, forwards[baseline])
    for _ in range(args.runs):
        for name, fn in alternatives.items():
            t = time.perf_counter()
            result = fn()
            if asyncio.iscoroutine(result):
                await result
            runs[name].append(time.perf_counter() - t)
    await engine.shutdown()
    kind = "steered+monitored (ABLATE every layer)" if steered else "unsteered"
    print(f"1 request, {kind}, {work.new_tokens} new tokens, {args.runs} alternated runs; medians in ms")
    for name in runs:
        # The median forward is a decode step's (one prefill per run of 32 forwards).
        print(f"  {name:18s} run {statistics.median(runs[name]) * 1e3:7.1f}   "
              f"decode forward {statistics.median(forwards[name]) * 1e3:6.2f}")
    hook = "steering hook, per layer"
    print("  engine bookkeeping per step (batching thread), wall / thread CPU:")
    for name in [n for n in _WALL if n != hook] + [hook]:
        if name == hook:
            print("  inside the engine's forward, wall / thread CPU:")
        print(f"    {name:24s} {statistics.median(_WALL[name]) * 1e3:6.3f} / {statistics.median(_CPU[name]) * 1e3:6.3f}"
              + ("   (includes begin_batch)" if name == "prepare_next_batch" else ""))


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=12)
    ap.add_argument("--unsteered", action="store_true", help="no steering, no monitoring in either")
    transformers.logging.set_verbosity_error()
    asyncio.run(main(ap.parse_args()))
