"""The sampler before issue 9, kept as the oracle (tests/engine/test_sampling.py) and the baseline of
benchmarks/sampler.py: a full-vocabulary sort and Gumbel noise for every row, greedy rows too."""

from __future__ import annotations

import torch

from steering_server.sampling import uniform_noise

__all__ = ["reference_sample_rows"]


def reference_sample_rows(
    logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor, keys: torch.Tensor
) -> torch.Tensor:
    """The original sampler, kept as the oracle: a full-vocabulary sort and noise for every row."""
    vocab = logits.shape[1]
    greedy = logits.argmax(dim=-1)
    z = logits / temperature.clamp_min(1e-6)[:, None]
    sorted_z, order = z.sort(dim=-1, descending=True)
    rank = torch.arange(vocab)[None, :]
    k = torch.where(top_k > 0, top_k, torch.full_like(top_k, vocab))
    in_top_k = rank < k[:, None]
    probs = sorted_z.masked_fill(~in_top_k, float("-inf")).softmax(dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs
    keep = in_top_k & ((mass_before < top_p[:, None]) | (rank == 0) | (top_p[:, None] >= 1.0))
    gumbel = -torch.log(-torch.log(uniform_noise(keys, vocab)))
    score = torch.where(keep, sorted_z + gumbel.gather(1, order), torch.full_like(sorted_z, float("-inf")))
    sampled = order.gather(1, score.argmax(dim=-1, keepdim=True))[:, 0]
    return torch.where(temperature > 0, sampled, greedy)
