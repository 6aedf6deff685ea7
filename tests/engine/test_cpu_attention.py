"""Per-request decode attention on the CPU equals continuous batching's block-diagonal sdpa, and the engine uses
it for decode-only batches."""

from __future__ import annotations

import asyncio

import pytest
import torch

from steering_server import cpu_attention
from steering_server.types import GenerationRequest, MonitorOptions, Prompt, SamplingParams

from .conftest import DEVICE, loaded_model, running_engine


@pytest.mark.parametrize("lengths", [[5, 1, 9, 3], [4, 4, 4]], ids=["ragged", "equal lengths (a view, no mask)"])
@pytest.mark.parametrize("token_major", [False, True], ids=["contiguous", "the paged cache's layout"])
def test_decode_attention_equals_the_masked_flat_sdpa(lengths: list[int], token_major: bool) -> None:
    g = torch.Generator().manual_seed(0)
    heads, kv_heads, dim = 8, 2, 16
    b, total = len(lengths), sum(lengths)
    q = torch.randn(1, heads, b, dim, generator=g)
    k = torch.randn(1, kv_heads, total, dim, generator=g)
    v = torch.randn(1, kv_heads, total, dim, generator=g)
    if token_major:  # what the paged cache's read returns: (total, kv_heads, d) rows, transposed
        k, v = (x[0].transpose(0, 1).contiguous().transpose(0, 1).unsqueeze(0) for x in (k, v))
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    got = cpu_attention._decode_attention(torch.nn.Identity(), q, k, v, cu, max(lengths), 0.25)  # (1, B, heads, d)
    mask = torch.zeros(b, total, dtype=torch.bool)  # query i sees request i's keys only
    for i in range(b):
        mask[i, cu[i] : cu[i + 1]] = True
    rep = heads // kv_heads
    want = torch.nn.functional.scaled_dot_product_attention(
        q, k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1), attn_mask=mask, scale=0.25
    ).transpose(1, 2)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


async def test_the_engine_takes_the_per_request_path_at_decode(monkeypatch: pytest.MonkeyPatch) -> None:
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
            for i in range(2)
        ]
        await asyncio.gather(*(engine.generate(r) for r in reqs))
    assert calls["n"] >= 4 * engine.num_layers  # the decode steps both requests share, at every layer
