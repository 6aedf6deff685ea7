"""Per-request decode attention for continuous batching on the CPU (installed by cb_adapter).

Continuous batching runs the batch as one flat sequence: sdpa gets every request's keys concatenated and a
block-diagonal mask, so at decode each of B queries is scored against all B requests' keys (B times the work, a
third of a 32-request step on the CPU). When a batch is decode-only (one query per request, several requests),
this gathers each request's keys into a padded (B, kv_heads, longest, head_dim) batch and runs sdpa per request,
as padded `generate` does. Anything else (prefill chunks, sliding windows, position biases, other devices, calls outside
continuous batching, which carry no `cu_seq_lens_k`) goes to transformers' sdpa unchanged.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

__all__ = ["install_cpu_decode_attention"]

_INSTALLED: dict[str, Any] = {}


def _decode_attention(
    module: torch.nn.Module,
    query: torch.Tensor,  # (1, heads, B, head_dim): one query per request
    key: torch.Tensor,  # (1, kv_heads, total_k, head_dim): the requests' keys, concatenated
    value: torch.Tensor,
    cu_seq_lens_k: torch.Tensor,  # (B + 1,) int32 offsets of each request's keys
    max_length_k: int,
    scaling: float | None,
) -> torch.Tensor:
    b = query.shape[2]
    kv_heads, dim = key.shape[1], key.shape[3]
    # The paged cache hands back its token-major read (total_k, kv_heads, head_dim) transposed: gather along that
    # token dimension (a contiguous row copy; index_select along dim 1 of the transposed view is an element-wise
    # slow path, 2 ms per layer at 32 requests x 48 keys), then view it as (B, L, kv_heads, d).
    k_rows, v_rows = key[0].transpose(0, 1), value[0].transpose(0, 1)  # (total_k, kv_heads, d)
    if b * max_length_k == key.shape[2]:
        # Every request has max_length_k keys (they sum to total_k): the padded batch is a view, and no mask.
        k = k_rows.reshape(b, max_length_k, kv_heads, dim).transpose(1, 2)  # (B, kv_heads, L, d)
        v = v_rows.reshape(b, max_length_k, kv_heads, dim).transpose(1, 2)
        mask = None
    else:
        starts = cu_seq_lens_k[:b].long()  # (B,)
        lengths = cu_seq_lens_k[1 : b + 1].long() - starts
        j = torch.arange(max_length_k, device=query.device)  # (L,)
        valid = j[None, :] < lengths[:, None]  # (B, L)
        index = torch.where(valid, starts[:, None] + j[None, :], 0).reshape(-1)  # (B * L,)
        k = k_rows.index_select(0, index).view(b, max_length_k, kv_heads, dim).transpose(1, 2)
        v = v_rows.index_select(0, index).view(b, max_length_k, kv_heads, dim).transpose(1, 2)
        mask = valid[:, None, None, :]  # (B, 1, 1, L)
    q = query[0].transpose(0, 1).unsqueeze(2)  # (B, heads, 1, d)
    out = torch.nn.functional.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, scale=scaling, enable_gqa=q.shape[1] != kv_heads
    )  # (B, heads, 1, d)
    return out.transpose(1, 2).reshape(1, b, out.shape[1], dim)  # (1, B, heads, d), as sdpa_attention_forward


def install_cpu_decode_attention() -> None:
    """Route continuous batching's decode-only sdpa calls on the CPU through `_decode_attention` (idempotent)."""
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
        cu_k = kwargs.get("cu_seq_lens_k")
        cu_q = kwargs.get("cu_seq_lens_q")
        if (
            isinstance(cu_k, torch.Tensor)
            and isinstance(cu_q, torch.Tensor)
            and query.device.type == "cpu"
            and kwargs.get("max_length_q") == 1
            and query.shape[0] == 1
            and cu_q.shape[0] - 1 == query.shape[2] > 1  # one query per request (several), no padding sequences
            and getattr(module, "sliding_window", None) is None
            and kwargs.get("position_bias") is None
            and kwargs.get("softcap") is None
        ):
            out = _decode_attention(
                module, query, key, value, cu_k, int(kwargs["max_length_k"]), kwargs.get("scaling")
            )
            return out, None
        return original(module, query, key, value, attention_mask, **kwargs)  # type: ignore[no-any-return]

    _INSTALLED["sdpa"] = original
    ALL_ATTENTION_FUNCTIONS["sdpa"] = sdpa
