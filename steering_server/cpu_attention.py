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
and every call reads its keys straight from the paged cache: transformers' cache update would first copy every
request's keys and values into one flat sequence (a full copy of the batch's KV at every layer, a tenth of a serving
step), which the padded gathers then copy again. `ReadInAttentionCache` writes the new tokens and leaves the read to
the attention (`PAGED_KV`); a call that goes to transformers' sdpa after all reads the flat sequence first, as before.

The layers of one step attend over the same requests, lengths and cache rows, so the groups, gather indices and masks
are worked out at the first layer and reused by the rest (`step_plans`, entered by cb_adapter around each step's
forward; nothing is cached outside a step). With the cache reads of prefilling steps, that took the organism's
served sampling (3,200 answers, up to 128 short requests per step, 6 layers) from 22.5 s to 18.3 s, the same answers.

For a model whose every layer takes the per-request path (`mask_free`: no sliding window, no soft-capping), the
block-diagonal mask transformers builds at every step is never read: cb_adapter turns it off, which saves its fill and
a few ops per request per step and its (max_batch_tokens, cache + max_batch_tokens) buffer (134 MB for the organism's
evaluation engines). A call that would still need it is refused rather than served unmasked.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from transformers.generation.continuous_batching.cache import PagedAttentionCache
from transformers.generation.continuous_batching.cache_allocators import FullAttentionCacheAllocator
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

__all__ = ["PAGED_KV", "ReadInAttentionCache", "install_cpu_attention", "mask_free", "step_plans"]

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


# ---- step plans: what every layer of one forward step reads, worked out once -------------------------------------
# Every layer of a step attends over the same requests with the same lengths and cache rows, so the groups, the
# gather indices and the masks (a dozen small tensor ops and a Python pass over the requests) are built at the first
# layer and reused by the others (`step_plans`, entered by cb_adapter around each step's forward). Outside a step
# nothing is cached.
_STEP = threading.local()
_P = TypeVar("_P")


@contextlib.contextmanager
def step_plans() -> Iterator[None]:
    """Cache the attention plans of one forward step (its layers share them) on this thread, for its duration."""
    _STEP.plans = {}
    try:
        yield
    finally:
        _STEP.plans = None


@torch.compiler.disable  # host bookkeeping: a compiled forward must not guard on these ids (a graph break anyway)
def _planned(key: tuple[torch.Tensor | None, ...], flat: int, make: Callable[[], _P]) -> _P:
    """The plan for this step's call with these length and index tensors over `flat` keys: built once per step.
    Keyed by the tensors' identity, which is safe only within one step (the entry holds them, so no other tensor takes
    their id)."""
    plans: dict[tuple[int, ...], tuple[Any, tuple[torch.Tensor | None, ...]]] | None = getattr(_STEP, "plans", None)
    if plans is None:
        return make()
    ids = (*(id(t) for t in key), flat)
    hit = plans.get(ids)
    if hit is None:
        hit = plans[ids] = (make(), key)
    return hit[0]  # type: ignore[no-any-return]


@dataclass(frozen=True)
class _Gather:
    """The keys of one padded sdpa call: rows of a key source ((rows, kv_heads, d): the flat sequence, or the paged
    cache) gathered into a (b, kv_heads, length, d) batch."""

    b: int
    length: int
    index: torch.Tensor | None  # (b * length,) source row of each key slot; None: the source is that batch already
    mask: torch.Tensor | None  # (b, 1, 1, length) bool, False on padding; None: no padding

    def keys(self, k_src: torch.Tensor, v_src: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        kv_heads, dim = k_src.shape[1], k_src.shape[2]
        return tuple(  # type: ignore[return-value]
            (x if self.index is None else x.index_select(0, self.index))  # one row copy, none for the source
            .view(self.b, self.length, kv_heads, dim)
            .transpose(1, 2)
            for x in (k_src, v_src)
        )


def _flat_keys(key: torch.Tensor, read_index: torch.Tensor | None) -> int:
    """How many keys the flat sequence has: the key tensor's (1, kv_heads, total_k, d) rows, or the cache rows read
    (either may be padded past the last request's keys: compiled forwards pad their inputs)."""
    return key.shape[2] if read_index is None else read_index.shape[0]


def _gather(starts: list[int], lengths: list[int], flat: int, read_index: torch.Tensor | None) -> _Gather:
    """The padded keys of requests whose keys start at `starts` in a flat sequence of `flat` keys, one request per
    row of the batch; `read_index` ((flat,) int64): the cache row of each flat key (None: read the flat sequence)."""
    b, max_length = len(lengths), max(lengths)
    if flat == b * max_length and lengths == [max_length] * b and starts == list(range(0, flat, max_length)):
        # Every request has max_length keys, back to back (always so for a lone request): the flat sequence is the
        # padded batch, without a mask. Decided on the host lists: no tensor op, no sync.
        return _Gather(b, max_length, read_index, None)
    j = torch.arange(max_length)  # (L,)
    valid = j[None, :] < torch.tensor(lengths)[:, None]  # (B, L)
    index = torch.where(valid, torch.tensor(starts)[:, None] + j[None, :], 0).reshape(-1)  # (B * L,) flat positions
    if read_index is not None:
        index = read_index[index]  # its row in the cache
    return _Gather(b, max_length, index, valid[:, None, None, :])


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


_DecodePlan = list[tuple[torch.Tensor | None, _Gather]]  # per group: its members (None: every request), its keys


def _decode_plan(starts: list[int], lengths: list[int], flat: int, read_index: torch.Tensor | None) -> _DecodePlan:
    """One padded call per group of decoding requests of similar key lengths (`_decode_groups`)."""
    groups = _decode_groups(lengths)
    if len(groups) == 1:
        return [(None, _gather(starts, lengths, flat, read_index))]
    return [(torch.tensor(g), _gather([starts[i] for i in g], [lengths[i] for i in g], flat, read_index))
            for g in groups]


def _decoders(
    q: torch.Tensor,  # (D, heads, d): one query per decoding request (the last of its keys is its own)
    k_src: torch.Tensor,  # (rows, kv_heads, d): keys, token-major (the flat sequence, or the paged cache)
    v_src: torch.Tensor,
    plan: _DecodePlan,
    scaling: float | None,
) -> torch.Tensor:  # (D, heads, d)
    """The decoding requests in one padded sdpa call per group, as padded `generate` does."""

    def attend(queries: torch.Tensor, gather: _Gather) -> torch.Tensor:  # (group, heads, d)
        k, v = gather.keys(k_src, v_src)  # (group, kv_heads, L, d)
        return torch.nn.functional.scaled_dot_product_attention(
            queries.unsqueeze(2), k, v, attn_mask=gather.mask, scale=scaling, enable_gqa=q.shape[1] != k.shape[1]
        )[:, :, 0]

    if len(plan) == 1 and plan[0][0] is None:
        return attend(q, plan[0][1])
    out = q.new_empty(q.shape)
    for members, gather in plan:
        out[members] = attend(q[members], gather)
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
    read_index = None if paged is None else paged[2]
    k_src, v_src = (_rows(key), _rows(value)) if paged is None else paged[:2]

    flat = _flat_keys(key, read_index)

    def make() -> _DecodePlan:
        ck = cu_seq_lens_k.tolist()  # a host tensor on the CPU: no device sync
        return _decode_plan(ck[:-1], [b - a for a, b in itertools.pairwise(ck)], flat, read_index)

    plan = _planned((cu_seq_lens_k, read_index), flat, make)
    return _decoders(_rows(query), k_src, v_src, plan, scaling).unsqueeze(0)


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


@dataclass(frozen=True)
class _Prefills:
    """The plan of one sdpa call for P prefilling requests: queries and keys gathered into padded
    (P, heads, most queries, d) and (P, kv_heads, most keys, d) batches. Query i of a request with q new tokens over
    k keys sees keys 0 .. k - q + i; padding rows see key 0 at least (never an empty row: no NaN), and are dropped."""

    q_index: torch.Tensor  # (P * Lq,) query row of each query slot (0 on padding)
    valid: torch.Tensor  # (real queries,) the slots that hold one, in (P, Lq) order
    rows: torch.Tensor  # (real queries,) their query rows, in the same order
    keys: _Gather  # (P, Lk) keys; its mask is the (P, 1, Lq, Lk) causal one
    lq: int


def _prefills_plan(
    members: list[tuple[int, int, int]], cq: list[int], ck: list[int], read_index: torch.Tensor | None
) -> _Prefills:
    """The padded call of `members` ((index, queries, keys) each) in a step with these query and key offsets."""
    q_starts, k_starts = torch.tensor([cq[m[0]] for m in members]), torch.tensor([ck[m[0]] for m in members])
    q_lens, k_lens = torch.tensor([m[1] for m in members]), torch.tensor([m[2] for m in members])  # (P,) int64
    lq, lk = int(q_lens.max()), int(k_lens.max())
    iq, ik = torch.arange(lq), torch.arange(lk)
    q_valid = iq[None, :] < q_lens[:, None]  # (P, Lq)
    k_valid = ik[None, :] < k_lens[:, None]  # (P, Lk)
    q_index = torch.where(q_valid, q_starts[:, None] + iq[None, :], 0)  # (P, Lq)
    k_index = torch.where(k_valid, k_starts[:, None] + ik[None, :], 0).reshape(-1)  # (P * Lk,) flat positions
    if read_index is not None:
        k_index = read_index[k_index]  # their rows in the cache
    causal = ik[None, None, :] <= iq[None, :, None] + (k_lens - q_lens)[:, None, None]  # (P, Lq, Lk)
    mask = (causal & k_valid[:, None, :]).unsqueeze(1)  # (P, 1, Lq, Lk)
    q_flat, valid = q_index.reshape(-1), q_valid.reshape(-1).nonzero().squeeze(1)
    return _Prefills(q_flat, valid, q_flat[valid], _Gather(len(members), lk, k_index, mask), lq)


@dataclass(frozen=True)
class _Single:
    """A prefilling request alone in its group: its own unpadded sdpa call."""

    q_lo: int  # its query rows q_lo:q_hi
    q_hi: int
    keys: slice | torch.Tensor  # its keys: a slice of the flat sequence, or (n_k,) cache rows
    mask: torch.Tensor | None  # (n_q, n_k) bool for a chunk after cached keys
    causal: bool  # a fresh prompt (n_q == n_k > 1): sdpa's own causal mask


@dataclass(frozen=True)
class _VarlenPlan:
    total_q: int  # queries of real requests (rows past them are padding)
    decoder_rows: torch.Tensor | None  # (D,) query row of each decoding request that shares padded calls
    decoders: _DecodePlan
    groups: list[_Prefills]
    singles: list[_Single]


def _varlen_plan(cq: list[int], ck: list[int], flat: int, read_index: torch.Tensor | None) -> _VarlenPlan:
    """Who shares which call in a mixed step: the decoders in padded groups, the prefills by size."""
    n = len(cq) - 1
    decoders = [i for i in range(n) if cq[i + 1] - cq[i] == 1]
    rows, plan = None, []
    if len(decoders) > 1:
        rows = torch.tensor([cq[i] for i in decoders])
        plan = _decode_plan([ck[i] for i in decoders], [ck[i + 1] - ck[i] for i in decoders], flat, read_index)
    batched = set(decoders) if len(decoders) > 1 else set()
    rest = [(i, cq[i + 1] - cq[i], ck[i + 1] - ck[i]) for i in range(n) if cq[i + 1] > cq[i] and i not in batched]
    groups, singles = [], []
    for group in _prefill_groups(rest):
        if len(group) > 1:
            groups.append(_prefills_plan(group, cq, ck, read_index))
            continue
        i, n_q, n_k = group[0]
        # sdpa's is_causal aligns the triangle top-left: right only for a fresh prompt (n_q == n_k); a chunk after
        # cached tokens needs it bottom-right, and a single query sees every key.
        mask = torch.arange(n_k)[None, :] <= torch.arange(n_q)[:, None] + (n_k - n_q) if 1 < n_q < n_k else None
        keys = slice(ck[i], ck[i + 1]) if read_index is None else read_index[ck[i] : ck[i + 1]]
        singles.append(_Single(cq[i], cq[i + 1], keys, mask, n_q == n_k > 1))
    return _VarlenPlan(cq[-1], rows, plan, groups, singles)


def _varlen_attention(
    module: torch.nn.Module,
    query: torch.Tensor,  # (1, heads, total_q, head_dim): each request's new tokens, concatenated
    key: torch.Tensor,  # (1, kv_heads, total_k, head_dim): each request's cache and new tokens, concatenated
    value: torch.Tensor,  # (with `paged`: the new tokens only; every key is read from the cache)
    cu_seq_lens_q: torch.Tensor,  # (n + 1,) int32 offsets of each request's queries
    cu_seq_lens_k: torch.Tensor,  # (n + 1,) int32 offsets of each request's keys
    scaling: float | None,
    paged: PagedKV | None = None,
) -> torch.Tensor:  # (1, total_q, heads, head_dim)
    """Any step but decode-only: each request's queries against its own keys, causally. A request's new tokens are
    the last of its keys, so query j of q new tokens over k keys sees keys 0 .. k - q + j. The decoding requests
    of the step (one query each) share padded calls, as in a decode-only step; the prefilling ones share padded
    calls by size (`_prefill_groups`), and a request alone in its group has its own, unpadded. With `paged`, every
    call gathers its keys from the cache rows, never from a flat copy of every request's keys."""
    read_index = None if paged is None else paged[2]
    k_src, v_src = (_rows(key), _rows(value)) if paged is None else paged[:2]

    flat = _flat_keys(key, read_index)

    def make() -> _VarlenPlan:
        # host tensors on the CPU: no device sync
        return _varlen_plan(cu_seq_lens_q.tolist(), cu_seq_lens_k.tolist(), flat, read_index)

    plan = _planned((cu_seq_lens_q, cu_seq_lens_k, read_index), flat, make)
    q_rows = _rows(query)
    heads, kv_heads, dim = q_rows.shape[1], k_src.shape[1], q_rows.shape[2]
    gqa = heads != kv_heads
    # (total_q, heads, d): every real request's rows are written below; rows past them (padding) must read zero
    out = q_rows.new_empty(q_rows.shape) if plan.total_q == q_rows.shape[0] else q_rows.new_zeros(q_rows.shape)
    if plan.decoder_rows is not None:
        out[plan.decoder_rows] = _decoders(q_rows[plan.decoder_rows], k_src, v_src, plan.decoders, scaling)
    for g in plan.groups:
        p = g.keys.b
        q = q_rows.index_select(0, g.q_index).view(p, g.lq, heads, dim).transpose(1, 2)  # (P, heads, Lq, d)
        k, v = g.keys.keys(k_src, v_src)  # (P, kv_heads, Lk, d)
        o = torch.nn.functional.scaled_dot_product_attention(
            q, k, v, attn_mask=g.keys.mask, scale=scaling, enable_gqa=gqa
        )  # (P, heads, Lq, d)
        out.index_copy_(0, g.rows, o.transpose(1, 2).reshape(-1, heads, dim).index_select(0, g.valid))
    for s in plan.singles:
        q = q_rows[s.q_lo : s.q_hi].transpose(0, 1).unsqueeze(0)  # (1, heads, n_q, d)
        if isinstance(s.keys, slice):  # a view of the flat sequence
            k, v = k_src[s.keys], v_src[s.keys]  # (n_k, kv_heads, d)
        else:  # its rows of the cache
            k, v = k_src.index_select(0, s.keys), v_src.index_select(0, s.keys)
        k, v = k.transpose(0, 1).unsqueeze(0), v.transpose(0, 1).unsqueeze(0)  # (1, kv_heads, n_k, d)
        o = torch.nn.functional.scaled_dot_product_attention(
            q, k, v, attn_mask=s.mask, is_causal=s.causal, scale=scaling, enable_gqa=gqa
        )  # (1, heads, n_q, d)
        out[s.q_lo : s.q_hi] = o[0].transpose(0, 1)
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
        return _varlen_attention(module, query, key, value, cu_q, cu_k, scaling, paged), None

    _INSTALLED["sdpa"] = original
    ALL_ATTENTION_FUNCTIONS["sdpa"] = sdpa
