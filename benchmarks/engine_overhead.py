"""Engine benchmark: what steering and monitoring cost, and what continuous batching buys.

Prints tokens/s medians over interleaved runs (each configuration once per round, rounds repeated) and the
ratios DESIGN.md's performance goals are stated in:
  - steered + monitored on every layer vs the same engine unsteered (goal: at most 2% slower),
  - the same engine with its hooks switched off (what the always-on hooks cost),
  - the engine vs `model.generate` on a padded batch (goal: >= 3x at 1 request, >= 2x at 64 on a GPU).
Random-weight model built from a config (no download). Usage:
    python benchmarks/engine_overhead.py [--hidden 256 --layers 6 --concurrency 1 16 --rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable

import torch
import transformers
from peers import run_engine as engine_tokens  # this script's folder is on sys.path
from transformers import AutoConfig, AutoModelForCausalLM

from steering_server.config import EngineConfig
from steering_server.directions import Direction
from steering_server.engine import Engine, start_engine
from steering_server.models import wrap_model
from steering_server.tiny_models import byte_tokenizer
from steering_server.types import (
    EngineLimits,
)

# Real shapes with random weights (no download): (arch, vocab, hidden, intermediate, layers, heads, kv heads).
SHAPES = {
    "qwen2.5-0.5b": ("qwen2", 151936, 896, 4864, 24, 14, 2),
    "qwen2.5-7b": ("qwen2", 152064, 3584, 18944, 28, 28, 4),
}


def build_model(
    arch: str, hidden: int, layers: int, device: str, dtype: torch.dtype, shape: str | None = None
) -> torch.nn.Module:
    vocab, inter, heads, kv = 262, hidden * 4, max(1, hidden // 64), max(1, hidden // 128)
    if shape is not None:
        arch, vocab, hidden, inter, layers, heads, kv = SHAPES[shape]
    config = AutoConfig.for_model(
        arch,
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        max_position_embeddings=4096,
        bos_token_id=1,
        eos_token_id=None,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    with torch.device(device):  # built where it runs: a 7B model is not first materialised on the CPU
        model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa", dtype=dtype)
    return model.eval()


def prompts(n: int, length: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(1)
    return [torch.randint(6, 262, (length,), generator=g).tolist() for _ in range(n)]


async def run_engine(engine: Engine, batch: list[list[int]], new_tokens: int, steered: bool) -> float:
    """Tokens per second of one batch through the engine (the same requests as peers.py)."""
    t = time.perf_counter()
    tokens = await engine_tokens(engine, batch, new_tokens, steered)
    return tokens / (time.perf_counter() - t)


def run_generate(model: torch.nn.Module, batch: list[list[int]], new_tokens: int) -> float:
    ids = torch.tensor(batch, device=model.device)  # equal lengths: a padded batch without padding work
    t = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=0,
        )
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    return (out.shape[1] - ids.shape[1]) * ids.shape[0] / (time.perf_counter() - t)


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="llama")
    ap.add_argument("--shape", choices=sorted(SHAPES), default=None, help="a real model shape (overrides sizes)")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument(
        "--cuda-graphs",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="default: on for cuda (the engine's steering must hold with graphs on)",
    )
    args = ap.parse_args()
    if args.cuda_graphs is None:
        args.cuda_graphs = args.device.startswith("cuda")
    transformers.logging.set_verbosity_error()
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    model = build_model(args.arch, args.hidden, args.layers, args.device, dtype, args.shape)
    ref_model = build_model(args.arch, args.hidden, args.layers, args.device, dtype, args.shape)  # never hooked
    args.hidden = int(model.config.hidden_size)
    args.layers = int(model.config.num_hidden_layers)
    max_c = max(args.concurrency)
    config = EngineConfig(
        limits=EngineLimits(max_new_tokens=args.new_tokens, max_prompt_tokens=args.prompt_tokens, max_queued=max_c + 8),
        max_batch_tokens=max(256, max_c * 2),
        max_requests_per_batch=max_c,
        page_size=32,
        cuda_graphs=args.cuda_graphs or None,
    )
    engine = await start_engine(config, loaded=wrap_model(model, byte_tokenizer(), "bench"))
    g = torch.Generator().manual_seed(3)
    engine.put_direction(
        Direction(
            "bench",
            {layer: torch.randn(args.hidden, generator=g) for layer in range(args.layers)},
            monitor_layer=args.layers // 2,
        )
    )
    print(
        f"device={args.device} dtype={dtype} {args.arch} hidden={args.hidden} layers={args.layers} "
        f"prompt={args.prompt_tokens} new={args.new_tokens} rounds={args.rounds} torch={torch.__version__}"
    )
    print(f"serving: {engine.model_info().serving}")

    async def hooks_off(batch: list[list[int]]) -> float:
        engine.runtime.active = False
        try:
            return await run_engine(engine, batch, args.new_tokens, steered=False)
        finally:
            engine.runtime.active = True

    for c in args.concurrency:
        batch = prompts(c, args.prompt_tokens)
        configs: dict[str, Callable[[], Awaitable[float]]] = {
            "hooks off": lambda b=batch: hooks_off(b),
            "unsteered": lambda b=batch: run_engine(engine, b, args.new_tokens, steered=False),
            "steered+monitored": lambda b=batch: run_engine(engine, b, args.new_tokens, steered=True),
        }
        for f in configs.values():  # warm-up round
            await f()
        run_generate(ref_model, batch, args.new_tokens)
        samples: dict[str, list[float]] = {k: [] for k in [*configs, "model.generate"]}
        for _ in range(args.rounds):
            for name, f in configs.items():
                samples[name].append(await f())
            samples["model.generate"].append(await asyncio.to_thread(run_generate, ref_model, batch, args.new_tokens))
        med = {k: statistics.median(v) for k, v in samples.items()}
        print(f"\nconcurrency {c}: tokens/s median [min-max] over {args.rounds} interleaved rounds")
        for k, v in samples.items():
            print(f"  {k:18s} {med[k]:9.1f}  [{min(v):.1f}-{max(v):.1f}]")
        print(f"  steered+monitored / unsteered = {med['steered+monitored'] / med['unsteered']:.3f}")
        print(f"  unsteered / hooks off         = {med['unsteered'] / med['hooks off']:.3f}")
        print(f"  engine unsteered / generate   = {med['unsteered'] / med['model.generate']:.3f}")
        if c == 1:
            print(f"  decode at 1 request: steered+monitored {1e3 / med['steered+monitored']:.2f} ms/token, "
                  f"unsteered {1e3 / med['unsteered']:.2f}, generate {1e3 / med['model.generate']:.2f} "
                  "(tokens/s of a whole request, prefill included)")
    await engine.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
