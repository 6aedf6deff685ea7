"""The engine against what a user would otherwise run, on the same work.

Alternatives, measured side by side in each round (interleaved, the order rotated every round, rounds repeated;
medians with min-max spread, ratios taken within each round):
  engine unsteered             the serving engine, no steering, no monitoring
  engine steered+monitored     ABLATE 1 on every layer, per-token scores at the monitor layer
  generate                     `model.generate` on the padded batch (equal lengths: padded generate's best case)
  generate + hooks             the same, with forward hooks doing the same work: ablate on every layer, read the
                               projection at the monitor layer (what steering-vectors / repeng users run)
  nnsight                      the same interventions traced with nnsight's `generate`
Work (issue 9): random-weight Llama, hidden 512, 8 layers, 32k vocabulary, fp32, greedy, 32-token prompts, 32 new
tokens, no EOS, 1, 8 and 32 concurrent requests. Reports tokens/s, CPU-seconds per generated token (process CPU
time, every thread) and the ratios of the issue's targets (engine steered+monitored vs generate + hooks: >= 0.95x
tokens/s at 1 request, >= 0.9x at 8 and 32; CPU-s per token <= 1.1x at 1 request).
`--rss` instead measures peak RSS over the loaded model at the largest concurrency, each alternative in a fresh
process (target: engine with `serve`'s defaults <= +200 MiB on the CPU).

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/peers.py [--concurrency 1 8 32 --rounds 5] [--rss]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM

from steering_server.config import EngineConfig
from steering_server.directions import Direction
from steering_server.engine import Engine, start_engine
from steering_server.models import wrap_model
from steering_server.tiny_models import byte_tokenizer
from steering_server.types import (
    EngineLimits,
    GenerationRequest,
    MonitorOptions,
    Prompt,
    SamplingParams,
    SteeringMode,
    SteeringTerm,
)


def build_model(args: argparse.Namespace) -> Any:
    config = AutoConfig.for_model(
        "llama",
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.hidden * 4,
        num_hidden_layers=args.layers,
        num_attention_heads=max(1, args.hidden // 64),
        num_key_value_heads=max(1, args.hidden // 128),
        max_position_embeddings=4096,
        bos_token_id=1,
        eos_token_id=None,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa", dtype=torch.float32).eval()
    model.generation_config.eos_token_id = []  # no EOS: every alternative generates exactly new_tokens
    return model.to(args.device)


def unit_vectors(args: argparse.Namespace) -> dict[int, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return {layer: torch.randn(args.hidden, generator=g) for layer in range(args.layers)}


def prompts(n: int, length: int, vocab: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(1)
    return [torch.randint(6, vocab, (length,), generator=g).tolist() for _ in range(n)]


# ---------------------------------------------------------------------------------------------- the engine
async def make_engine(model: Any, args: argparse.Namespace) -> Engine:
    # serve's defaults (max_batch_tokens, max_requests_per_batch, KV cache), limits wide enough for the work.
    limits = EngineLimits(max_new_tokens=args.new_tokens, max_prompt_tokens=args.prompt_tokens, max_queued=64)
    engine = await start_engine(EngineConfig(limits=limits), loaded=wrap_model(model, byte_tokenizer(), "peers"))
    engine.put_direction(Direction("bench", unit_vectors(args), monitor_layer=args.layers // 2))
    return engine


async def run_engine(engine: Engine, batch: list[list[int]], new_tokens: int, steered: bool) -> int:
    steer = (
        (SteeringTerm("bench", SteeringMode.ABLATE, 1.0, layers=tuple(range(engine.num_layers))),) if steered else ()
    )
    monitor = MonitorOptions(token_scores=True) if steered else MonitorOptions(enabled=False)
    reqs = [
        GenerationRequest(
            Prompt(token_ids=tuple(p)), SamplingParams(max_new_tokens=new_tokens), steer, monitor, ignore_policy=True
        )
        for p in batch
    ]
    outs = await asyncio.gather(*(engine.generate(r) for r in reqs))
    return sum(len(o.token_ids) for o in outs)


# ---------------------------------------------------------------------------------------------- generate
def run_generate(model: Any, batch: list[list[int]], new_tokens: int) -> int:
    ids = torch.tensor(batch, device=model.device)  # equal lengths: a padded batch without padding work
    with torch.inference_mode():
        out = model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, do_sample=False, pad_token_id=0
        )
    return int((out.shape[1] - ids.shape[1]) * ids.shape[0])


@contextlib.contextmanager
def ablate_and_read_hooks(model: Any, args: argparse.Namespace) -> Iterator[list[torch.Tensor]]:
    """Forward hooks doing the engine's steered+monitored work: h <- h - (h.d)d on every layer, and the projection
    at the monitor layer kept for every position (read before that layer's ablation, as the engine does)."""
    layers = model.model.layers
    dirs = {i: (v / v.norm()).to(model.device) for i, v in unit_vectors(args).items()}
    reads: list[torch.Tensor] = []

    def make(i: int) -> Callable[..., Any]:
        d = dirs[i]

        def hook(module: Any, inputs: Any, output: Any) -> Any:
            h = output[0] if isinstance(output, tuple) else output  # (batch, tokens, hidden)
            p = h @ d  # (batch, tokens)
            if i == args.layers // 2:
                reads.append(p.detach())
            new = h - p[..., None] * d
            return (new, *output[1:]) if isinstance(output, tuple) else new

        return hook

    handles = [layer.register_forward_hook(make(i)) for i, layer in enumerate(layers)]
    try:
        yield reads
    finally:
        for h in handles:
            h.remove()


def run_generate_hooks(model: Any, batch: list[list[int]], args: argparse.Namespace) -> int:
    with ablate_and_read_hooks(model, args) as reads:
        n = run_generate(model, batch, args.new_tokens)
        torch.cat([r.reshape(len(batch), -1) for r in reads], dim=1).tolist()  # the scores, to the caller
    return n


def run_nnsight(nn_model: Any, batch: list[list[int]], args: argparse.Namespace) -> int:
    dirs = {i: (v / v.norm()).to(args.device) for i, v in unit_vectors(args).items()}
    ids = torch.tensor(batch, device=args.device)
    layers = nn_model.model.layers
    with nn_model.generate(
        ids, attention_mask=torch.ones_like(ids), max_new_tokens=args.new_tokens, do_sample=False, pad_token_id=0
    ) as tracer:
        reads = list().save()
        for _step in tracer.iter[: args.new_tokens]:
            for i in range(args.layers):
                h = layers[i].output  # (batch, tokens, hidden)
                p = h @ dirs[i]
                if i == args.layers // 2:
                    reads.append(p)
                layers[i].output = h - p[..., None] * dirs[i]
        out = tracer.result.save()
    torch.cat([r.reshape(len(batch), -1) for r in reads], dim=1).tolist()
    return int((out.shape[1] - ids.shape[1]) * ids.shape[0])


# ---------------------------------------------------------------------------------------------- measuring
async def measure(fn: Callable[[], Any]) -> tuple[float, float]:
    """(tokens/s, CPU-s per token) of one run."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    tokens = await result if asyncio.iscoroutine(result) else result
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return tokens / wall, cpu / tokens


async def bench(args: argparse.Namespace) -> None:
    model = build_model(args)
    ref = build_model(args)  # generate's copy: never touched by the engine's hooks
    engine = await make_engine(model, args)
    from nnsight import TransformersModel

    nn_model = TransformersModel(build_model(args), tokenizer=byte_tokenizer())
    print(
        f"peers: llama hidden={args.hidden} layers={args.layers} vocab={args.vocab} fp32 {args.device}, greedy, "
        f"prompt={args.prompt_tokens} new={args.new_tokens}, {args.rounds} interleaved rounds, "
        f"torch threads={torch.get_num_threads()}, torch {torch.__version__}, transformers {transformers.__version__}"
    )
    print(f"engine serving settings: {engine.model_info().serving}")
    for c in args.concurrency:
        batch = prompts(c, args.prompt_tokens, args.vocab)
        alts: dict[str, Callable[[], Any]] = {
            "engine unsteered": lambda b=batch: run_engine(engine, b, args.new_tokens, steered=False),
            "engine steered+monitored": lambda b=batch: run_engine(engine, b, args.new_tokens, steered=True),
            "generate": lambda b=batch: run_generate(ref, b, args.new_tokens),
            "generate + hooks": lambda b=batch: run_generate_hooks(ref, b, args),
        }
        if not args.no_nnsight:
            alts["nnsight"] = lambda b=batch: run_nnsight(nn_model, b, args)
        for fn in alts.values():  # warm-up
            await measure(fn)
        tps: dict[str, list[float]] = {k: [] for k in alts}
        cps: dict[str, list[float]] = {k: [] for k in alts}
        names = list(alts)
        for r in range(args.rounds):
            # The order rotates every round, so no alternative always runs first (cold caches) or right after the
            # same neighbour; ratios are then taken within each round, where the machine's load was shared.
            for name in names[r % len(names):] + names[: r % len(names)]:
                t, c_ = await measure(alts[name])
                tps[name].append(t)
                cps[name].append(c_)
        print(f"\n{c} request(s): median [min-max] over {args.rounds} rounds (order rotated each round)")
        print(f"  {'':26s} {'tokens/s':>22s} {'CPU-ms/token':>22s}")
        for k in alts:
            print(
                f"  {k:26s} {statistics.median(tps[k]):8.1f} [{min(tps[k]):6.1f}-{max(tps[k]):6.1f}]"
                f" {statistics.median(cps[k]) * 1e3:8.2f} [{min(cps[k]) * 1e3:5.2f}-{max(cps[k]) * 1e3:5.2f}]"
            )
        s, u = "engine steered+monitored", "engine unsteered"
        print("  ratios, median [min-max] of the per-round ratios:")
        comparisons = [(s, "generate + hooks"), (s, "generate"), (u, "generate"), (s, u)]
        if "nnsight" in alts:
            comparisons.append((s, "nnsight"))
        for a, b in comparisons:
            line = f"    {a + ' vs ' + b + ':':50s} {_ratio(tps[a], tps[b])} tokens/s"
            if b != u:
                line += f", {_ratio(cps[a], cps[b])} CPU-s/token"
            print(line)
    await engine.shutdown()


def _ratio(a: list[float], b: list[float]) -> str:
    """Median [min-max] of a[i] / b[i], the two measured in the same round."""
    r = [x / y for x, y in zip(a, b, strict=True)]
    return f"{statistics.median(r):.2f}x [{min(r):.2f}-{max(r):.2f}]"


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


async def rss_child(args: argparse.Namespace) -> None:
    """One alternative in this fresh process: peak RSS over the loaded model."""
    model = build_model(args)
    base = _rss_mib()
    batch = prompts(args.rss_concurrency, args.prompt_tokens, args.vocab)
    if args.rss_child == "engine":
        engine = await make_engine(model, args)
        await run_engine(engine, batch, args.new_tokens, steered=True)
        await engine.shutdown()
    else:
        run_generate_hooks(model, batch, args)
    print(f"{_rss_mib() - base:.0f}")


def rss(args: argparse.Namespace) -> None:
    c = max(args.concurrency)
    print(f"peak RSS over the loaded model at {c} requests (steered+monitored), fresh process each:")
    for alt in ("engine", "generate + hooks"):
        cmd = [sys.executable, __file__, "--rss-child", alt, "--rss-concurrency", str(c)]
        cmd += ["--hidden", str(args.hidden), "--layers", str(args.layers), "--vocab", str(args.vocab)]
        cmd += ["--prompt-tokens", str(args.prompt_tokens), "--new-tokens", str(args.new_tokens)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=os.environ).stdout.split()
        print(f"  {alt:18s} +{out[-1]} MiB")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--no-nnsight", action="store_true")
    ap.add_argument("--rss", action="store_true", help="measure peak RSS instead of speed")
    ap.add_argument("--rss-child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--rss-concurrency", type=int, default=32, help=argparse.SUPPRESS)
    args = ap.parse_args()
    transformers.logging.set_verbosity_error()
    if args.rss_child:
        asyncio.run(rss_child(args))
    elif args.rss:
        rss(args)
    else:
        asyncio.run(bench(args))


if __name__ == "__main__":
    main()
