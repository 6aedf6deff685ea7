"""Per-request attention for continuous batching on the CPU (installed by cb_adapter).

Continuous batching runs the batch as one flat sequence: sdpa gets every request's queries and keys concatenated
and a block-diagonal causal mask, so each query is scored against every request's keys and most of the scores are
masked away. At decode, B queries against all B requests' keys is B times the work (a third of a 32-request step
here); in a step that prefills a 256-token chunk beside decoding requests, the chunk is scored against every
other request's cache too (as much work as the step's matmuls when a dozen requests hold a few hundred tokens).
On the CPU this routes those calls to attention per request:
- a decode-only step (one query per request) gathers each request's keys into a padded
  (B, kv_heads, longest, head_dim) batch and runs one sdpa call, as padded `generate` does;
- any other step runs the same padded call for its decoding requests, and causal attention over each prefilling
  request's own keys (its cache, then its new tokens): prefills of similar sizes share one padded call (a step that
  starts a hundred short prompts would otherwise make a hundred sdpa calls per layer), a prefill unlike the others
  has its own.
Anything else (sliding windows, position biases, soft-capping, sinks, other devices, calls outside continuous
batching, which carry no `cu_seq_lens_q`/`cu_seq_lens_k`) goes to transformers' sdpa unchanged.

Decoding requests are grouped by key length, so a 20-token request does not pad to a 600-token one (`_decode_groups`),
and they read their keys straight from the paged cache: transformers' cache update would first copy every request's
keys and values into one flat sequence (a full copy of the batch's KV at every layer, a tenth of a serving step),
which the padded gather then copies again. `ReadInAttentionCache` writes the new tokens and leaves the read to the
attention (`PAGED_KV`); a call that goes to transformers' sdpa after all reads the flat sequence first, as before.

For a model whose every layer takes the per-request path (`mask_free`: no sliding window, no soft-capping), the
block-diagonal mask transformers builds at every step is never read: cb_adapter turns it off, which saves its fill and
a few ops per request per step and its (max_batch_tokens, cache + max_batch_tokens) buffer (134 MB for the organism's
evaluation engines). A call that would still need it is refused rather than served unmasked.
"""

from __future__ import annotations

import itertools
from typing import Any

import torch
from transformers.generation.continuous_batching.cache import PagedAttentionCache
from transformers.generation.continuous_batching.cache_allocators import FullAttentionCacheAllocator
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

__all__ = ["PAGED_KV", "ReadInAttentionCache", "install_cpu_attention", "mask_free"]

_INSTALLED: dict[str, Any] = {}

# The attention kwarg by which ReadInAttentionCache leaves a layer's read to the attention: (k_cache, v_cache,
# read_index, new_k, new_v), the layer's (cache rows, kv_heads, d) keys and values, the (total_k,) int64 cache row of
# each key of the step (requests back to back as in cu_seq_lens_k), and the new tokens' key and value tensors the
# update returned (the attention checks it got those very tensors: a model that changes them in between cannot be
# served this way). A tuple of tensors, which a compiled forward can carry. Compiled forwards pad their inputs: a
# padded batch takes the decode path only when it is one real request without padding rows (transformers then sets
# max_length_q to the padded query count), and a padded read_index (longer than the keys) takes the masked gather.
PAGED_KV = "steering_paged_kv"
PagedKV = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]

# A decoding request joins a longer one's padded call while it adds at most this many padding key rows; past that, a
# call of its own is cheaper. Measured on the 2-core CPU (24 decoders of 8-640 keys, 4 KV heads of 64): one padded
# call 46 ms per layer, groups within 256 rows 29 ms, within 16-64 rows 8-13 ms, a call per request 11 ms.
_DECODE_PAD_ROWS = 32


class ReadInAttentionCache(PagedAttentionCache):
    """The paged cache, except that a full-attention layer's read is left to the per-request attention (`PAGED_KV`):
    the new tokens are written, and the attention gathers each request's keys from the cache itself."""

    @torch.compiler.disable  # as the stock update: it works on views of the cache tensor
    def update(
        self,
        key_states: torch.Tensor,  # (1, kv_heads, new tokens, d)
        value_states: torch.Tensor,
        layer_idx: int,
        kwargs: dict[str, Any],  # updated in place, as the stock update does
    ) -> tuple[torch.Tensor, torch.Tensor]:
        allocator = self.layer_to_allocator[layer_idx]
        reads = kwargs.get("read_index")
        if (
            kwargs.get("block_table") is not None
            or reads is None
            # exactly full attention: the sliding-window allocator subclasses it, and its read is a ring buffer's
            or type(allocator) is not FullAttentionCacheAllocator
            or reads[allocator.index].numel() == 0  # nothing cached to read: the stock update reads nothing either
        ):
            return super().update(key_states, value_states, layer_idx, kwargs)  # type: ignore[no-any-return]
        read_index = reads[allocator.index]
        kwargs["read_index"] = [r[:0] if i == allocator.index else r for i, r in enumerate(reads)]  # write only
        try:
            new = super().update(key_states, value_states, layer_idx, kwargs)
        finally:
            kwargs["read_index"] = reads
        k_cache, v_cache = allocator._kv_token_views[layer_idx]
        kwargs[PAGED_KV] = (k_cache, v_cache, read_index, *new)
        return new  # type: ignore[no-any-return]


def _read_back(paged: PagedKV) -> tuple[torch.Tensor, torch.Tensor]:
    """The flat sequence the stock update returns: (1, kv_heads, total_k, d) keys and values."""
    k_cache, v_cache, read_index = paged[:3]
    return tuple(  # type: ignore[return-value]
        x.index_select(0, read_index).transpose(0, 1).unsqueeze(0) for x in (k_cache, v_cache)
    )


def _rows(x: torch.Tensor) -> torch.Tensor:
    """(1, heads, tokens, d) -> (tokens, heads, d). The paged cache's read already is token-major rows transposed,
    so for keys and values this is a view of contiguous rows: gathering along its first dimension is a row copy
    (index_select along dim 1 of the transposed view is an element-wise slow path, 2 ms per layer at 32 requests)."""
    return x[0].transpose(0, 1)


def _single_queries(
    q: torch.Tensor,  # (B, heads, d): one query per request
    k_rows: torch.Tensor,  # (rows, kv_heads, d): keys, token-major (the flat sequence, or the paged cache)
    v_rows: torch.Tensor,
    starts: list[int],  # (B,) where each request's keys begin in the flat sequence
    lengths: list[int],  # (B,) how many keys each has
    scaling: float | None,
    read_index: torch.Tensor | None = None,  # (total_k,) int64: the row in k_rows of each flat key; None: identity
) -> torch.Tensor:  # (B, heads, d)
    """One sdpa call for B requests of one query each (the last of its keys is its own): each request's keys
    gathered into a padded (B, kv_heads, max_length, d) batch, as padded `generate` does."""
    b, kv_heads, dim = q.shape[0], k_rows.shape[1], k_rows.shape[2]
    max_length = max(lengths)
    flat = read_index.shape[0] if read_index is not None else k_rows.shape[0]  # keys in the flat sequence
    if flat == b * max_length and lengths == [max_length] * b and starts == list(range(0, flat, max_length)):
        # Every request has max_length keys, back to back (always so for a lone request): the flat sequence is the
        # padded batch, without a mask. Decided on the host lists: no tensor op, no sync.
        if read_index is None:
            k, v = k_rows, v_rows  # a view
        else:
            k, v = k_rows.index_select(0, read_index), v_rows.index_select(0, read_index)  # one row copy each
        k = k.view(b, max_length, kv_heads, dim).transpose(1, 2)  # (B, kv_heads, L, d)
        v = v.view(b, max_length, kv_heads, dim).transpose(1, 2)
        mask = None
    else:
        j = torch.arange(max_length, device=q.device)  # (L,)
        length = torch.tensor(lengths, device=q.device)  # (B,)
        valid = j[None, :] < length[:, None]  # (B, L)
        index = torch.where(valid, torch.tensor(starts, device=q.device)[:, None] + j[None, :], 0).reshape(-1)
        if read_index is not None:
            index = read_index[index]  # (B * L,) its row in the cache
        k = k_rows.index_select(0, index).view(b, max_length, kv_heads, dim).transpose(1, 2)
        v = v_rows.index_select(0, index).view(b, max_length, kv_heads, dim).transpose(1, 2)
        mask = valid[:, None, None, :]  # (B, 1, 1, L)
    out = torch.nn.functional.scaled_dot_product_attention(
        q.unsqueeze(2), k, v, attn_mask=mask, scale=scaling, enable_gqa=q.shape[1] != kv_heads
    )  # (B, heads, 1, d)
    return out[:, :, 0]


def _decode_groups(lengths: list[int]) -> list[list[int]]:
    """Decoding requests (by index) grouped for one padded call each: longest first, a request joins the current
    group while it adds at most `_DECODE_PAD_ROWS` padding rows (the group's longest minus its own length)."""
    groups: list[list[int]] = []
    longest = 0
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        if groups and longest - lengths[i] <= _DECODE_PAD_ROWS:
            groups[-1].append(i)
        else:
            groups.append([i])
            longest = lengths[i]
    return groups


def _decoders(
    q: torch.Tensor,  # (D, heads, d): one query per decoding request
    k_rows: torch.Tensor,  # (rows, kv_heads, d)
    v_rows: torch.Tensor,
    starts: list[int],  # (D,) where each request's keys begin in the flat sequence
    lengths: list[int],  # (D,)
    scaling: float | None,
    read_index: torch.Tensor | None,  # as in _single_queries
) -> torch.Tensor:  # (D, heads, d)
    """The decoding requests in one padded call per group of similar key lengths (`_decode_groups`)."""
    groups = _decode_groups(lengths)
    if len(groups) == 1:
        return _single_queries(q, k_rows, v_rows, starts, lengths, scaling, read_index)
    out = q.new_empty(q.shape)
    for group in groups:
        members = torch.tensor(group)
        out[members] = _single_queries(
            q[members], k_rows, v_rows, [starts[i] for i in group], [lengths[i] for i in group], scaling, read_index
        )
    return out


def _decode_attention(
    module: torch.nn.Module,
    query: torch.Tensor,  # (1, heads, B, head_dim): one query per request
    key: torch.Tensor,  # (1, kv_heads, total_k, head_dim): the requests' keys, concatenated (or only the new ones)
    value: torch.Tensor,
    cu_seq_lens_k: torch.Tensor,  # (B + 1,) int32 offsets of each request's keys
    scaling: float | None,
    paged: PagedKV | None = None,  # where the keys are, when the cache left its read to the attention
) -> torch.Tensor:  # (1, B, heads, head_dim), as sdpa_attention_forward returns
    ck = cu_seq_lens_k.tolist()  # a host tensor on the CPU: no device sync
    starts, lengths = ck[:-1], [b - a for a, b in itertools.pairwise(ck)]
    if paged is None:
        return _decoders(_rows(query), _rows(key), _rows(value), starts, lengths, scaling, None).unsqueeze(0)
    k_cache, v_cache, read_index = paged[:3]
    return _decoders(_rows(query), k_cache, v_cache, starts, lengths, scaling, read_index).unsqueeze(0)


def _prefill_groups(sizes: list[tuple[int, int, int]]) -> list[list[tuple[int, int, int]]]:
    """Prefilling requests (index, queries, keys) grouped for one padded call each: in order of key length, a
    request joins the current group while the group's padded work (members x most queries x most keys) stays within
    twice the members' own (the sum of queries x keys); otherwise it starts the next group."""
    groups: list[list[tuple[int, int, int]]] = []
    own = most_q = 0
    for item in sorted(sizes, key=lambda x: (x[2], x[1])):
        _, n_q, n_k = item
        if groups and (len(groups[-1]) + 1) * max(most_q, n_q) * n_k <= 2 * (own + n_q * n_k):
            groups[-1].append(item)
            own, most_q = own + n_q * n_k, max(most_q, n_q)
            continue
        groups.append([item])
        own, most_q = n_q * n_k, n_q
    return groups


def _padded_prefills(
    q_rows: torch.Tensor,  # (total_q, heads, d)
    k_rows: torch.Tensor,  # (total_k, kv_heads, d)
    v_rows: torch.Tensor,
    q_starts: torch.Tensor,  # (P,) int64 where each request's queries begin in the rows
    q_lens: torch.Tensor,  # (P,) int64
    k_starts: torch.Tensor,  # (P,) int64 where each request's keys begin
    k_lens: torch.Tensor,  # (P,) int64, each >= its q_len (the new tokens are the last keys)
    scaling: float | None,
) -> tuple[torch.Tensor, torch.Tensor]:  # (real queries, heads, d) and their (real queries,) rows in q_rows
    """Causal attention for P prefilling requests in one sdpa call: queries and keys gathered into padded
    (P, heads, most queries, d) and (P, kv_heads, most keys, d) batches. Query i of a request with q new tokens over
    k keys sees keys 0 .. k - q + i; padding rows see key 0 at least (never an empty row: no NaN), and are dropped."""
    p, heads, dim = q_starts.shape[0], q_rows.shape[1], q_rows.shape[2]
    kv_heads = k_rows.shape[1]
    lq, lk = int(q_lens.max()), int(k_lens.max())
    iq, ik = torch.arange(lq), torch.arange(lk)
    q_valid = iq[None, :] < q_lens[:, None]  # (P, Lq)
    k_valid = ik[None, :] < k_lens[:, None]  # (P, Lk)
    q_index = torch.where(q_valid, q_starts[:, None] + iq[None, :], 0)  # (P, Lq)
    k_index = torch.where(k_valid, k_starts[:, None] + ik[None, :], 0).reshape(-1)  # (P * Lk,)
    q = q_rows.index_select(0, q_index.reshape(-1)).view(p, lq, heads, dim).transpose(1, 2)  # (P, heads, Lq, d)
    k = k_rows.index_select(0, k_index).view(p, lk, kv_heads, dim).transpose(1, 2)  # (P, kv_heads, Lk, d)
    v = v_rows.index_select(0, k_index).view(p, lk, kv_heads, dim).transpose(1, 2)
    causal = ik[None, None, :] <= iq[None, :, None] + (k_lens - q_lens)[:, None, None]  # (P, Lq, Lk)
    mask = (causal & k_valid[:, None, :]).unsqueeze(1)  # (P, 1, Lq, Lk)
    out = torch.nn.functional.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, scale=scaling, enable_gqa=heads != kv_heads
    )  # (P, heads, Lq, d)
    return out.transpose(1, 2)[q_valid], q_index[q_valid]


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
    the last of its keys, so query j of q new tokens over k keys sees keys 0 .. k - q + j. The decoding requests
    of the step (one query each) share padded calls, as in a decode-only step; the prefilling ones share padded
    calls by size (`_prefill_groups`), and a request alone in its group has its own, unpadded."""
    cq, ck = cu_seq_lens_q.tolist(), cu_seq_lens_k.tolist()  # host tensors on the CPU: no device sync
    q_rows, k_rows, v_rows = _rows(query), _rows(key), _rows(value)
    heads, kv_heads = q_rows.shape[1], k_rows.shape[1]
    out = q_rows.new_zeros(q_rows.shape)  # (total_q, heads, d): rows past the last request (padding) stay zero
    n = len(cq) - 1
    decoders = [i for i in range(n) if cq[i + 1] - cq[i] == 1]
    if len(decoders) > 1:
        rows = torch.tensor([cq[i] for i in decoders])  # (D,) each decoder's query row
        lengths = [ck[i + 1] - ck[i] for i in decoders]
        out[rows] = _decoders(q_rows[rows], k_rows, v_rows, [ck[i] for i in decoders], lengths, scaling, None)
    batched = set(decoders) if len(decoders) > 1 else set()
    rest = [(i, cq[i + 1] - cq[i], ck[i + 1] - ck[i]) for i in range(n) if cq[i + 1] > cq[i] and i not in batched]
    for group in _prefill_groups(rest):
        if len(group) > 1:
            index = [m[0] for m in group]
            got, rows = _padded_prefills(
                q_rows, k_rows, v_rows, torch.tensor([cq[i] for i in index]), torch.tensor([m[1] for m in group]),
                torch.tensor([ck[i] for i in index]), torch.tensor([m[2] for m in group]), scaling,
            )
            out[rows] = got
            continue
        i, n_q, n_k = group[0]
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


def mask_free(config: Any) -> bool:
    """Whether every layer of a model with this config takes the per-request path, so continuous batching need not
    build its mask: no sliding window (Mistral-style models pass theirs as an argument, which only the config tells
    ahead) and no soft-capping. Unsure means no."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return (
        getattr(text, "sliding_window", None) is None
        and getattr(text, "attn_logit_softcapping", None) is None
        and all(t == "full_attention" for t in getattr(text, "layer_types", None) or ())
    )


def _per_request_applies(module: torch.nn.Module, query: torch.Tensor, kwargs: dict[str, Any]) -> bool:
    return (
        isinstance(kwargs.get("cu_seq_lens_k"), torch.Tensor)
        and isinstance(kwargs.get("cu_seq_lens_q"), torch.Tensor)
        and query.device.type == "cpu"
        and query.shape[0] == 1
        and getattr(module, "sliding_window", None) is None
        and kwargs.get("sliding_window") is None  # Mistral-style models pass their window as an argument
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
        paged: PagedKV | None = kwargs.pop(PAGED_KV, None)
        if paged is not None and (key is not paged[3] or value is not paged[4]):
            # e.g. differential attention splitting V: the cache holds what update got, not what attention gets
            raise RuntimeError(
                f"{type(module).__name__} changes its keys or values between the cache update and attention; the "
                "CPU read-in cache cannot serve it (cb_adapter: add the model type to the stock cache's list)"
            )
        if not _per_request_applies(module, query, kwargs):
            if attention_mask is None and isinstance(kwargs.get("cu_seq_lens_q"), torch.Tensor):
                raise RuntimeError(
                    f"{type(module).__name__} needs transformers' masked attention in continuous batching, but the "
                    "mask was turned off (cpu_attention.mask_free misjudged this model's config)"
                )
            if paged is not None:
                key, value = _read_back(paged)
            return original(module, query, key, value, attention_mask, **kwargs)  # type: ignore[no-any-return]
        cu_q, cu_k = kwargs["cu_seq_lens_q"], kwargs["cu_seq_lens_k"]
        scaling = kwargs.get("scaling")
        if kwargs.get("max_length_q") == 1 and cu_q.shape[0] - 1 == query.shape[2]:
            # Decode only, one query per request, no padding rows: the common step, read from the cache (a lone
            # request too: its keys are gathered once, where the flat read and a varlen call cost twice as much).
            return _decode_attention(module, query, key, value, cu_k, scaling, paged), None
        if paged is not None:
            key, value = _read_back(paged)
        return _varlen_attention(module, query, key, value, cu_q, cu_k, scaling), None

    _INSTALLED["sdpa"] = original
    ALL_ATTENTION_FUNCTIONS["sdpa"] = sdpa
