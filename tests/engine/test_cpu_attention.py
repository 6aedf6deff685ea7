"""Per-request attention on the CPU equals continuous batching's block-diagonal sdpa, for decode-only batches and
for batches that prefill beside decoding requests, and the engine uses it for both."""

from __future__ import annotations

import asyncio

import pytest
import torch
from transformers.generation.continuous_batching.cache import PagedAttentionCache
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from steering_server import cb_adapter, cpu_attention
from steering_server.types import GenerationRequest, MonitorOptions, Prompt, SamplingParams, SteeringMode, SteeringTerm

from .conftest import DEVICE, loaded_model, random_direction, running_engine


@pytest.mark.parametrize(
    "lengths",
    [[5, 1, 9, 3], [4, 4, 4], [37], [700, 3, 650, 20, 310, 5]],
    ids=["ragged", "equal lengths (no mask)", "a lone request", "groups of similar length (one call each)"],
)
@pytest.mark.parametrize(
    "layout", ["contiguous", "token-major", "paged"],
    ids=["contiguous", "the flat read's layout", "read from the paged cache"],
)
def test_decode_attention_equals_the_masked_flat_sdpa(lengths: list[int], layout: str) -> None:
    g = torch.Generator().manual_seed(0)
    heads, kv_heads, dim = 8, 2, 16
    b, total = len(lengths), sum(lengths)
    q = torch.randn(1, heads, b, dim, generator=g)
    k = torch.randn(1, kv_heads, total, dim, generator=g)
    v = torch.randn(1, kv_heads, total, dim, generator=g)
    if layout == "token-major":  # what the paged cache's read returns: (total, kv_heads, d) rows, transposed
        k, v = (x[0].transpose(0, 1).contiguous().transpose(0, 1).unsqueeze(0) for x in (k, v))
    paged = None
    if layout == "paged":  # the keys scattered over a larger cache; the attention gets only the new ones as `key`
        read_index = torch.randperm(total + 40, generator=g)[:total]  # (total,) the cache row of each flat key
        caches = [torch.randn(total + 40, kv_heads, dim, generator=g) for _ in range(2)]
        for cache, x in zip(caches, (k, v), strict=True):
            cache[read_index] = x[0].transpose(0, 1)
        paged = (caches[0], caches[1], read_index)
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    new_k, new_v = (k[:, :, cu[1:] - 1], v[:, :, cu[1:] - 1]) if paged else (k, v)
    got = cpu_attention._decode_attention(torch.nn.Identity(), q, new_k, new_v, cu, 0.25, paged)  # (1, B, heads, d)
    mask = torch.zeros(b, total, dtype=torch.bool)  # query i sees request i's keys only
    for i in range(b):
        mask[i, cu[i] : cu[i + 1]] = True
    rep = heads // kv_heads
    want = torch.nn.functional.scaled_dot_product_attention(
        q, k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1), attn_mask=mask, scale=0.25
    ).transpose(1, 2)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


@pytest.mark.parametrize("n_requests", [1, 2], ids=["a lone request", "two requests"])
async def test_the_engine_takes_the_per_request_path_at_decode(
    monkeypatch: pytest.MonkeyPatch, n_requests: int
) -> None:
    if DEVICE != "cpu":
        pytest.skip("CPU-only path")
    calls = {"n": 0}
    original = cpu_attention._decode_attention

    def counting(*args: object) -> torch.Tensor:
        calls["n"] += 1
        return original(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(cpu_attention, "_decode_attention", counting)
    async with running_engine(loaded_model()) as engine:
        calls["n"] = 0
        reqs = [
            GenerationRequest(
                Prompt(token_ids=(5, 6, 7, 8 + i)),
                SamplingParams(max_new_tokens=6),
                monitor=MonitorOptions(enabled=False),
            )
            for i in range(n_requests)
        ]
        await asyncio.gather(*(engine.generate(r) for r in reqs))
    assert calls["n"] >= 4 * engine.num_layers  # the decode steps (shared ones, with two), at every layer


def test_only_models_whose_every_layer_attends_per_request_go_without_the_mask() -> None:
    """The engine's llama serves without transformers' mask (nothing reads it); a sliding window or soft-capping
    keeps it, and a call that would need it after all is refused, never served unmasked."""
    from transformers import AutoConfig

    from steering_server.tiny_models import tiny_config

    assert cpu_attention.mask_free(tiny_config("llama")) and cpu_attention.mask_free(tiny_config("qwen2"))
    assert not cpu_attention.mask_free(tiny_config("mistral"))  # its window arrives as an argument at each call
    assert not cpu_attention.mask_free(AutoConfig.for_model("gemma2"))  # soft-capping and sliding layers
    cpu_attention.install_cpu_attention()
    q = torch.zeros(1, 4, 3, 8)
    cu = torch.tensor([0, 3], dtype=torch.int32)
    with pytest.raises(RuntimeError, match="mask was turned off"):
        ALL_ATTENTION_FUNCTIONS["sdpa"](torch.nn.Identity(), q, q, q, None, cu_seq_lens_q=cu, cu_seq_lens_k=cu,
                                        sliding_window=2)


async def test_the_engine_builds_no_mask_for_a_model_that_never_reads_it() -> None:
    if DEVICE != "cpu":
        pytest.skip("CPU-only path")
    async with running_engine(loaded_model()) as engine:
        processor = engine.manager.batch_processor
        assert processor is not None and processor.inputs_and_outputs.attention_mask is None
        out = await engine.generate(GenerationRequest(Prompt(token_ids=(5, 6, 7)), SamplingParams(max_new_tokens=4)))
    assert out.token_ids  # served
    async with running_engine(loaded_model("mistral")) as engine:
        processor = engine.manager.batch_processor
        assert processor is not None and processor.inputs_and_outputs.attention_mask is not None


def test_only_the_thread_creating_a_mask_free_engine_skips_the_mask() -> None:
    """The mask is skipped at allocation (its buffer would be filled with NaN under deterministic algorithms), by an
    answer scoped to the creating thread: an engine for a model that needs the mask, created meanwhile on another
    thread, still gets it."""
    import threading

    from transformers.generation.continuous_batching import input_outputs

    from steering_server import cb_adapter
    from steering_server.tiny_models import tiny_config

    config = tiny_config("mistral")
    config._attn_implementation = "sdpa"
    seen: dict[str, bool] = {}

    def creating() -> None:
        cb_adapter._creating_mask_free.on = True
        try:
            seen["creating thread"] = input_outputs.attn_mask_is_needed(config)
            other = threading.Thread(target=lambda: seen.update(other=input_outputs.attn_mask_is_needed(config)))
            other.start()
            other.join()
        finally:
            cb_adapter._creating_mask_free.on = False

    thread = threading.Thread(target=creating)
    thread.start()
    thread.join()
    assert seen == {"creating thread": False, "other": True}
    assert input_outputs.attn_mask_is_needed(config)


def _block_causal_mask(q_lens: list[int], k_lens: list[int]) -> torch.Tensor:
    """Continuous batching's mask: request i's queries see its own keys, the new tokens being the last of them."""
    mask = torch.zeros(sum(q_lens), sum(k_lens), dtype=torch.bool)
    q0 = k0 = 0
    for nq, nk in zip(q_lens, k_lens, strict=True):
        for j in range(nq):
            mask[q0 + j, k0 : k0 + nk - nq + j + 1] = True
        q0, k0 = q0 + nq, k0 + nk
    return mask


@pytest.mark.parametrize(
    ("q_lens", "k_lens"),
    [([1, 7, 1, 5], [9, 7, 4, 12]), ([6, 3], [6, 3]), ([1, 0, 4], [6, 3, 10]), ([1, 1, 6, 1], [5, 9, 6, 3]),
     ([3, 1, 40, 2, 5, 4], [3, 8, 40, 10, 5, 4])],
    ids=["decoders beside a fresh prompt and a chunk after its cache", "fresh prompts only", "a request with no query",
         "three decoders of different lengths around a prompt",
         "short prefills in one padded call, a long one alone"],
)
@pytest.mark.parametrize("paged", [False, True], ids=["the flat read", "read from the paged cache"])
def test_varlen_attention_equals_the_block_causal_flat_sdpa(q_lens: list[int], k_lens: list[int], paged: bool) -> None:
    g = torch.Generator().manual_seed(1)
    heads, kv_heads, dim = 4, 2, 8
    q = torch.randn(1, heads, sum(q_lens), dim, generator=g)
    # the paged cache's layout: (total, kv_heads, d) rows, transposed
    k, v = (torch.randn(sum(k_lens), kv_heads, dim, generator=g).transpose(0, 1).unsqueeze(0) for _ in range(2))
    cu_q, cu_k = (torch.tensor([0, *torch.tensor(x).cumsum(0).tolist()], dtype=torch.int32) for x in (q_lens, k_lens))
    args: tuple = ()
    if paged:  # the keys scattered over a larger cache, each flat key at its read_index row
        total = sum(k_lens)
        read_index = torch.randperm(total + 30, generator=g)[:total]
        caches = [torch.randn(total + 30, kv_heads, dim, generator=g) for _ in range(2)]
        for cache, x in zip(caches, (k, v), strict=True):
            cache[read_index] = x[0].transpose(0, 1)
        args = ((caches[0], caches[1], read_index),)
    # With the cache given, every key must come from it: the key and value arguments (the new tokens) read NaN here.
    kv = (torch.full_like(k, torch.nan), torch.full_like(v, torch.nan)) if paged else (k, v)
    got = cpu_attention._varlen_attention(torch.nn.Identity(), q, *kv, cu_q, cu_k, 0.3, *args)  # (1, total_q, heads, d)
    rep = heads // kv_heads
    mask = _block_causal_mask(q_lens, k_lens)
    want = torch.nn.functional.scaled_dot_product_attention(
        q, k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1), attn_mask=mask, scale=0.3
    ).transpose(1, 2)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_one_step_works_out_its_plan_once_for_every_layer(monkeypatch: pytest.MonkeyPatch) -> None:
    """Inside a step the layers share the groups and gathers of the first (the same numbers as without the cache);
    outside a step, and in the next one, nothing stale is reused."""
    g = torch.Generator().manual_seed(2)
    q = torch.randn(1, 4, 3, 8, generator=g)
    k, v = (torch.randn(1, 2, 20, 8, generator=g) for _ in range(2))
    cu_q, cu_k = torch.tensor([0, 1, 2, 3], dtype=torch.int32), torch.tensor([0, 5, 14, 20], dtype=torch.int32)
    built = []
    original = cpu_attention._varlen_plan
    monkeypatch.setattr(cpu_attention, "_varlen_plan", lambda *a: built.append(1) or original(*a))
    want = cpu_attention._varlen_attention(torch.nn.Identity(), q, k, v, cu_q, cu_k, 0.3)
    with cpu_attention.step_plans():
        layers = [cpu_attention._varlen_attention(torch.nn.Identity(), q, k, v, cu_q, cu_k, 0.3) for _ in range(4)]
    assert len(built) == 2  # once outside a step, once for the four layers of the step
    assert all(torch.equal(x, want) for x in layers)
    cu_k[1] = 6  # the next step: other lengths in the same tensor (transformers refills its buffers in place)
    with cpu_attention.step_plans():
        again = cpu_attention._varlen_attention(torch.nn.Identity(), q, k, v, cu_q, cu_k, 0.3)
    assert len(built) == 3 and not torch.equal(again, want)


def test_decode_reads_only_the_keys_of_real_requests_when_the_flat_keys_are_padded() -> None:
    """Compiled forwards pad their inputs: the flat keys then run past the last request's, and equal lengths must not
    be mistaken for a padding-free batch (the stock cache's read, no paged rows)."""
    g = torch.Generator().manual_seed(3)
    q = torch.randn(1, 4, 2, 8, generator=g)
    k, v = (torch.randn(1, 2, 16, 8, generator=g) for _ in range(2))  # 2 requests x 6 keys, then 4 padding keys
    cu = torch.tensor([0, 6, 12], dtype=torch.int32)
    got = cpu_attention._decode_attention(torch.nn.Identity(), q, k, v, cu, 0.3)  # (1, 2, heads, d)
    want = cpu_attention._decode_attention(torch.nn.Identity(), q, k[:, :, :12], v[:, :, :12], cu, 0.3)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_decoders_share_a_padded_call_only_with_requests_of_similar_length() -> None:
    pad = cpu_attention._DECODE_PAD_ROWS
    lengths = [10, 2000, 12, 2000 - pad, 2000 - 2 * pad, 9, 2000 - pad - 1]
    groups = cpu_attention._decode_groups(lengths)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))  # every request, once
    assert groups == [[1, 3], [6, 4], [2, 0, 5]]  # longest first; a group spans at most `pad` padding rows
    assert cpu_attention._decode_groups([5, 5, 5]) == [[0, 1, 2]]


def test_prefills_share_a_padded_call_only_within_twice_their_own_work() -> None:
    sizes = [(0, 3, 3), (2, 40, 40), (3, 2, 10), (4, 5, 5), (5, 4, 4)]  # (request, queries, keys)
    groups = cpu_attention._prefill_groups(sizes)
    assert sorted(m for g in groups for m in g) == sorted(sizes)  # every request, once
    long = next({m[0] for m in g} for g in groups if any(m[0] == 2 for m in g))
    assert not long & {0, 4, 5}  # the 40-token prompt would pad the short prompts eight-fold: not with them
    assert any({0, 4, 5} <= {m[0] for m in g} for g in groups)  # the short ones share one call
    for g in groups:
        padded = len(g) * max(m[1] for m in g) * max(m[2] for m in g)
        assert padded <= 2 * sum(m[1] * m[2] for m in g)


def test_a_sliding_window_passed_as_an_argument_goes_to_transformers_sdpa() -> None:
    """Mistral-style attention passes its window as a keyword, not as a module attribute: per-request attention
    would attend past it, so such calls keep transformers' masked sdpa."""
    q = torch.zeros(1, 4, 3, 8)
    cu = torch.tensor([0, 3], dtype=torch.int32)
    kwargs = {"cu_seq_lens_q": cu, "cu_seq_lens_k": cu}
    assert cpu_attention._per_request_applies(torch.nn.Identity(), q, kwargs)
    assert not cpu_attention._per_request_applies(torch.nn.Identity(), q, {**kwargs, "sliding_window": 2})


async def test_the_engine_prefilling_beside_decoders_matches_transformers_sdpa(monkeypatch: pytest.MonkeyPatch) -> None:
    """On the engine's own calls (its mask, its paged cache), the per-request path gives what transformers' sdpa gives
    on the flat read of the same keys: in steps that prefill a chunk after cached tokens while another request
    decodes, and in decode-only steps that read their keys from the cache in groups of similar length. (That the
    cache hands over the right keys is the next test's.)"""
    if DEVICE != "cpu":
        pytest.skip("CPU-only path")
    cpu_attention.install_cpu_attention()
    monkeypatch.setattr(cpu_attention, "_DECODE_PAD_ROWS", 0)  # decoders of different lengths: a call each
    installed, original = ALL_ATTENTION_FUNCTIONS["sdpa"], cpu_attention._INSTALLED["sdpa"]
    seen: list[tuple[list[int], list[int], bool, float]] = []  # (query lengths, key lengths, read from the cache,
    # max |difference|) per call

    def checking(
        module: torch.nn.Module, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: object, **kw: object
    ) -> tuple[torch.Tensor, None]:
        got = installed(module, q, k, v, mask, **kw)
        if isinstance(kw.get("cu_seq_lens_q"), torch.Tensor):
            paged = kw.pop(cpu_attention.PAGED_KV, None)  # the engine's cache left the read to the attention
            if paged is not None:
                k, v = cpu_attention._read_back(paged)  # type: ignore[arg-type]  # the flat sequence of those keys
            cq, ck = (x.diff().tolist() for x in (kw["cu_seq_lens_q"], kw["cu_seq_lens_k"]))  # type: ignore[union-attr]
            assert mask is None  # the engine builds no mask for this model: the reference gets the one it would
            want = original(module, q, k, v, _block_causal_mask(cq, ck)[None, None], **kw)[0]
            seen.append((cq, ck, paged is not None, float((got[0] - want).abs().max())))
        return got

    monkeypatch.setitem(ALL_ATTENTION_FUNCTIONS, "sdpa", checking)
    async with running_engine(loaded_model(), max_batch_tokens=24) as engine:
        short = GenerationRequest(
            Prompt(token_ids=(5, 6, 7)), SamplingParams(max_new_tokens=30), monitor=MonitorOptions(enabled=False)
        )
        long = GenerationRequest(
            Prompt(token_ids=tuple(range(10, 70))),
            SamplingParams(max_new_tokens=4),
            monitor=MonitorOptions(enabled=False),
        )
        first = asyncio.ensure_future(engine.generate(short))
        await asyncio.sleep(0.05)  # the short request is decoding when the 60-token prompt arrives in 24-token chunks
        await asyncio.gather(first, engine.generate(long))
    mixed = [(cq, ck) for cq, ck, *_ in seen if 1 in cq and any(k > q > 1 for q, k in zip(cq, ck, strict=True))]
    assert len(mixed) >= engine.num_layers, seen  # a decoder beside a chunk after its cache, at every layer
    decode = [(ck, paged) for cq, ck, paged, _ in seen if len(cq) > 1 and set(cq) == {1} and len(set(ck)) > 1]
    assert len(decode) >= engine.num_layers, seen  # both decoding, different lengths: two groups, at every layer
    assert all(paged for _, paged in decode)  # read straight from the cache
    assert max(d for *_, d in seen) < 1e-5


async def test_concurrent_requests_get_the_same_tokens_and_scores_as_on_the_stock_cache(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The read-in cache hands the attention the right keys: steered, monitored requests of different lengths decoding
    together (in separate length groups) get the tokens and scores they get when transformers' cache reads them."""
    if DEVICE != "cpu":
        pytest.skip("CPU-only path")
    monkeypatch.setattr(cpu_attention, "_DECODE_PAD_ROWS", 0)  # one group per length: the grouped path runs
    loaded = loaded_model()
    direction = random_direction("d", loaded, monitor_layer=1, scale=0.5)
    prompts = [tuple(range(5, 5 + n)) for n in (3, 41, 90, 7)]

    async def run() -> list[tuple[tuple[int, ...], tuple[float, ...]]]:
        async with running_engine(loaded) as engine:
            engine.put_direction(direction)
            reqs = [
                GenerationRequest(
                    Prompt(token_ids=p), SamplingParams(max_new_tokens=12),
                    (SteeringTerm("d", SteeringMode.ADD, 1.0),), MonitorOptions(token_scores=True),
                )
                for p in prompts
            ]
            outs = await asyncio.gather(*(engine.generate(r) for r in reqs))
        return [(o.token_ids, o.monitor[0].token_scores) for o in outs]

    calls = {"paged decode": 0}
    original = cpu_attention._decode_attention

    def counting(*args: object) -> torch.Tensor:
        calls["paged decode"] += args[-1] is not None  # the cache left the read to the attention
        return original(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(cpu_attention, "_decode_attention", counting)
    read_in = await run()
    assert calls["paged decode"] >= 8 * loaded.num_layers
    monkeypatch.setattr(cb_adapter, "ReadInAttentionCache", PagedAttentionCache)  # the swap becomes a no-op
    calls["paged decode"] = 0
    stock = await run()
    assert calls["paged decode"] == 0
    for (tokens, scores), (want_tokens, want_scores) in zip(read_in, stock, strict=True):
        assert tokens == want_tokens
        assert list(scores) == pytest.approx(list(want_scores), rel=1e-5, abs=1e-5)


def test_a_model_that_changes_keys_after_the_cache_update_is_refused_not_served_wrong() -> None:
    """The read-in path reads the cache, so the attention must get exactly the new tokens the update returned; a model
    that transforms them in between (differential attention splits V) gets an error, never wrong keys."""
    cpu_attention.install_cpu_attention()
    q, k = torch.zeros(1, 4, 2, 8), torch.zeros(1, 2, 2, 8)
    cache = torch.zeros(10, 2, 8)
    paged = (cache, cache, torch.arange(6), k, k)
    cu = torch.tensor([0, 1, 2], dtype=torch.int32)
    kwargs = {"cu_seq_lens_q": cu, "cu_seq_lens_k": torch.tensor([0, 3, 6], dtype=torch.int32), "max_length_q": 1,
              cpu_attention.PAGED_KV: paged}
    assert ALL_ATTENTION_FUNCTIONS["sdpa"](torch.nn.Identity(), q, k, k, None, **kwargs)[0].shape == (1, 2, 4, 8)
    with pytest.raises(RuntimeError, match="changes its keys or values"):
        ALL_ATTENTION_FUNCTIONS["sdpa"](torch.nn.Identity(), q, k, k.clone(), None, **kwargs)
