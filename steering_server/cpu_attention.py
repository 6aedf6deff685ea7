"""Per-request attention for continuous batching on the CPU (installed by cb_adapter).

Continuous batching runs the batch as one flat sequence: sdpa gets every request's queries and keys concatenated
and a block-diagonal causal mask, so each query is scored against every request's keys and most of the scores are
masked away. At decode, B queries against all B requests' keys is B times the work (a third of a 32-request step
here); in a step that prefills a 256-token chunk beside decoding requests, the chunk is scored against every
other request's cache too (as much work as the step's matmuls when a dozen requests hold a few hundred tokens).
On the CPU this routes those calls to attention per request:
- a decode-only step (one query per request, several requests) gathers each request's keys into a padded
  (B, kv_heads, longest, head_dim) batch and runs one sdpa call, as padded `generate` does;
- any other step runs one causal sdpa per request over its own keys (its cache, then its new tokens), decoding
  requests included: a decoder's attention then does not depend on which prompt shares its step (with padding
  it would, by float rounding), and these steps are dominated by their prefill chunks anyway.
Anything else (sliding windows, position biases, soft-capping, sinks, other devices, calls outside continuous
batching, which carry no `cu_seq_lens_q`/`cu_seq_lens_k`) goes to transformers' sdpa unchanged.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

__all__ = ["install_cpu_attention"]

_INSTALLED: dict[str, Any] = {}


def _rows(x: torch.Tensor) -> torch.Tensor:
    """(1, heads, tokens, d) -> (tokens, heads, d). The paged cache's read already is token-major rows transposed,
    so for keys and values this is a view of contiguous rows: gathering along its first dimension is a row copy
    (index_select along dim 1 of the transposed view is an element-wise slow path, 2 ms per layer at 32 requests)."""
    return x[0].transpose(0, 1)


def _decode_attention(
    module: torch.nn.Module,
    query: torch.Tensor,  # (1, heads, B, head_dim): one query per request
    key: torch.Tensor,  # (1, kv_heads, total_k, head_dim): the requests' keys, concatenated
    value: torch.Tensor,
    cu_seq_lens_k: torch.Tensor,  # (B + 1,) int32 offsets of each request's keys
    max_length_k: int,
    scaling: float | None,
) -> torch.Tensor:  # (1, B, heads, head_dim), as sdpa_attention_forward returns
    q, k_rows, v_rows = _rows(query), _rows(key), _rows(value)  # (B, heads, d), (total_k, kv_heads, d)
    b, kv_heads, dim = q.shape[0], k_rows.shape[1], k_rows.shape[2]
    if b * max_length_k == k_rows.shape[0]:
        # Every request has max_length_k keys (they sum to total_k): the padded batch is a view, and no mask.
        k = k_rows.reshape(b, max_length_k, kv_heads, dim).transpose(1, 2)  # (B, kv_heads, L, d)
        v = v_rows.reshape(b, max_length_k, kv_heads, dim).transpose(1, 2)
        mask = None
    else:
        starts = cu_seq_lens_k[:b].long()  # (B,)
        lengths = cu_seq_lens_k[1 : b + 1].long() - starts
        j = torch.arange(max_length_k, device=q.device)  # (L,)
        valid = j[None, :] < lengths[:, None]  # (B, L)
        index = torch.where(valid, starts[:, None] + j[None, :], 0).reshape(-1)  # (B * L,)
        k = k_rows.index_select(0, index).view(b, max_length_k, kv_heads, dim).transpose(1, 2)
        v = v_rows.index_select(0, index).view(b, max_length_k, kv_heads, dim).transpose(1, 2)
        mask = valid[:, None, None, :]  # (B, 1, 1, L)
    out = torch.nn.functional.scaled_dot_product_attention(
        q.unsqueeze(2), k, v, attn_mask=mask, scale=scaling, enable_gqa=q.shape[1] != kv_heads
    )  # (B, heads, 1, d)
    return out.transpose(1, 2).reshape(1, b, out.shape[1], dim)


def _varlen_attention(
    module: torch.nn.Module,
    query: torch.Tensor,  # (1, heads, total_q, head_dim): each request's new tokens, concatenated
    key: torch.Tensor,  # (1, kv_heads, total_k, head_dim): each request's cache and new tokens, concatenated
    value: torch.Tensor,
    cu_seq_lens_q: torch.Tensor,  # (n + 1,) int32 offsets of each request's queries
    cu_seq_lens_k: torch.Tensor,  # (n + 1,) int32 offsets of each request's keys
    scaling: float | None,
) -> torch.Tensor:  # (1, total_q, heads, head_dim)
    """Any step but decode-only: each request's queries against its own keys, causally. A request's new tokens are
    the last of its keys, so query j of q new tokens over k keys sees keys 0 .. k - q + j."""
    cq, ck = cu_seq_lens_q.tolist(), cu_seq_lens_k.tolist()  # host tensors on the CPU: no device sync
    q_rows, k_rows, v_rows = _rows(query), _rows(key), _rows(value)
    heads, kv_heads = q_rows.shape[1], k_rows.shape[1]
    out = q_rows.new_zeros(q_rows.shape)  # (total_q, heads, d): rows past the last request (padding) stay zero
    for i in range(len(cq) - 1):
        n_q, n_k = cq[i + 1] - cq[i], ck[i + 1] - ck[i]
        if n_q < 1:
            continue
        q = q_rows[cq[i] : cq[i + 1]].transpose(0, 1).unsqueeze(0)  # (1, heads, n_q, d)
        k = k_rows[ck[i] : ck[i + 1]].transpose(0, 1).unsqueeze(0)  # (1, kv_heads, n_k, d)
        v = v_rows[ck[i] : ck[i + 1]].transpose(0, 1).unsqueeze(0)
        # sdpa's is_causal aligns the triangle top-left: right only for a fresh prompt (n_q == n_k); a chunk after
        # cached tokens needs it bottom-right, and a single query sees every key.
        mask = None
        if 1 < n_q < n_k:
            mask = torch.arange(n_k)[None, :] <= torch.arange(n_q)[:, None] + (n_k - n_q)  # (n_q, n_k)
        o = torch.nn.functional.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=n_q == n_k > 1, scale=scaling, enable_gqa=heads != kv_heads
        )  # (1, heads, n_q, d)
        out[cq[i] : cq[i + 1]] = o[0].transpose(0, 1)
    return out.unsqueeze(0)


def _per_request_applies(module: torch.nn.Module, query: torch.Tensor, kwargs: dict[str, Any]) -> bool:
    return (
        isinstance(kwargs.get("cu_seq_lens_k"), torch.Tensor)
        and isinstance(kwargs.get("cu_seq_lens_q"), torch.Tensor)
        and query.device.type == "cpu"
        and query.shape[0] == 1
        and getattr(module, "sliding_window", None) is None
        and kwargs.get("position_bias") is None
        and kwargs.get("softcap") is None
        and kwargs.get("s_aux") is None
        and not kwargs.get("dropout")
    )


def install_cpu_attention() -> None:
    """Route continuous batching's sdpa calls on the CPU through per-request attention (idempotent)."""
    if "sdpa" in _INSTALLED:
        return
    original = ALL_ATTENTION_FUNCTIONS["sdpa"]

    def sdpa(
        module: torch.nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, None]:
        if not _per_request_applies(module, query, kwargs):
            return original(module, query, key, value, attention_mask, **kwargs)  # type: ignore[no-any-return]
        cu_q, cu_k = kwargs["cu_seq_lens_q"], kwargs["cu_seq_lens_k"]
        scaling = kwargs.get("scaling")
        if kwargs.get("max_length_q") == 1 and cu_q.shape[0] - 1 == query.shape[2] > 1:
            # Decode only, one query per request (several), no padding rows: the common step, one sdpa call.
            return _decode_attention(module, query, key, value, cu_k, int(kwargs["max_length_k"]), scaling), None
        return _varlen_attention(module, query, key, value, cu_q, cu_k, scaling), None

    _INSTALLED["sdpa"] = original
    ALL_ATTENTION_FUNCTIONS["sdpa"] = sdpa
