"""Per-request sampling that ignores the batch (Engine rule 2), at the cost its rows need.

Each sampled row picks by Gumbel-max with noise keyed on (seed, position, token id): a request's tokens do not
depend on what else is in the batch, and Compare variants with one seed share their noise, so they diverge only
where steering changes the distribution. The work is split by what each row asks for (the host knows it when the
batch is prepared, so choosing the path costs no device sync):
    greedy rows (temperature 0)        argmax of the logits; no noise, no sort
    top-k rows                         top-k candidates (k of the largest asked), noise for those candidates only
    top-p rows without top-k           the best 256, 2048 or 8192 tokens, the first set that holds the nucleus
                                       (a sort of the row only when none does); noise only for the nucleus
    plain sampled rows                 Gumbel-max over the vocabulary (every token is a candidate)
Every path computes the same function of (logits, parameters, key) as one full sort would; the result of a row
never depends on the other rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = ["RowPlan", "is_greedy", "noise_key", "sample_rows", "uniform_noise", "uniform_noise_at"]

_M32 = 0xFFFFFFFF
_NUCLEUS_CANDIDATES = (256, 2048, 8192)  # candidate counts top-p rows try before sorting the vocabulary


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """lowbias32 integer hash on int64 tensors holding 32-bit values (low 32 bits kept after each product)."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _M32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _M32
    return x ^ (x >> 16)


def _mix32_int(x: int) -> int:
    x &= _M32
    x ^= x >> 16
    x = (x * 0x7FEB352D) & _M32
    x ^= x >> 15
    x = (x * 0x846CA68B) & _M32
    return x ^ (x >> 16)


def noise_key(seed: int, position: int) -> int:
    """32-bit key of the noise for the token generated at absolute `position` of a request with `seed`."""
    k = _mix32_int(seed & _M32)
    k = _mix32_int(k ^ ((seed >> 32) & _M32))
    return _mix32_int(k ^ (position & _M32))


def uniform_noise_at(keys: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """(rows,) int64 keys, (rows or 1, n) int64 token ids -> (rows, n) fp32 uniforms in (0, 1): the noise of those
    tokens, identical on every device and equal to `uniform_noise(keys, vocab)` at those ids."""
    h = _mix32(keys[:, None] ^ ((ids * 0x9E3779B1) & _M32))  # (rows, n)
    h = _mix32(h ^ 0x5BD1E995)
    # The largest 128 hashes round to 1.0 in fp32, whose Gumbel noise -log(-log(1)) is +inf (that token would win
    # whatever its probability): keep the uniforms below 1.
    return (h.double() + 0.5).div_(4294967296.0).float().clamp_(max=1.0 - 2.0**-24)


def uniform_noise(keys: torch.Tensor, vocab: int) -> torch.Tensor:
    """(rows,) int64 keys -> (rows, vocab) fp32 uniforms in (0, 1), identical on every device."""
    return uniform_noise_at(keys, torch.arange(vocab, device=keys.device, dtype=torch.int64)[None, :])


def _gumbel_at(keys: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    return -torch.log(-torch.log(uniform_noise_at(keys, ids)))


def is_greedy(temperature: float) -> bool:
    """A row at temperature 0 (or below) takes the argmax and draws no noise."""
    return temperature <= 0


@dataclass(frozen=True)
class RowPlan:
    """Which rows take which path, from host-side parameters (known when the batch is prepared).

    order: every row once, grouped as greedy | top-k | top-p only | plain; the bounds below index into it.
    """

    order: tuple[int, ...]
    greedy_end: int
    top_k_end: int
    top_p_end: int
    max_k: int  # the largest top-k asked by a top-k row (0 when none)

    @property
    def all_greedy(self) -> bool:
        return self.greedy_end == len(self.order)

    @classmethod
    def from_params(
        cls, temperature: Sequence[float], top_k: Sequence[int], top_p: Sequence[float]
    ) -> RowPlan:
        greedy, by_k, by_p, plain = [], [], [], []
        for i, (t, k, p) in enumerate(zip(temperature, top_k, top_p, strict=True)):
            if is_greedy(t):
                greedy.append(i)
            elif k > 0:
                by_k.append(i)
            elif p < 1.0:
                by_p.append(i)
            else:
                plain.append(i)
        order = (*greedy, *by_k, *by_p, *plain)
        a, b = len(greedy), len(greedy) + len(by_k)
        return cls(order, a, b, b + len(by_p), max((top_k[i] for i in by_k), default=0))


def sample_rows(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    top_k: torch.Tensor,
    top_p: torch.Tensor,
    keys: torch.Tensor,
    plan: RowPlan | None = None,
    order: torch.Tensor | None = None,
) -> torch.Tensor:
    """logits (rows, vocab) fp32; temperature, top_p (rows,) fp32; top_k, keys (rows,) int64 -> (rows,) int64 ids.

    Order as in Hugging Face generate: temperature, then top-k, then top-p (nucleus on the distribution left by
    top-k, keeping at least one token). `plan` says which rows take which path (derived from the parameters when
    absent, which reads them to the host); `order` is `plan.order` already on the logits' device.
    """
    if plan is None:
        plan = RowPlan.from_params(temperature.tolist(), top_k.tolist(), top_p.tolist())
    if plan.all_greedy:
        return logits.argmax(dim=-1)
    rows = logits.shape[0]
    if order is None:
        order = torch.tensor(plan.order, dtype=torch.int64, device=logits.device)
    out = torch.empty(rows, dtype=torch.int64, device=logits.device)
    groups = (
        (0, plan.greedy_end, _greedy),
        (plan.greedy_end, plan.top_k_end, _top_k_rows),
        (plan.top_k_end, plan.top_p_end, _top_p_rows),
        (plan.top_p_end, rows, _plain_rows),
    )
    for lo, hi, fn in groups:
        if hi > lo:
            idx = order[lo:hi]
            out.index_copy_(
                0, idx, fn(logits.index_select(0, idx), temperature[idx], top_k[idx], top_p[idx], keys[idx], plan)
            )
    return out


def _greedy(logits: torch.Tensor, *_: object) -> torch.Tensor:
    return logits.argmax(dim=-1)


def _plain_rows(
    logits: torch.Tensor, temperature: torch.Tensor, _k: torch.Tensor, _p: torch.Tensor, keys: torch.Tensor, _: RowPlan
) -> torch.Tensor:
    """Every token is a candidate: argmax of logits / T + Gumbel noise of each token id."""
    ids = torch.arange(logits.shape[1], device=logits.device, dtype=torch.int64)[None, :]
    z = logits / temperature.clamp_min(1e-6)[:, None]
    return (z + _gumbel_at(keys, ids)).argmax(dim=-1)


def _pick(
    cand_z: torch.Tensor, cand_ids: torch.Tensor, keep: torch.Tensor, keys: torch.Tensor
) -> torch.Tensor:
    """Gumbel-max over the kept candidates: cand_* (rows, n) in descending order of z -> (rows,) token ids."""
    score = torch.where(keep, cand_z + _gumbel_at(keys, cand_ids), torch.full_like(cand_z, float("-inf")))
    return cand_ids.gather(1, score.argmax(dim=-1, keepdim=True))[:, 0]


def _nucleus(probs: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """probs (rows, n) of candidates in descending order -> keep mask: the smallest prefix reaching top_p."""
    mass_before = probs.cumsum(dim=-1) - probs  # probability of the better-ranked tokens
    first = torch.zeros_like(mass_before, dtype=torch.bool)
    first[:, 0] = True
    # top_p 1 keeps everything (fp32 cumulative mass can reach 1.0 before the tail ends).
    return (mass_before < top_p[:, None]) | first | (top_p[:, None] >= 1.0)


def _top_k_rows(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    top_k: torch.Tensor,
    top_p: torch.Tensor,
    keys: torch.Tensor,
    plan: RowPlan,
) -> torch.Tensor:
    """Candidates are the k best (k of the largest asked, masked per row); top-p on their renormalised mass."""
    k = min(plan.max_k, logits.shape[1])
    z = logits / temperature.clamp_min(1e-6)[:, None]
    cand_z, cand_ids = z.topk(k, dim=-1)  # (rows, k), descending
    in_top_k = torch.arange(k, device=logits.device)[None, :] < top_k[:, None]
    # top-p on the distribution renormalised after top-k, as Hugging Face and vLLM do.
    probs = cand_z.masked_fill(~in_top_k, float("-inf")).softmax(dim=-1)
    return _pick(cand_z, cand_ids, in_top_k & _nucleus(probs, top_p), keys)


def _top_p_rows(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    _k: torch.Tensor,
    top_p: torch.Tensor,
    keys: torch.Tensor,
    _: RowPlan,
) -> torch.Tensor:
    """Nucleus over the whole vocabulary without sorting it: the best n tokens (n growing through
    `_NUCLEUS_CANDIDATES`) hold the nucleus once their mass reaches top_p, since every later token is then cut.
    Rows whose nucleus is not yet held try a larger n; the vocabulary is the last n. One host check per size
    (eager only: the sampler never runs inside a captured graph)."""
    vocab = logits.shape[1]
    z = logits / temperature.clamp_min(1e-6)[:, None]
    log_total = z.logsumexp(dim=-1, keepdim=True)  # (rows, 1): probabilities without normalising the candidates
    out = torch.empty(z.shape[0], dtype=torch.int64, device=z.device)
    todo = torch.arange(z.shape[0], device=z.device)
    for n in (*(c for c in _NUCLEUS_CANDIDATES if c < vocab), vocab):
        zr, pr = z.index_select(0, todo), top_p.index_select(0, todo)
        cand_z, cand_ids = zr.topk(n, dim=-1) if n < vocab else zr.sort(dim=-1, descending=True)
        probs = (cand_z - log_total.index_select(0, todo)).exp()  # true probabilities, descending
        held = probs.sum(dim=-1) >= pr if n < vocab else torch.ones_like(pr, dtype=torch.bool)
        done = held.nonzero()[:, 0]
        if done.numel():
            keep = _nucleus(probs[done], pr[done])  # a prefix of each row: noise only up to the longest one
            m = int(keep.sum(dim=-1).max())
            out[todo[done]] = _pick(cand_z[done, :m], cand_ids[done, :m], keep[:, :m], keys[todo[done]])
        if done.numel() == todo.numel():
            break
        todo = todo[~held]
    return out
