"""Per-request sampling that ignores the batch (Engine rule 2).

Each row samples by Gumbel-max with noise keyed on (seed, position, token id): a request's tokens do not depend
on what else is in the batch, and Compare variants with one seed share their noise, so they diverge only where
steering changes the distribution. Greedy rows (temperature 0) take the argmax. Branch-free over rows, so the
same code runs inside a captured CUDA graph.
"""

from __future__ import annotations

import torch

__all__ = ["noise_key", "sample_rows", "uniform_noise"]

_M32 = 0xFFFFFFFF


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


def uniform_noise(keys: torch.Tensor, vocab: int) -> torch.Tensor:
    """(rows,) int64 keys -> (rows, vocab) fp32 uniforms in (0, 1), identical on every device."""
    ids = torch.arange(vocab, device=keys.device, dtype=torch.int64)
    h = _mix32(keys[:, None] ^ ((ids[None, :] * 0x9E3779B1) & _M32))  # (rows, vocab)
    h = _mix32(h ^ 0x5BD1E995)
    # The largest 128 hashes round to 1.0 in fp32, whose Gumbel noise -log(-log(1)) is +inf (that token would win
    # whatever its probability): keep the uniforms below 1.
    return (h.double() + 0.5).div_(4294967296.0).float().clamp_(max=1.0 - 2.0**-24)


def sample_rows(
    logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor, keys: torch.Tensor
) -> torch.Tensor:
    """logits (rows, vocab) fp32; temperature, top_p (rows,) fp32; top_k, keys (rows,) int64 -> (rows,) int64 ids.

    Order as in Hugging Face generate: temperature, then top-k, then top-p (nucleus, keeping at least one token).
    """
    vocab = logits.shape[1]
    greedy = logits.argmax(dim=-1)
    z = logits / temperature.clamp_min(1e-6)[:, None]
    sorted_z, order = z.sort(dim=-1, descending=True)  # (rows, vocab)
    rank = torch.arange(vocab, device=logits.device)[None, :]
    k = torch.where(top_k > 0, top_k, torch.full_like(top_k, vocab))
    in_top_k = rank < k[:, None]
    # top-p on the distribution renormalised after top-k, as Hugging Face and vLLM do.
    probs = sorted_z.masked_fill(~in_top_k, float("-inf")).softmax(dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs  # probability of the better-ranked tokens
    # top_p 1 keeps everything (fp32 cumulative mass can reach 1.0 before the tail ends).
    keep = in_top_k & ((mass_before < top_p[:, None]) | (rank == 0) | (top_p[:, None] >= 1.0))
    gumbel = -torch.log(-torch.log(uniform_noise(keys, vocab)))  # keyed by token id, then put in rank order
    score = torch.where(keep, sorted_z + gumbel.gather(1, order), torch.full_like(sorted_z, float("-inf")))
    sampled = order.gather(1, score.argmax(dim=-1, keepdim=True))[:, 0]
    return torch.where(temperature > 0, sampled, greedy)
