"""The fast paths: torch.compile of the batched forward (the CPU stand-in for CUDA graphs: both pad the inputs
and trace the hooks once), and the serving settings `serve` sizes the cache and batching with."""

from __future__ import annotations

import asyncio

import pytest

from steering_server.cb_adapter import choose_attn_implementation
from steering_server.config import CPU_KV_TOKENS_PER_REQUEST, EngineConfig
from steering_server.types import GenerationRequest, MonitorOptions, Prompt, SamplingParams, SteeringMode, SteeringTerm

from .conftest import DEVICE, TEST_LIMITS, loaded_model, random_direction, running_engine

PUSH = (SteeringTerm("d", SteeringMode.ADD, -1.0),)
PROMPTS = [[5 + 3 * i + j for j in range(6 + 5 * i)] for i in range(4)]


def _req(prompt: list[int], steer: tuple[SteeringTerm, ...] = (), **sampling: object) -> GenerationRequest:
    return GenerationRequest(
        Prompt(token_ids=tuple(prompt)),
        SamplingParams(max_new_tokens=10, **sampling),  # type: ignore[arg-type]
        steer,
        MonitorOptions(token_scores=True),
    )


async def _run(engine, reqs: list[GenerationRequest]) -> list[list[int]]:  # type: ignore[no-untyped-def]
    return [list(r.token_ids) for r in await asyncio.gather(*(engine.generate(q) for q in reqs))]


FAST_PATHS = [{"compile": "aot_eager"}] + ([{"cuda_graphs": True}] if DEVICE.startswith("cuda") else [])


@pytest.mark.parametrize("fast", FAST_PATHS, ids=lambda f: next(iter(f)))
async def test_compiled_forward_steers_after_a_hooks_off_batch_ran_first(fast: dict[str, object]) -> None:
    """The trap of graph capture: a hooks-off batch traced first must not freeze "no steering" into the forward.
    Under torch.compile (and CUDA graphs, on a GPU) the hooks read only device tables; a steered request still
    steers, an unsteered one in the same batch stays token-identical to the eager engine, and sampled rows keep
    their per-request tokens (sampling runs after the captured forward)."""
    loaded = loaded_model()
    mixed = [_req(p, PUSH if i % 2 else ()) for i, p in enumerate(PROMPTS)]
    mixed += [_req(PROMPTS[0], temperature=1.0, seed=11), _req(PROMPTS[1], PUSH, temperature=0.8, top_k=20, seed=5)]
    async with running_engine(loaded) as eager:
        eager.put_direction(random_direction("d", loaded))
        want = await _run(eager, mixed)
        unsteered_want = await _run(eager, [_req(p) for p in PROMPTS])
    assert want[1] != unsteered_want[1] and want[3] != unsteered_want[3], "the push must change the tokens"

    async with running_engine(loaded, **fast) as engine:
        serving = engine.model_info().serving
        assert serving.compiled if "compile" in fast else serving.cuda_graphs
        assert not engine.runtime.skip_idle_work and engine.runtime.defer_sampling  # full step, sampled after
        engine.put_direction(random_direction("d", loaded))
        engine.runtime.active = False  # hooks off first: steered requests run as if unsteered
        off = await _run(engine, mixed[:4])
        assert off[1] == unsteered_want[1] and off[3] == unsteered_want[3]
        engine.runtime.active = True
        on = await _run(engine, mixed)
    assert on == want


async def test_model_info_reports_the_cache_and_batching_it_got() -> None:
    async with running_engine(kv_cache_tokens=2048, page_size=16, max_requests_per_batch=8) as engine:
        s = engine.model_info().serving
        assert (s.page_size, s.max_requests_per_batch, s.max_batch_tokens) == (16, 8, 64)
        assert 2048 <= s.kv_cache_tokens == s.num_blocks * 16 < 2048 + 1024  # rounded up to whole sectors
        assert s.attn_implementation == choose_attn_implementation(engine.model.device) and not s.compiled
        if DEVICE == "cpu":
            assert s.attn_implementation == "sdpa" and not s.cuda_graphs


async def test_the_default_kv_cache_fits_the_cpu() -> None:
    """On the CPU the cache holds CPU_KV_TOKENS_PER_REQUEST for each request of a full batch (8192 tokens with the
    defaults; it was up to 65k), and never less than one request of the longest admitted length."""
    if DEVICE != "cpu":
        return
    want = EngineConfig().max_requests_per_batch * CPU_KV_TOKENS_PER_REQUEST
    assert want == 8192
    async with running_engine() as engine:
        assert want <= engine.model_info().serving.kv_cache_tokens < want + 1024
    longest = TEST_LIMITS.max_prompt_tokens + TEST_LIMITS.max_new_tokens
    async with running_engine(kv_cache_tokens=256) as engine:
        assert engine.max_context >= longest and engine.model_info().serving.kv_cache_tokens >= longest
